"""`audit --image` judges a vLLM inside an image like one on disk: its Python files come out of a
created, never started container (`docker cp`), so only extensions imported unconditionally at start-up
fail the audit. The image is made with `docker import` (no base, no python3)."""

from __future__ import annotations

import io
import subprocess
import tarfile
import uuid

import pytest
from conftest import docker_available, require_tool

from tests.unit.fake_vllm import device_so  # the stand-in vLLM of the unit tests
from tests.unit.test_vllm_extensions import EXTENSIONS, PYTHON
from vllm_forge.audit import audit

pytestmark = [pytest.mark.integration, pytest.mark.docker]
ROOT = "usr/lib/python3/dist-packages"


@pytest.fixture(scope="module")
def image():
    require_tool("docker engine", docker_available())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        files = {name: text.encode() for name, text in PYTHON.items()}
        files.update({name: device_so(archs) for name, archs in EXTENSIONS.items() if "orphan" not in name})
        for name, data in files.items():
            info = tarfile.TarInfo(f"{ROOT}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    tag = f"vllm-forge-extensions-test:{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "import", "-", tag], input=buf.getvalue(), check=True, capture_output=True)
    yield tag
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_FORGE_CACHE", str(tmp_path / "cache"))


def test_image_audit_judges_only_required_extensions(image):
    report = audit.audit_image(image, ["9.0"], torch=False)
    files = {f.path: f for f in report.files}
    qutlass = files[f"/{ROOT}/vllm/_qutlass_C.abi3.so"]
    assert audit.verdict_text(qutlass, "sm_90") == audit.NOT_USABLE
    assert "contextlib.suppress(ImportError)" in qutlass.optional
    assert files[f"/{ROOT}/vllm/_C.abi3.so"].required
    assert report.ok, audit.format_text(report)
    assert not audit.audit_image(image, ["9.0"], torch=False, require=["*_qutlass_C*"]).ok
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"ancestor={image}"], capture_output=True, text=True)
    assert not left.stdout.strip()  # the created container is removed
