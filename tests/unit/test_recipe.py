"""vllm_forge/image/recipe.py: the bake's CUDA, bases and torch follow what the checkout pins."""

from __future__ import annotations

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.image import recipe

cu = CudaRelease.parse

V026 = dict(torch_pin="2.11.0", pin_source="requirements/build/cuda.txt", tree_cuda=cu("13.0.2"), version="0.26.0")


def test_a_tree_that_pins_a_pypi_torch_builds_on_the_cuda_devel_image_with_that_torch():
    r = recipe.choose_recipe(**V026)
    assert (str(r.cuda), str(r.cuda_full), r.base_kind) == ("13.0", "13.0.2", "cuda")
    assert r.base_image == "nvcr.io/nvidia/cuda:13.0.2-devel-ubuntu24.04"
    assert r.runtime_image == "nvcr.io/nvidia/cuda:13.0.2-base-ubuntu24.04"
    assert (r.torch_requirement, r.torch_index_suffix) == ("torch==2.11.0", "cu130")
    assert r.cuda_source == "vLLM 0.26.0's docker/Dockerfile ARG CUDA_VERSION=13.0.2"


def test_an_explicit_cuda_the_pinned_torch_is_published_for_is_taken():
    r = recipe.choose_recipe(**V026, cuda=cu("12.8"))
    assert (str(r.cuda), r.cuda_source, r.base_kind, r.torch_index_suffix) == ("12.8", "--cuda", "cuda", "cu128")
    assert r.base_image == "nvcr.io/nvidia/cuda:12.8.1-devel-ubuntu24.04"


def test_a_cuda_without_a_build_of_the_pinned_torch_is_refused_naming_both():
    with pytest.raises(ForgeError) as err:
        recipe.choose_recipe(**V026, cuda=cu("12.4"))
    text = str(err.value)
    assert "pins torch 2.11.0 (requirements/build/cuda.txt)" in text and "12.6, 12.8, 13.0, not 12.4" in text
    assert "NGC 24.04-py3 carries torch 2.3.0a0" in text and "--cuda 13.0" in text


def test_ngc_is_refused_where_its_torch_is_not_the_pinned_release():
    with pytest.raises(ForgeError, match=r"NGC 25.10-py3 carries torch 2.9.0a0 \(CUDA 13.0.2\), but vLLM 0.26.0 pins "
                                         r"torch 2.11.0 .*--base-image nvcr.io/nvidia/pytorch:25.10-py3"):
        recipe.choose_recipe(**V026, base="ngc")


def test_ngc_is_taken_where_its_torch_is_the_pinned_release():
    r = recipe.choose_recipe(torch_pin="2.7.0", pin_source="requirements/build.txt", cuda=cu("12.8"), base="ngc")
    assert (r.base_kind, r.base_image, r.base_torch, r.torch_requirement) == (
        "ngc", "nvcr.io/nvidia/pytorch:25.02-py3", "2.7.0a0", "")


def test_a_tree_without_a_torch_pin_builds_on_ngc_for_the_default_cuda():
    r = recipe.choose_recipe(torch_pin=None)
    assert (str(r.cuda), r.base_kind, r.base_image) == ("12.8", "ngc", "nvcr.io/nvidia/pytorch:25.02-py3")
    assert r.cuda_source.startswith("default")


def test_auto_takes_ngc_for_a_tree_without_a_cuda_pin_and_refuses_for_one_with_it():
    # the field report's vLLM: torch 2.6.0 pinned, no CUDA pinned, no cu128 build of 2.6: NGC 25.02's 2.7.0a0,
    # through use-existing-torch, with a note saying so
    r = recipe.choose_recipe(torch_pin="2.6.0", pin_source="requirements/build.txt", cuda=cu("12.8"))
    assert (r.base_kind, r.base_image, r.torch_requirement) == ("ngc", "nvcr.io/nvidia/pytorch:25.02-py3", "")
    assert any("NGC's torch 2.7.0a0 replaces it" in n for n in r.notes)
    # ... which --base cuda refuses, and a tree that pins its CUDA too (torch and CUDA a pair) refuses
    with pytest.raises(ForgeError, match="publishes for CUDA 11.8, 12.4, 12.6, not 12.8"):
        recipe.choose_recipe(torch_pin="2.6.0", cuda=cu("12.8"), base="cuda")
    with pytest.raises(ForgeError, match="--base-image IMAGE to build against that image's torch on purpose"):
        recipe.choose_recipe(torch_pin="2.6.0", tree_cuda=cu("12.4.1"), cuda=cu("12.8"))
    r = recipe.choose_recipe(torch_pin="2.6.0", cuda=cu("12.8"), base_image="nvcr.io/nvidia/pytorch:25.02-py3")
    assert r.base_kind == "image" and any("chosen on purpose with --base-image" in n for n in r.notes)


def test_standin_and_unknown_torch_releases():
    r = recipe.choose_recipe(**V026, cuda=cu("13.0"), standin=True, base_image="sb", runtime_image="sr")
    assert (r.base_kind, r.base_image, r.runtime_image, r.torch_requirement) == ("standin", "sb", "sr", "")
    r = recipe.choose_recipe(torch_pin="3.1.0", tree_cuda=cu("13.0.2"))  # a torch this table does not know: trusted
    assert (r.base_kind, r.torch_requirement) == ("cuda", "torch==3.1.0")
    with pytest.raises(ForgeError, match="--base 'docker' is not one of auto, cuda, ngc"):
        recipe.choose_recipe(torch_pin=None, base="docker")
