"""`audit --image`: a tiny image made with `docker import` (no base image, no python3) is read through
`docker save` (layers) and `docker export` (a created, never started container); its missing torch is
reported, not a crash."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.conftest import docker_available, require_tool
from vllm_forge.audit import audit
from vllm_forge.core.errors import ForgeError, run_main

pytestmark = [pytest.mark.integration, pytest.mark.docker]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "h200x2"


@pytest.fixture(scope="module")
def image():
    require_tool("docker engine", docker_available())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, source in (("opt/venv/lib/vllm/_C.abi3.so", "k_sm_120"),
                             ("opt/venv/lib/vllm/_flash_attn_C.abi3.so", "k_sm_90a"),
                             ("usr/lib/libjit.so.1", "k_ptx80")):
            tf.add(str(FIXTURES / source), arcname=name)
        info = tarfile.TarInfo("usr/lib/libc.so")  # a linker script: skipped
        text = b"GROUP ( libc.so.6 )\n"
        info.size = len(text)
        tf.addfile(info, io.BytesIO(text))
    tag = f"vllm-forge-audit-test:{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "import", "-", tag], input=buf.getvalue(), check=True, capture_output=True)
    yield tag
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


@pytest.mark.parametrize("via", ["save", "export"])
def test_image_files_and_verdicts(image, via):
    report = audit.audit_image(image, ["sm_120"], via=via)
    by_path = {f.path: f for f in report.files}
    assert set(by_path) == {"/opt/venv/lib/vllm/_C.abi3.so", "/opt/venv/lib/vllm/_flash_attn_C.abi3.so",
                            "/usr/lib/libjit.so.1"}
    assert by_path["/opt/venv/lib/vllm/_C.abi3.so"].verdict == {"sm_120": "native"}
    assert by_path["/usr/lib/libjit.so.1"].verdict == {"sm_120": "ptx-jit"}
    assert by_path["/opt/venv/lib/vllm/_flash_attn_C.abi3.so"].verdict == {"sm_120": "none"}
    assert not report.ok
    assert report.torch is not None and "no python3" in report.torch.error and report.torch.ok


def test_image_require_and_cli_json(image, capsys):
    code = run_main(audit.main, ["--image", image, "--arch", "rtx5090", "--require", "*/_C.abi3.so", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["ok"] is True and data["target"] == ["sm_120"]
    assert data["torch"]["version"] is None and "no python3" in data["torch"]["error"]


def test_export_leaves_no_container(image):
    before = subprocess.run(["docker", "ps", "-aq"], capture_output=True, text=True).stdout.split()
    audit.audit_image(image, ["sm_90"], via="export", torch=False)
    after = subprocess.run(["docker", "ps", "-aq"], capture_output=True, text=True).stdout.split()
    assert set(after) <= set(before)


def test_missing_image_is_one_line_error():
    require_tool("docker engine", docker_available())
    with pytest.raises(ForgeError, match="not present locally"):
        audit.audit_image(f"vllm-forge-no-such-image:{uuid.uuid4().hex[:8]}", ["sm_120"])
