"""Hostile wheels (issue 21, point 5): the audit bounds what it reads. A 10 MB wheel whose `.so` member
claims `e_shentsize` 0xFFFF and inflates to 10 GiB once drove the audit to 5.5 GB and MemoryError.

Each audit runs in a child process under an address-space limit, so a regression fails the test
(MemoryError, a traceback) instead of exhausting the shared machine; its peak memory is read
with wait4 by a small wrapper process (that child only, and none of pytest's own memory)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import pytest

from vllm_forge.audit import audit
from vllm_forge.core.errors import ForgeError

REPO = Path(__file__).resolve().parents[2]
GiB = 1 << 30
SEGMENT = 1 << 20


def elf_head(shoff: int, shentsize: int, shnum: int = 10) -> bytes:
    head = bytearray(64)
    struct.pack_into("<4sBBBB", head, 0, b"\x7fELF", 2, 1, 1, 0)
    struct.pack_into("<HHIQQQIHHHHHH", head, 16, 3, 62, 1, 0, 0, shoff, 0, 64, 56, 0, shentsize, shnum, 1)
    return bytes(head)


def deflate_bomb(head: bytes, size: int) -> bytes:
    """A raw deflate stream of ``head`` then zeros, ``size`` bytes inflated, built without compressing
    them all: full-flushed segments do not refer back, so one compressed zero segment repeats."""
    first = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [first.compress(head + bytes(SEGMENT - len(head))) + first.flush(zlib.Z_FULL_FLUSH)]
    zero = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = zero.compress(bytes(SEGMENT)) + zero.flush(zlib.Z_FULL_FLUSH)
    assert size % SEGMENT == 0
    out += [segment] * (size // SEGMENT - 1)
    out.append(zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH))
    return b"".join(out)


def zip64_wheel(path: Path, name: str, data: bytes, size: int) -> Path:
    """A one-member zip (ZIP64 sizes) whose member is the deflate stream ``data`` of ``size`` bytes."""
    raw = name.encode()
    extra = struct.pack("<HHQQ", 1, 16, size, len(data))
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45, 0, 8, 0, 0x21, 0, 0xFFFFFFFF, 0xFFFFFFFF,
                        len(raw), len(extra)) + raw + extra
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45, 0, 8, 0, 0x21, 0, 0xFFFFFFFF,
                          0xFFFFFFFF, len(raw), len(extra), 0, 0, 0, 0o644 << 16, 0) + raw + extra
    cd_offset = len(local) + len(data)
    eocd64_offset = cd_offset + len(central)
    eocd64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, 1, 1, len(central), cd_offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd64_offset, 1)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), cd_offset, 0)
    with open(path, "wb") as fp:
        fp.write(local)
        fp.write(data)
        fp.write(central + eocd64 + locator + eocd)
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """The reported exploit: ~10 MB on disk, a .so that inflates to 10 GiB and claims e_shentsize 0xFFFF."""
    size = 10 * GiB
    head = elf_head(shoff=SEGMENT, shentsize=0xFFFF)  # the "table" runs from 1 MiB to the end
    path = tmp_path_factory.mktemp("bomb") / "bomb-1.0-py3-none-any.whl"
    return zip64_wheel(path, "bomb/_C.abi3.so", deflate_bomb(head, size), size)


# Run by a fresh interpreter between pytest and the measured command. Linux carries a process's RSS high-water
# mark across fork and exec (the child starts as a copy of its parent), so a command started by pytest itself
# would report pytest's own peak (hundreds of MiB late in a full run) whatever it did. Started by this small
# wrapper instead, the command's figure is its own: it caps the command's address space, waits for it with
# wait4 (that child only) and writes its peak RSS in bytes to the file named first.
MEASURE = """
import os, resource, subprocess, sys
report, limit, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
proc = subprocess.Popen(argv, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
_pid, status, usage = os.wait4(proc.pid, 0)
with open(report, "w") as out:
    out.write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_limited(args: list[str], limit: int = 2 * GiB, timeout: float = 120,
                command: list[str] | None = None) -> tuple[int, str, float, int]:
    """(exit code, stderr + stdout, seconds, peak RSS in bytes) of `python -m vllm_forge.audit.audit ARGS` (or
    ``command`` + ARGS) run under an address-space limit; killed after ``timeout`` seconds. The peak is the
    command's own (see MEASURE), whatever size this pytest process has grown to."""
    import signal

    with tempfile.TemporaryDirectory() as scratch, tempfile.TemporaryFile() as out:
        report = Path(scratch) / "peak"
        start = time.monotonic()
        command = command or [sys.executable, "-m", "vllm_forge.audit.audit"]
        proc = subprocess.Popen([sys.executable, "-c", MEASURE, str(report), str(limit), *command, *args],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
        seconds = time.monotonic() - start
        out.seek(0)
        output = out.read().decode(errors="replace")
        peak = int(report.read_text()) if report.exists() else -1
    return proc.returncode, output, seconds, peak


def test_the_peak_is_the_commands_own_not_the_test_process(tmp_path):
    """The bound holds when pytest itself is large: a 400 MiB parent does not show in the child's figure."""
    ballast = bytearray(400 << 20)
    ballast[:: 4096] = b"\1" * len(ballast[:: 4096])  # touched: resident
    code, output, _seconds, peak = run_limited(["-c", "print('small')"], command=[sys.executable])
    assert code == 0 and output.strip() == "small", output
    assert peak < 100 << 20, f"peak RSS {peak >> 20} MiB: the parent's memory was counted"
    del ballast


def test_the_bomb_is_small_on_disk_and_huge_inflated(bomb):
    import zipfile

    assert bomb.stat().st_size < 16 << 20
    (info,) = zipfile.ZipFile(bomb).infolist()
    assert info.file_size == 10 * GiB


def test_bomb_is_refused_in_one_line_before_inflating(bomb):
    code, output, seconds, _peak = run_limited([str(bomb), "--arch", "12.0", "--no-torch"])
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and "more than the audit's cap of 8.0 GiB" in lines[0]
    assert "Fix: if you trust it, pass --max-inflate 10G" in lines[0]
    assert seconds < 30


def test_invoke_audit_refuses_the_bomb_and_takes_the_flag(bomb):
    invoke = [sys.executable, "-m", "invoke", "audit"]
    code, output, _seconds, _peak = run_limited([str(bomb), "--arch", "12.0", "--no-torch"], command=invoke)
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert "more than the audit's cap of 8.0 GiB" in output
    code, output, _seconds, peak = run_limited([str(bomb), "--arch", "12.0", "--no-torch", "--max-inflate", "16G",
                                                "--json"], command=invoke)
    assert code == 1 and '"error": "bomb/_C.abi3.so has an invalid ELF section header size' in output, output
    assert peak < 200 << 20


def test_bomb_with_the_cap_raised_is_audited_in_bounded_memory(bomb):
    """Past the cap, the hostile header itself is what stops it: the spec's section header size."""
    code, output, seconds, peak = run_limited([str(bomb), "--arch", "12.0", "--no-torch", "--max-inflate", "16G",
                                               "--json"])
    assert code == 1, output  # audited: the file is unreadable, so the audit fails, no traceback
    assert "Traceback" not in output and "MemoryError" not in output
    assert "invalid ELF section header size (65535; the ELF spec fixes it at 64)" in output
    assert peak < 200 << 20, f"peak RSS {peak >> 20} MiB"
    assert seconds < 30


def test_valid_headers_over_a_gigabyte_of_zeros_stay_bounded(tmp_path):
    """A well-formed header over 1 GiB of zeros: read to the end (the section headers are there), yet
    only the window before the section headers is ever kept."""
    size = GiB
    head = elf_head(shoff=size - 64 * 64, shentsize=64, shnum=0)  # shnum 0: "see section 0" (up to the cap)
    wheel = zip64_wheel(tmp_path / "big-1.0-py3-none-any.whl", "big/_x.so", deflate_bomb(head, size), size)
    code, output, seconds, peak = run_limited([str(wheel), "--arch", "12.0", "--no-torch", "--json"])
    assert code == 0, output
    assert '"no-device-code"' in output
    assert peak < 200 << 20, f"peak RSS {peak >> 20} MiB"


def test_budget_counts_every_wheel_of_a_directory(tmp_path):
    import zipfile

    from tests.unit.test_audit import H200

    for i in range(3):
        with zipfile.ZipFile(tmp_path / f"w{i}-1.0-py3-none-any.whl", "w") as zf:
            zf.write(H200 / "k_sm_120", f"p{i}/_C.so")
    one = (H200 / "k_sm_120").stat().st_size
    assert audit.audit_path(tmp_path, ["12.0"], max_inflate=3 * one).ok
    with pytest.raises(ForgeError, match="more than the audit's cap"):
        audit.audit_path(tmp_path, ["12.0"], max_inflate=3 * one - 1)


@pytest.mark.parametrize("text, size", [("8G", 8 * GiB), ("500M", 500 << 20), ("12GiB", 12 * GiB), ("1024", 1024),
                                        ("1.5g", 3 * GiB // 2)])
def test_parse_size(text, size):
    assert audit.parse_size(text) == size


def test_parse_size_refuses_words():
    with pytest.raises(ForgeError, match="is not a size"):
        audit.parse_size("lots")


def test_elf32_section_header_size_is_checked_too():
    from vllm_forge.audit.fatbin import BinaryFormatError, list_device_code

    head = bytearray(52 + 40)
    struct.pack_into("<4sBBBB", head, 0, b"\x7fELF", 1, 1, 1, 0)
    struct.pack_into("<I", head, 32, 52)  # e_shoff
    struct.pack_into("<HHH", head, 46, 0xFFFF, 1, 0)
    with pytest.raises(BinaryFormatError, match="the ELF spec fixes it at 40"):
        list_device_code(bytes(head))
