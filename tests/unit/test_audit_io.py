"""vllm_forge/audit/audit.py, the reading half (issue 22): inflaters, sizes and the inflate budget, what is a
candidate, directories, wheels (the fast central-directory reader, ZIP64, member streaming), image tars
(layers, whiteouts, manifests), Docker (a fake `docker` script), and torch's probe. Each test pins an
exact result, so a changed comparison, constant or branch in those functions fails one of them."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tarfile
import types
import zipfile
import zlib
from pathlib import Path

import pytest
from test_fatbin import elf, entry, fatbin  # the fat binary builders every audit test uses

from vllm_forge.audit import audit
from vllm_forge.audit.audit import InflateBudget, Target, TorchArchs, _Scanned
from vllm_forge.audit.fatbin import STREAM_CHUNK, BinaryFormatError, list_device_code, scan_stream
from vllm_forge.core.errors import ForgeError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GiB = 1 << 30
MiB = 1 << 20


SM90 = elf([(".nv_fatbin", fatbin(entry(2, 90)))])
SM120 = elf([(".nv_fatbin", fatbin(entry(2, 120, payload=b"\xcd" * 400)))])  # bigger than SM90
PTX80 = elf([(".nv_fatbin", fatbin(entry(1, 80, header_size=80)))])
LINKER_SCRIPT = b"GROUP ( libc.so.6 )\n"  # named libc.so, not a binary: never listed


def found(path: str, data: bytes, **fields) -> _Scanned:
    """What a scan of ``data`` shown as ``path`` must return."""
    return _Scanned(path, list_device_code(data), **fields)


def tar_bytes(entries: list[tuple[str, bytes | str | None]]) -> bytes:
    """A tar of (name, bytes) files, (name, None) directories and (name, "->target") symlinks, in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data[2:]
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_zip(path: Path, members: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


# ---- inflaters ---------------------------------------------------------------------------------------


def raw_deflate(data: bytes) -> bytes:
    obj = zlib.compressobj(9, zlib.DEFLATED, -15)
    return obj.compress(data) + obj.flush()


# 20 KB of noise twice: the second copy refers back 20 KB, past a 16 KB (wbits 14) window
FAR_BACK = random.Random(7).randbytes(20_000) * 2


def test_zlib_inflater_is_a_raw_deflate_object_with_the_full_window():
    inflate = audit.raw_inflater("zlib")
    assert type(inflate) is type(zlib.decompressobj(-15))
    assert inflate.decompress(raw_deflate(FAR_BACK)) == FAR_BACK
    assert inflate.eof


def test_inflater_name_comes_from_the_argument_then_the_environment_then_the_default(monkeypatch):
    zlib_type = type(zlib.decompressobj(-15))
    monkeypatch.setattr(audit, "INFLATER", "brotli")
    monkeypatch.setenv("VLLM_FORGE_INFLATER", "zlib")
    assert type(audit.raw_inflater()) is zlib_type  # the environment over the default
    monkeypatch.setenv("VLLM_FORGE_INFLATER", "brotli")
    assert type(audit.raw_inflater("zlib")) is zlib_type  # the argument over the environment
    monkeypatch.delenv("VLLM_FORGE_INFLATER")
    monkeypatch.setattr(audit, "INFLATER", "zlib")
    assert type(audit.raw_inflater()) is zlib_type  # the default
    monkeypatch.setenv("VLLM_FORGE_INFLATER", "")
    assert type(audit.raw_inflater()) is zlib_type  # an empty variable is unset


def test_unknown_inflater_is_refused_naming_the_known_ones(monkeypatch):
    monkeypatch.delenv("VLLM_FORGE_INFLATER", raising=False)
    with pytest.raises(ForgeError) as info:
        audit.raw_inflater("brotli")
    assert str(info.value) == ("VLLM_FORGE_INFLATER=brotli is not an inflater this tool knows. "
                               "Fix: use zlib, isal or zlib-ng, or unset it.")


@pytest.mark.parametrize("name, module, package", [("isal", "isal.isal_zlib", "isal"),
                                                   ("zlib-ng", "zlib_ng.zlib_ng", "zlib-ng")])
def test_an_inflater_that_is_not_installed_names_its_package(monkeypatch, name, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # import_module raises ImportError
    with pytest.raises(ForgeError) as info:
        audit.raw_inflater(name)
    assert str(info.value) == f"the {name} inflater is not installed. Fix: pip install {package}."
    assert info.value.__suppress_context__


class FakeInflateModule:
    """A stand-in for isal.isal_zlib: records how it is called, raises its own error type."""

    class error(Exception):
        pass

    def __init__(self):
        self.wbits: list[int] = []
        self.calls: list[tuple[bytes, int]] = []
        self.obj = types.SimpleNamespace(eof=False, unconsumed_tail=b"", decompress=self._decompress)

    def decompressobj(self, wbits):
        self.wbits.append(wbits)
        return self.obj

    def _decompress(self, data, max_length):
        self.calls.append((data, max_length))
        if data == b"bad":
            raise self.error("invalid block type")
        return b"out:" + data


@pytest.mark.parametrize("name, module", [("isal", "isal.isal_zlib"), ("zlib-ng", "zlib_ng.zlib_ng")])
def test_named_inflater_wraps_its_module_raw(monkeypatch, name, module):
    fake = FakeInflateModule()
    monkeypatch.setitem(sys.modules, module, fake)
    inflate = audit.raw_inflater(name)
    assert isinstance(inflate, audit._Inflater)
    assert fake.wbits == [-15]
    assert inflate.decompress(b"abc", 7) == b"out:abc"
    assert fake.calls == [(b"abc", 7)]


def test_inflater_wrapper_passes_through_and_defaults_max_length_to_zero():
    fake = FakeInflateModule()
    inflate = audit._Inflater(fake)
    assert inflate.decompress(b"x") == b"out:x"
    assert fake.calls == [(b"x", 0)]
    assert inflate.eof is False and inflate.unconsumed_tail == b""
    fake.obj.eof, fake.obj.unconsumed_tail = True, b"rest"
    assert inflate.eof is True and inflate.unconsumed_tail == b"rest"


def test_inflater_wrapper_raises_its_modules_error_as_zlib_error():
    inflate = audit._Inflater(FakeInflateModule())
    with pytest.raises(zlib.error) as info:
        inflate.decompress(b"bad", 10)
    assert type(info.value) is zlib.error
    assert str(info.value) == "invalid block type"
    assert info.value.__suppress_context__ and info.value.__cause__ is None


def test_isal_inflater_inflates_and_raises_zlib_error():
    pytest.importorskip("isal.isal_zlib")
    inflate = audit.raw_inflater("isal")
    assert isinstance(inflate, audit._Inflater)
    assert inflate.decompress(raw_deflate(FAR_BACK)) == FAR_BACK and inflate.eof
    with pytest.raises(zlib.error):
        audit.raw_inflater("isal").decompress(b"\xff" * 64)


# ---- sizes and the inflate budget --------------------------------------------------------------------


@pytest.mark.parametrize("text, size", [
    ("1", 1), ("1b", 1), ("1B", 1), ("1k", 1024), ("1K", 1024), ("2kb", 2048), ("3KiB", 3072), ("1m", MiB),
    ("1M", MiB), ("1g", GiB), ("1t", 1 << 40), ("1T", 1 << 40), ("1.5k", 1536), ("0.5", 0), (" 2 G ", 2 * GiB),
    ("2GiB", 2 * GiB), ("7ib", 7),
])
def test_parse_size_units_are_binary(text, size):
    assert audit.parse_size(text) == size


def test_parse_size_takes_an_int_as_it_is():
    assert audit.parse_size(-3) == -3  # as text, "-3" would be refused
    assert audit.parse_size(4096) == 4096


@pytest.mark.parametrize("text", ["lots", "", "-1", "1.", ".5", "1x", "1kk", "1 k b x", "k"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(ForgeError) as info:
        audit.parse_size(text)
    assert str(info.value) == f"'{text}' is not a size. Fix: write it like 8G, 500M or 12GiB."


@pytest.mark.parametrize("n, text", [
    (0, "0 MiB"), (5 * MiB, "5 MiB"), (GiB - 1, "1024 MiB"), (GiB, "1.0 GiB"), (3 * GiB // 2, "1.5 GiB"),
    (10 * GiB, "10.0 GiB"), (MiB // 2 - 1, "0 MiB"),
])
def test_format_size_switches_to_gib_at_one_gib(n, text):
    assert audit.format_size(n) == text


def test_budget_defaults_to_eight_gib():
    budget = InflateBudget()
    assert (budget.limit, budget.used) == (8 * GiB, 0)
    assert audit.DEFAULT_MAX_INFLATE == 8 * GiB


def test_budget_takes_up_to_its_limit_exactly_and_refuses_one_byte_more():
    budget = InflateBudget(GiB)
    budget.take(GiB // 2, "a.whl")
    budget.take(GiB // 2, "b.whl")
    assert budget.used == GiB
    with pytest.raises(ForgeError) as info:
        budget.take(1, "c.whl")
    assert str(info.value) == ("c.whl would inflate 1.0 GiB of libraries, more than the audit's cap of 1.0 GiB "
                               "(a zip bomb, or a very large archive). Fix: if you trust it, pass --max-inflate 2G.")
    assert budget.used == GiB  # a refused take takes nothing
    budget.take(0, "empty.whl")
    assert budget.used == GiB


@pytest.mark.parametrize("limit, need, wanted", [
    (GiB, 2 * GiB, "2.0 GiB of libraries, more than the audit's cap of 1.0 GiB (a zip bomb, or a very large "
                   "archive). Fix: if you trust it, pass --max-inflate 2G."),
    (GiB, 2 * GiB + 1, "2.0 GiB of libraries, more than the audit's cap of 1.0 GiB (a zip bomb, or a very large "
                       "archive). Fix: if you trust it, pass --max-inflate 3G."),
    (100 * MiB, 150 * MiB, "150 MiB of libraries, more than the audit's cap of 100 MiB (a zip bomb, or a very "
                           "large archive). Fix: if you trust it, pass --max-inflate 1G."),
])
def test_budget_refusal_names_sizes_and_the_cap_to_pass_rounded_up(limit, need, wanted):
    budget = InflateBudget(limit)
    with pytest.raises(ForgeError) as info:
        budget.take(need, "w.whl")
    assert str(info.value) == "w.whl would inflate " + wanted
    assert budget.used == 0


def test_budget_counts_what_was_taken_before():
    budget = InflateBudget(100)
    budget.take(60, "a")
    with pytest.raises(ForgeError) as info:
        budget.take(41, "b")
    assert str(info.value) == ("b would inflate 0 MiB of libraries, more than the audit's cap of 0 MiB (a zip bomb, "
                               "or a very large archive). Fix: if you trust it, pass --max-inflate 1G.")
    budget.take(40, "b")
    assert budget.used == 100


# ---- candidates --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, candidate", [
    ("x.so", True), ("pkg/_C.abi3.so", True), ("usr/lib/libcudart.so.12", True), ("lib/libx.so.1.2.3", True),
    ("pkg/kernels.fatbin", True), ("pkg/x.sox", False), ("pkg/x.py", False), ("pkg/so", False),
    ("usr/lib/.wh.libx.so", False), (".wh.libx.so.1", False), ("pkg/a.wh.x.so", True),
    ("pkg.so.d/readme", False), ("lib.so/", False), ("x/.wh.y/lib.so", True), ("pkg/x.fatbin.txt", False),
])
def test_is_candidate_looks_at_the_base_name(name, candidate):
    assert audit.is_candidate(name) is candidate


# ---- one file, one stream ----------------------------------------------------------------------------


def test_scan_file_lists_device_code_under_the_shown_name(tmp_path):
    path = tmp_path / "k.so"
    path.write_bytes(SM90)
    assert audit._scan_file(path, "pkg/k.so") == found("pkg/k.so", SM90)


def test_scan_file_skips_what_is_not_a_binary(tmp_path):
    path = tmp_path / "libc.so"
    path.write_bytes(LINKER_SCRIPT)
    assert audit._scan_file(path, "libc.so") is None


def test_scan_file_reports_a_damaged_binary_under_the_shown_name(tmp_path):
    path = tmp_path / "k.so"
    path.write_bytes(SM90[:200])
    with pytest.raises(BinaryFormatError) as info:
        list_device_code(path, where="pkg/k.so")
    assert info.value.problem.startswith("pkg/k.so ")
    assert audit._scan_file(path, "pkg/k.so") == _Scanned("pkg/k.so", None, info.value.problem)


def test_scan_file_reports_an_unreadable_file(tmp_path):
    (tmp_path / "d.so").mkdir()
    assert audit._scan_file(tmp_path / "d.so", "pkg/d.so") == _Scanned("pkg/d.so", None, "pkg/d.so is a directory")


def test_scan_chunks_reads_a_stream_of_the_given_size():
    chunks = iter([SM120[:100], SM120[100:]])
    assert audit._scan_chunks(chunks, len(SM120), "pkg/k.so") == found("pkg/k.so", SM120)


def test_scan_chunks_skips_what_is_not_a_binary():
    assert audit._scan_chunks(iter([LINKER_SCRIPT]), len(LINKER_SCRIPT), "libc.so") is None


def test_scan_chunks_reports_a_damaged_binary():
    cut = SM90[:200]
    with pytest.raises(BinaryFormatError) as info:
        scan_stream(iter([cut]), len(cut), "pkg/k.so")
    assert audit._scan_chunks(iter([cut]), len(cut), "pkg/k.so") == _Scanned("pkg/k.so", None, info.value.problem)


@pytest.mark.parametrize("error", [zlib.error("invalid stored block lengths"), OSError("disk gone"),
                                   EOFError("ended early"), tarfile.TarError("bad tar"),
                                   zipfile.BadZipFile("bad local header")])
def test_scan_chunks_reports_a_read_error_as_unreadable(error):
    def chunks():
        yield SM90[:10]
        raise error

    assert audit._scan_chunks(chunks(), len(SM90), "pkg/k.so") == _Scanned(
        "pkg/k.so", None, f"pkg/k.so could not be read: {error}")


# ---- directories -------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path, monkeypatch) -> Path:
    """A directory: libraries in b/ and a/, a linker script, text, a symlink, a socket and a wheel."""
    root = tmp_path / "tree"
    for name in ("b", "a"):
        (root / name).mkdir(parents=True)
    (root / "b" / "libk.so").write_bytes(SM90)
    (root / "a" / "x.so.1").write_bytes(SM120)
    (root / "a" / "libc.so").write_bytes(LINKER_SCRIPT)
    (root / "a" / "notes.txt").write_text("notes\n")
    (root / "a" / "t.so.txt").write_bytes(LINKER_SCRIPT)
    (root / "link.so").symlink_to(root / "b" / "libk.so")
    (root / "dangling.so").symlink_to(root / "nowhere.so")
    write_zip(root / "w.whl", [("pkg/_C.so", PTX80), ("pkg/readme.txt", b"hi")])
    monkeypatch.chdir(root)  # a socket's path must be short
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("s.so")  # listed among the files, but not a regular file
    monkeypatch.chdir(tmp_path)
    return root


def test_scan_directory_lists_files_in_sorted_order_with_their_real_location(tree):
    assert audit.scan_directory(tree) == [
        found("w.whl/pkg/_C.so", PTX80),
        found("a/x.so.1", SM120, location=str((tree / "a" / "x.so.1").resolve())),
        found("b/libk.so", SM90, location=str((tree / "b" / "libk.so").resolve())),
    ]


def test_scan_directory_prefixes_paths_and_resolves_through_a_linked_root(tree, tmp_path):
    link = tmp_path / "via-link"
    link.symlink_to(tree)
    assert audit.scan_directory(link, prefix="img/") == [
        found("img/w.whl/pkg/_C.so", PTX80),
        found("img/a/x.so.1", SM120, location=str(tree.resolve() / "a" / "x.so.1")),
        found("img/b/libk.so", SM90, location=str(tree.resolve() / "b" / "libk.so")),
    ]


def test_scan_directory_charges_its_wheels_to_the_budget(tree):
    budget = InflateBudget(len(PTX80))
    assert len(audit.scan_directory(tree, budget=budget)) == 3
    assert budget.used == len(PTX80)
    with pytest.raises(ForgeError, match=f"^{tree / 'w.whl'} would inflate 0 MiB"):
        audit.scan_directory(tree, budget=InflateBudget(len(PTX80) - 1))


# ---- zip members -------------------------------------------------------------------------------------


def zip_infos(path: Path) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: i for i in zf.infolist()}


def test_stored_member_is_read_in_stream_chunks(tmp_path):
    data = random.Random(1).randbytes(2 * STREAM_CHUNK + 5)
    path = write_zip(tmp_path / "s.zip", [("pkg/a.so", data), ("pkg/b.so", b"after")], zipfile.ZIP_STORED)
    infos = zip_infos(path)
    chunks = list(audit._zip_member_chunks(path, infos["pkg/a.so"]))
    assert [len(c) for c in chunks] == [STREAM_CHUNK, STREAM_CHUNK, 5]
    assert b"".join(chunks) == data
    assert list(audit._zip_member_chunks(path, infos["pkg/b.so"])) == [b"after"]


@pytest.mark.parametrize("inflater", ["zlib", ""])  # "": the default (ISA-L where installed)
def test_deflated_member_is_inflated_in_bounded_chunks(tmp_path, monkeypatch, inflater):
    monkeypatch.setenv("VLLM_FORGE_INFLATER", inflater)
    data = bytes(3 * STREAM_CHUNK - 7)  # compresses to 3 KB: one read, three outputs
    path = write_zip(tmp_path / "d.zip", [("pkg/a.so", data), ("pkg/b.so", b"next member")])
    infos = zip_infos(path)
    chunks = list(audit._zip_member_chunks(path, infos["pkg/a.so"]))
    assert [len(c) for c in chunks] == [STREAM_CHUNK, STREAM_CHUNK, STREAM_CHUNK - 7]
    assert b"".join(chunks) == data
    assert list(audit._zip_member_chunks(path, infos["pkg/b.so"])) == [b"next member"]


@pytest.mark.parametrize("inflater", ["zlib", "isal"])  # the two requirements.txt gives (zlib-ng is optional)
@pytest.mark.parametrize("size", [STREAM_CHUNK + 1, 3 * STREAM_CHUNK])
def test_output_pending_after_the_last_input_is_not_lost(tmp_path, monkeypatch, inflater, size):
    """ISA-L takes in all the input at once: a member ending in a full chunk of output had its tail cut."""
    monkeypatch.setenv("VLLM_FORGE_INFLATER", inflater)
    data = bytes(size) + b"tail"
    path = write_zip(tmp_path / "d.zip", [("pkg/a.so", data)])
    chunks = list(audit._zip_member_chunks(path, zip_infos(path)["pkg/a.so"]))
    assert b"".join(chunks) == data and all(len(c) <= STREAM_CHUNK for c in chunks)


def test_deflated_member_larger_than_a_chunk_compressed(tmp_path):
    data = random.Random(2).randbytes(STREAM_CHUNK + 3000)  # incompressible: read in two blocks
    path = write_zip(tmp_path / "d.zip", [("pkg/a.so", data), ("pkg/b.so", b"x" * 100)])
    assert b"".join(audit._zip_member_chunks(path, zip_infos(path)["pkg/a.so"])) == data


def test_member_data_starts_after_the_local_extra_field(tmp_path):
    path = tmp_path / "e.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("pkg/a.so")
        info.extra = struct.pack("<HH", 0xCAFE, 6) + b"extra!"
        zf.writestr(info, b"the member")
    assert list(audit._zip_member_chunks(path, zip_infos(path)["pkg/a.so"])) == [b"the member"]


def test_truncated_stored_member_yields_what_is_there(tmp_path):
    data = bytes(range(256)) * 12
    path = write_zip(tmp_path / "t.zip", [("pkg/a.so", data)], zipfile.ZIP_STORED)
    info = zip_infos(path)["pkg/a.so"]
    with open(path, "r+b") as fp:
        fp.truncate(30 + len("pkg/a.so") + 1000)
    assert list(audit._zip_member_chunks(path, info)) == [data[:1000]]


def test_truncated_deflated_member_yields_a_prefix(tmp_path):
    data = random.Random(3).randbytes(6000)
    path = write_zip(tmp_path / "t.zip", [("pkg/a.so", data)])
    info = zip_infos(path)["pkg/a.so"]
    with open(path, "r+b") as fp:
        fp.truncate(30 + len("pkg/a.so") + 3000)
    out = b"".join(audit._zip_member_chunks(path, info))
    assert 0 < len(out) < len(data) and data.startswith(out)


@pytest.mark.parametrize("where", ["inside", "near_end"])
def test_bad_local_header_is_a_bad_zip(tmp_path, where):
    path = write_zip(tmp_path / "b.zip", [("pkg/a.so", b"data" * 10)], zipfile.ZIP_STORED)
    info = zip_infos(path)["pkg/a.so"]
    info.header_offset = 1 if where == "inside" else path.stat().st_size - 29
    with pytest.raises(zipfile.BadZipFile) as err:
        list(audit._zip_member_chunks(path, info))
    assert str(err.value) == "bad local header for pkg/a.so"


def test_stored_and_deflated_members_are_read_without_a_crc_check(tmp_path):
    path = write_zip(tmp_path / "c.zip", [("pkg/a.so", b"payload" * 50)])
    info = zip_infos(path)["pkg/a.so"]
    info.CRC ^= 1  # zipfile's reader would refuse it
    assert b"".join(audit._zip_chunks_any(path, info)) == b"payload" * 50


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_bzip2_and_lzma_members_go_through_zipfile(tmp_path, method):
    data = bytes(2 * STREAM_CHUNK) + b"end"
    path = write_zip(tmp_path / "z.zip", [("pkg/a.so", data)], method)
    info = zip_infos(path)["pkg/a.so"]
    chunks = list(audit._zip_chunks_any(path, info))
    assert [len(c) for c in chunks] == [STREAM_CHUNK, STREAM_CHUNK, 3]
    assert b"".join(chunks) == data
    info.CRC ^= 1
    with pytest.raises(zipfile.BadZipFile, match="Bad CRC-32 for file 'pkg/a.so'"):
        list(audit._zip_chunks_any(path, info))


# ---- the central directory reader ----------------------------------------------------------------------


def hand_zip(entries: list[dict], *, comment: bytes = b"", count: int | None = None, disk: int = 0, cd_disk: int = 0,
             zip64_eocd: tuple[str, ...] = (), locator: bool = True, eocd64_sig: bytes = b"PK\x06\x06",
             eocd64_at: int | None = None, cd_sig: bytes = b"PK\x01\x02") -> bytes:
    """A zip of stored members written byte by byte. Each entry: name (bytes), data, flags, zip64 (which of
    usize/csize/offset go to the ZIP64 extra field), extra_before (other extra fields first), disk_start
    (the optional 4 bytes after the ZIP64 values), no_zip64_extra (leave the values out)."""
    out, central = bytearray(), bytearray()
    for e in entries:
        name, data, flags = e["name"], e.get("data", b""), e.get("flags", 0)
        offset, crc = len(out), zlib.crc32(data)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, 0, 0, 0x21, crc, len(data), len(data),
                           len(name), 0) + name + data
        usize = csize = len(data)
        values = []
        if "usize" in e.get("zip64", ()):
            values.append(usize)
            usize = 0xFFFFFFFF
        if "csize" in e.get("zip64", ()):
            values.append(csize)
            csize = 0xFFFFFFFF
        if "offset" in e.get("zip64", ()):
            values.append(offset)
            offset = 0xFFFFFFFF
        extra = e.get("extra_before", b"")
        if values and not e.get("no_zip64_extra"):
            body = b"".join(struct.pack("<Q", v) for v in values) + e.get("disk_start", b"")
            extra += struct.pack("<HH", 1, len(body)) + body
        central += struct.pack("<4sHHHHHHIIIHHHHHII", cd_sig, 45, 20, flags, 0, 0, 0x21, crc, csize, usize,
                               len(name), len(extra), 0, 0, 0, 0, offset) + name + extra
    cd_offset, cd_size = len(out), len(central)
    out += central
    n = len(entries) if count is None else count
    e_count, e_size, e_offset = n, cd_size, cd_offset
    if zip64_eocd:
        record_at = len(out)
        out += struct.pack("<4sQHHIIQQQQ", eocd64_sig, 44, 45, 45, 0, 0, n, n, cd_size, cd_offset)
        if locator:
            out += struct.pack("<4sIQI", b"PK\x06\x07", 0, record_at if eocd64_at is None else eocd64_at, 1)
        e_count = 0xFFFF if "count" in zip64_eocd else n
        e_size = 0xFFFFFFFF if "size" in zip64_eocd else cd_size
        e_offset = 0xFFFFFFFF if "offset" in zip64_eocd else cd_offset
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", disk, cd_disk, e_count, e_count, e_size, e_offset,
                       len(comment)) + comment
    return bytes(out)


def fields(info: zipfile.ZipInfo) -> tuple:
    return (info.filename, info.flag_bits, info.compress_type, info.CRC, info.compress_size, info.file_size,
            info.header_offset)


def candidates(tmp_path: Path, data: bytes) -> list[tuple] | None:
    path = tmp_path / "x.whl"
    path.write_bytes(data)
    found_ = audit._zip_candidates(path)
    return None if found_ is None else [fields(i) for i in found_]


def test_zip_candidates_match_zipfile_for_stored_and_deflated_members(tmp_path):
    path = tmp_path / "w.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pkg/__init__.py", "")
        zf.writestr("pkg/_C.abi3.so", SM120)
        zf.writestr("pkg/sub.so/", b"")  # a directory
        zf.writestr("pkg/.wh.gone.so", b"")
        zf.writestr("pkg/libx.so.1", SM90, compress_type=zipfile.ZIP_STORED)
        zf.writestr("pkg/k.fatbin", b"\0" * 100)
        zf.writestr("pkg/x.sox", b"")
    infos = zip_infos(path)
    assert [fields(i) for i in audit._zip_candidates(path)] == [
        fields(infos[name]) for name in ("pkg/_C.abi3.so", "pkg/libx.so.1", "pkg/k.fatbin")]
    deflated = infos["pkg/_C.abi3.so"]
    assert deflated.compress_type == zipfile.ZIP_DEFLATED and deflated.compress_size != deflated.file_size


def test_zip_candidates_decode_names_by_the_utf8_flag(tmp_path):
    assert candidates(tmp_path, hand_zip([
        {"name": b"pkg/\x81\x82.so", "data": b"a"},  # no flag: cp437
        {"name": "pkg/ü.so".encode(), "data": b"b", "flags": 0x800},
        {"name": b"pkg/\xc3\xbc.so", "data": b"c"},  # the same bytes, no flag: cp437 again
    ])) == [("pkg/üé.so", 0, 0, zlib.crc32(b"a"), 1, 1, 0),
            ("pkg/ü.so", 0x800, 0, zlib.crc32(b"b"), 1, 1, 40),
            ("pkg/├╝.so", 0, 0, zlib.crc32(b"c"), 1, 1, 80)]


def test_zip_candidates_count_an_entry_with_an_empty_name(tmp_path):
    assert candidates(tmp_path, hand_zip([{"name": b"a.so", "data": b"x"}, {"name": b""}])) == [
        ("a.so", 0, 0, zlib.crc32(b"x"), 1, 1, 0)]


def test_zip_candidates_read_past_the_longest_comment(tmp_path):
    data = hand_zip([{"name": b"a.so", "data": b"x"}], comment=b"c" * 0xFFFF)
    assert candidates(tmp_path, data) == [("a.so", 0, 0, zlib.crc32(b"x"), 1, 1, 0)]


ZIP64_DATA = b"zip64 member"


@pytest.mark.parametrize("zip64, extra_before, disk_start", [
    (("usize", "csize", "offset"), b"", b""),
    (("usize", "csize", "offset"), struct.pack("<HH", 0x5455, 5) + b"\x01abcd", b""),  # another field first
    (("usize", "csize", "offset"), b"", b"\0\0\0\0"),  # with the disk start number
    (("offset",), b"", b""),
    (("usize",), b"", b""),
    (("csize",), b"", b""),
    (("usize", "offset"), b"", b""),
])
def test_zip64_sizes_come_from_the_extra_field_in_order(tmp_path, zip64, extra_before, disk_start):
    data = hand_zip([{"name": b"pkg/pad.py", "data": b"p" * 7},
                     {"name": b"pkg/_C.so", "data": ZIP64_DATA, "zip64": zip64, "extra_before": extra_before,
                      "disk_start": disk_start}])
    assert candidates(tmp_path, data) == [("pkg/_C.so", 0, 0, zlib.crc32(ZIP64_DATA), 12, 12, 47)]
    assert [s.path for s in audit.scan_wheel(tmp_path / "x.whl")] == []  # read from offset 47: not a binary


@pytest.mark.parametrize("zip64", [("usize",), ("csize",), ("offset",)])
def test_zip64_sizes_missing_from_the_extra_field_leave_it_to_zipfile(tmp_path, zip64):
    data = hand_zip([{"name": b"pkg/_C.so", "data": b"x", "zip64": zip64, "no_zip64_extra": True}])
    assert candidates(tmp_path, data) is None


def test_zip64_member_is_audited(tmp_path):
    path = tmp_path / "w.whl"
    path.write_bytes(hand_zip([{"name": b"pkg/readme.txt", "data": b"r" * 33},
                               {"name": b"pkg/_C.so", "data": SM90, "zip64": ("usize", "csize", "offset")}]))
    assert audit.scan_wheel(path) == [found("pkg/_C.so", SM90)]


@pytest.mark.parametrize("fields64", [("count",), ("size",), ("offset",), ("count", "size", "offset")])
def test_zip64_end_record_is_followed_by_the_locator(tmp_path, fields64):
    data = hand_zip([{"name": b"a.py", "data": b"x"}, {"name": b"b.so", "data": b"yy"}], zip64_eocd=fields64)
    assert candidates(tmp_path, data) == [("b.so", 0, 0, zlib.crc32(b"yy"), 2, 2, 35)]


@pytest.mark.parametrize("damage", [{"locator": False}, {"eocd64_sig": b"PK\x06\x07"}, {"eocd64_at": 10_000},
                                    {"eocd64_at": -40}])
def test_zip64_end_record_missing_or_damaged_leaves_it_to_zipfile(tmp_path, damage):
    if damage.get("eocd64_at") == -40:
        entries = [{"name": b"b.so", "data": b"yy"}]
        size = len(hand_zip(entries, zip64_eocd=("count",)))
        damage = {"eocd64_at": size - 40}  # fewer than the record's 56 bytes left
    data = hand_zip([{"name": b"b.so", "data": b"yy"}], zip64_eocd=("count",), **damage)
    assert candidates(tmp_path, data) is None


def test_zip64_locator_may_start_the_file(tmp_path):
    """The locator at offset 0, the ZIP64 record in the comment: an empty archive, read, not refused."""
    record = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, 0, 0, 0, 0)
    data = (struct.pack("<4sIQI", b"PK\x06\x07", 0, 42, 1)
            + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0, 0, len(record)) + record)
    assert candidates(tmp_path, data) == []


def test_zip64_marker_without_room_for_a_locator_leaves_it_to_zipfile(tmp_path):
    data = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0, 0, 0)
    assert candidates(tmp_path, data) is None


@pytest.mark.parametrize("options", [{"disk": 1}, {"cd_disk": 1}, {"count": 3}, {"count": 1},
                                     {"cd_sig": b"PK\x01\x03"}])
def test_unusual_directories_are_left_to_zipfile(tmp_path, options):
    data = hand_zip([{"name": b"a.so", "data": b"x"}, {"name": b"b.so", "data": b"y"}], **options)
    assert candidates(tmp_path, data) is None


def test_anything_but_a_plain_archive_is_left_to_zipfile(tmp_path):
    good = hand_zip([{"name": b"a.so", "data": b"x"}])
    assert candidates(tmp_path, good) == [("a.so", 0, 0, zlib.crc32(b"x"), 1, 1, 0)]
    assert candidates(tmp_path, b"#!/bin/sh\n" * 20 + good) is None  # data before the archive
    assert candidates(tmp_path, b"no zip here" * 10) is None  # no end record
    assert candidates(tmp_path, b"x" * 100 + b"PK\x05\x06" + bytes(17)) is None  # an end record cut short
    moved = bytearray(good)
    struct.pack_into("<I", moved, len(moved) - 6, 10_000)  # the directory "past the end"
    assert candidates(tmp_path, bytes(moved)) is None
    assert candidates(tmp_path, b"") is None


# ---- wheels ------------------------------------------------------------------------------------------


@pytest.fixture
def wheel(tmp_path) -> Path:
    return write_zip(tmp_path / "w-1.0-py3-none-any.whl", [
        ("pkg/a.so", SM90), ("pkg/libc.so", LINKER_SCRIPT), ("pkg/big.so", SM120), ("pkg/x.py", b"x = 1\n")])


def test_scan_wheel_lists_members_largest_first_and_any_worker_count_agrees(wheel):
    wanted = [found("pkg/big.so", SM120), found("pkg/a.so", SM90)]
    assert audit.scan_wheel(wheel, workers=1) == wanted
    assert audit.scan_wheel(wheel, workers=4) == wanted
    assert audit.scan_wheel(wheel) == wanted


def test_scan_wheel_prefixes_member_paths(wheel):
    assert [s.path for s in audit.scan_wheel(wheel, prefix="dist/w.whl/")] == ["dist/w.whl/pkg/big.so",
                                                                               "dist/w.whl/pkg/a.so"]


def test_scan_wheel_takes_every_candidates_declared_size_from_the_budget(wheel):
    total = len(SM90) + len(LINKER_SCRIPT) + len(SM120)
    budget = InflateBudget(total)
    audit.scan_wheel(wheel, budget=budget)
    assert budget.used == total
    with pytest.raises(ForgeError, match=f"^{wheel} would inflate 0 MiB of libraries"):
        audit.scan_wheel(wheel, budget=InflateBudget(total - 1))


def test_scan_wheel_with_data_before_the_archive_reads_it_with_zipfile(tmp_path, wheel):
    plain = write_zip(tmp_path / "plain.zip", [("pkg/a.so", SM90), ("pkg/d.so/", b""), ("pkg/libc.so", LINKER_SCRIPT),
                                                ("pkg/big.so", SM120), ("pkg/x.py", b"x = 1\n")])
    prefixed = tmp_path / "p.whl"
    prefixed.write_bytes(b"#!/bin/sh\n" * 30 + plain.read_bytes())
    assert audit._zip_candidates(prefixed) is None
    assert audit.scan_wheel(prefixed, workers=1) == [found("pkg/big.so", SM120), found("pkg/a.so", SM90)]


def test_scan_wheel_reads_a_bzip2_member(tmp_path):
    path = write_zip(tmp_path / "b.whl", [("pkg/a.so", SM90)], zipfile.ZIP_BZIP2)
    assert audit.scan_wheel(path) == [found("pkg/a.so", SM90)]


def test_unreadable_wheel_is_one_line(tmp_path):
    path = tmp_path / "bad.whl"
    path.write_bytes(b"not a zip" * 20)
    with pytest.raises(ForgeError) as info:
        audit.scan_wheel(path)
    assert str(info.value) == (f"{path} is not a readable wheel (File is not a zip file). "
                               "Fix: re-download or rebuild it.")


def test_wheel_with_a_bad_utf8_name_is_unreadable(tmp_path):
    path = tmp_path / "u.whl"
    path.write_bytes(hand_zip([{"name": b"pkg/\xff.so", "data": b"x", "flags": 0x800}]))
    with pytest.raises(ForgeError) as info:
        audit.scan_wheel(path)
    assert str(info.value) == (f"{path} is not a readable wheel ('utf-8' codec can't decode byte 0xff in position 4: "
                               "invalid start byte). Fix: re-download or rebuild it.")


def test_wheel_that_is_a_directory_is_unreadable(tmp_path):
    path = tmp_path / "d.whl"
    path.mkdir()
    with pytest.raises(ForgeError) as info:
        audit.scan_wheel(path)
    assert str(info.value) == (f"{path} is not a readable wheel ([Errno 21] Is a directory: '{path}'). "
                               "Fix: re-download or rebuild it.")


def test_zip64_extra_shorter_than_one_value_leaves_it_to_zipfile(tmp_path):
    path = tmp_path / "s.whl"
    bad = {"name": b"pkg/_C.so", "data": b"x", "zip64": ("usize",), "no_zip64_extra": True,
           "extra_before": struct.pack("<HH", 1, 5) + b"12345"}  # 5 bytes: not one 8-byte value
    path.write_bytes(hand_zip([bad]))
    assert audit._zip_candidates(path) is None


# ---- image tars --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, absolute", [
    ("./usr/lib/x.so", "/usr/lib/x.so"), ("././a", "/a"), ("/abs/x", "/abs/x"), ("//x", "/x"), ("a", "/a"),
    ("./", "/"), (".//x", "/x"), ("../x", "/../x"), ("usr/./x", "/usr/./x"),
])
def test_absolute_names_a_tar_member_in_the_image(name, absolute):
    assert audit._absolute(name) == absolute


def test_filesystem_tar_scans_files_and_collects_whiteouts(tmp_path):
    layer = tar_bytes([
        ("./usr/lib/libk.so", SM90), ("usr/lib/.wh.libgone.so", b""), ("opt/x/.wh..wh..opq", b""),
        ("usr/lib/sub.so", None), ("usr/lib/link.so", "->libk.so"), ("usr/lib/libc.so", LINKER_SCRIPT),
        ("etc/passwd", b"root:x:0:0\n"), ("opt/y.so.2", SM120), (".wh.top", b""), ("./.wh..wh..opq", b""),
    ])
    seen = []
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r|") as tf:
        results, whiteouts, opaque = audit._scan_filesystem_tar(tf, on_member=seen.append)
    assert results == {"/usr/lib/libk.so": found("/usr/lib/libk.so", SM90), "/opt/y.so.2": found("/opt/y.so.2", SM120)}
    assert whiteouts == {"/usr/lib/libgone.so", "/top"}
    assert opaque == {"/opt/x", "/"}
    assert seen == ["/usr/lib/libk.so", "/usr/lib/libc.so", "/opt/y.so.2"]  # every candidate file read
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r|") as tf:
        assert audit._scan_filesystem_tar(tf) == (results, whiteouts, opaque)


@pytest.mark.parametrize("n", [-1, None])
def test_peeked_read_all_returns_head_then_rest(n):
    peeked = audit._Peeked(io.BytesIO(b"tail-bytes"), b"HEAD")
    assert peeked.read(n) == b"HEADtail-bytes"
    assert peeked.read(n) == b""
    assert audit._Peeked(io.BytesIO(b"tail"), b"HEAD").read() == b"HEADtail"


def test_peeked_read_serves_the_head_then_the_stream():
    peeked = audit._Peeked(io.BytesIO(b"tail-bytes"), b"HEAD")
    assert peeked.read(0) == b""
    assert peeked.read(2) == b"HE"
    assert peeked.read(5) == b"ADtai"  # the rest of the head, then the stream
    assert peeked.read(3) == b"l-b"
    assert peeked.read(-1) == b"ytes"


def test_peeked_read_of_exactly_the_head_leaves_the_stream():
    raw = io.BytesIO(b"tail")
    peeked = audit._Peeked(raw, b"HEAD")
    assert peeked.read(4) == b"HEAD"
    assert raw.tell() == 0
    assert peeked.read(100) == b"tail"


def mark(path: str, tag: str = "") -> _Scanned:
    return _Scanned(path, None, tag)


def test_merge_later_layers_replace_earlier_files():
    base = ({"/a.so": mark("/a.so", "old"), "/b.so": mark("/b.so")}, set(), set())
    top = ({"/a.so": mark("/a.so", "new")}, set(), set())
    assert audit._merge_layers([base, top]) == [mark("/a.so", "new"), mark("/b.so")]


def test_merge_whiteouts_delete_a_file_or_a_whole_directory():
    base = ({p: mark(p) for p in ("/usr/lib/x.so", "/usr/lib/x.so.1", "/opt/gone/a.so", "/opt/gone/sub/b.so",
                                  "/opt/gonez/c.so", "/opt/keep.so")}, set(), set())
    top = ({}, {"/usr/lib/x.so", "/opt/gone"}, set())
    assert audit._merge_layers([base, top]) == [mark("/opt/gonez/c.so"), mark("/opt/keep.so"),
                                                mark("/usr/lib/x.so.1")]


def test_merge_opaque_directory_clears_only_earlier_content():
    base = ({p: mark(p) for p in ("/opt/app/x.so", "/opt/app/sub/y.so", "/opt/appx/z.so", "/opt/app")}, set(),
            set())
    top = ({"/opt/app/new.so": mark("/opt/app/new.so")}, set(), {"/opt/app"})
    assert audit._merge_layers([base, top]) == [mark("/opt/app"), mark("/opt/app/new.so"), mark("/opt/appx/z.so")]


def test_merge_whiteout_in_a_layer_does_not_delete_its_own_file_and_root_opaque_clears_all():
    base = ({"/a.so": mark("/a.so", "base"), "/d/b.so": mark("/d/b.so")}, set(), set())
    top = ({"/a.so": mark("/a.so", "top")}, {"/a.so"}, set())
    assert audit._merge_layers([base, top]) == [mark("/a.so", "top"), mark("/d/b.so")]
    root = ({"/c.so": mark("/c.so")}, set(), {"/"})
    assert audit._merge_layers([base, root]) == [mark("/c.so")]
    assert audit._merge_layers([base, ({}, {"/d/"}, set())]) == [mark("/a.so", "base")]
    assert audit._merge_layers([]) == []


BASE_LAYER = tar_bytes([("usr/lib/libk.so", SM90), ("opt/app/_C.so", SM90)])
TOP_LAYER = tar_bytes([("usr/lib/libk.so", SM120)])
BASE_FIRST = [found("/opt/app/_C.so", SM90), found("/usr/lib/libk.so", SM120)]  # the top layer wins
ARCHIVE_ORDER = [found("/opt/app/_C.so", SM90), found("/usr/lib/libk.so", SM90)]  # top came first in the tar


def saved(manifest: bytes | None) -> io.BytesIO:
    """A legacy `docker save` tar whose top layer (bbb) comes before the base layer (aaa) in the stream."""
    entries = [("bbb", None), ("bbb/layer.tar", TOP_LAYER), ("aaa/layer.tar", BASE_LAYER), ("aaa/json", b"{}")]
    if manifest is not None:
        entries.append(("manifest.json", manifest))
    return io.BytesIO(tar_bytes(entries))


@pytest.mark.parametrize("manifest, wanted", [
    (json.dumps([{"Config": "c.json", "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]), BASE_FIRST),
    (json.dumps([{"Layers": ["./aaa/layer.tar", "/bbb/layer.tar"]}]), BASE_FIRST),
    (json.dumps([{"Layers": ["aaa/layer.tar", "zzz/layer.tar"]}]), ARCHIVE_ORDER),  # an unknown layer
    (json.dumps({"Layers": ["aaa/layer.tar", "bbb/layer.tar"]}), ARCHIVE_ORDER),  # not a list
    (json.dumps([]), ARCHIVE_ORDER),
    (json.dumps([{"Config": "c.json"}]), ARCHIVE_ORDER),  # names no layer: it orders nothing, drops nothing
    (json.dumps([{"Layers": []}]), ARCHIVE_ORDER),
    (json.dumps(["aaa/layer.tar"]), ARCHIVE_ORDER),
    ("", ARCHIVE_ORDER),
    (None, ARCHIVE_ORDER),
])
def test_manifest_orders_the_layers_when_it_names_them_all(manifest, wanted):
    data = None if manifest is None else manifest.encode()
    assert audit.scan_image_tar(saved(data), "img.tar") == wanted


def test_oci_layout_with_a_gzip_layer_and_a_config_blob():
    oci = tar_bytes([
        ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("blobs/sha256/top", gzip.compress(TOP_LAYER)),
        ("blobs/sha256/cfg", b'{"architecture": "amd64"}' * 30), ("blobs/sha256/base", BASE_LAYER),
        ("index.json", b"{}"), ("manifest.json", json.dumps([{"Layers": ["blobs/sha256/base",
                                                                         "blobs/sha256/top"]}]).encode())])
    assert audit.scan_image_tar(io.BytesIO(oci), "oci.tar") == BASE_FIRST


def test_a_blob_that_is_not_a_tar_is_skipped():
    assert audit.scan_image_tar(io.BytesIO(tar_bytes([("blobs/sha256/libk.so", SM90)])), "x") == []


def test_a_layer_tar_that_is_not_a_tar_is_part_of_a_flat_filesystem():
    flat = tar_bytes([("x/layer.tar", b"garbage" * 100), ("usr/lib/libk.so", SM90)])
    assert audit.scan_image_tar(io.BytesIO(flat), "x") == [found("/usr/lib/libk.so", SM90)]


def test_docker_export_tar_is_the_filesystem_itself():
    flat = tar_bytes([("usr", None), ("./usr/lib/libk.so", SM90), ("usr/lib/link.so", "->libk.so"),
                      ("etc/passwd", b"root:x:0:0\n"), ("usr/lib/libc.so", LINKER_SCRIPT), ("opt/x.so.2", SM120)])
    assert audit.scan_image_tar(io.BytesIO(flat), "export") == [found("/opt/x.so.2", SM120),
                                                                found("/usr/lib/libk.so", SM90)]


def test_garbage_is_not_a_readable_image_tar():
    with pytest.raises(ForgeError) as info:
        audit.scan_image_tar(io.BytesIO(b"not a tar" * 100), "bad.tar")
    assert str(info.value) == ("bad.tar is not a readable image tar (invalid header). Fix: pass an image name with "
                               "--image, or a `docker save` / `docker export` tar.")


def test_a_manifest_that_is_not_json_is_not_readable():
    try:
        json.loads(b"{nope")
    except ValueError as err:
        reason = str(err)
    with pytest.raises(ForgeError) as info:
        audit.scan_image_tar(saved(b"{nope"), "img")
    assert info.value.problem == f"img is not a readable image tar ({reason})"


def test_a_truncated_save_tar_is_not_readable():
    data = saved(json.dumps([{"Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]).encode()).getvalue()
    with pytest.raises(ForgeError) as info:
        audit.scan_image_tar(io.BytesIO(data[:1500]), "cut")
    assert info.value.problem == "cut is not a readable image tar (unexpected end of data)"


# ---- Docker, faked -------------------------------------------------------------------------------------


def fake_docker(tmp_path: Path, *, info: int = 0, inspect: int = 0, save: int = 0, create: int = 0, export: int = 0,
                image_tar: bytes = b"", stderr: str = "") -> tuple[Path, Path]:
    """An executable `docker` that logs each call's arguments and answers from prepared files."""
    log, tar_file, err_file = tmp_path / "docker.log", tmp_path / "stream.tar", tmp_path / "stderr.txt"
    tar_file.write_bytes(image_tar)
    err_file.write_text(stderr)
    script = tmp_path / "fake-docker"
    script.write_text(f"""#!/bin/sh
printf '%s\\n' "$*" >> '{log}'
case "$1" in
  info) echo 27.0.0; exit {info};;
  image) exit {inspect};;
  save) cat '{tar_file}'; cat '{err_file}' >&2; exit {save};;
  create) echo cid123; cat '{err_file}' >&2; exit {create};;
  export) cat '{tar_file}'; cat '{err_file}' >&2; exit {export};;
  rm) exit 0;;
esac
exit 99
""")
    script.chmod(0o755)
    return script, log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


FLAT = tar_bytes([("usr/lib/libk.so", SM90), ("etc/passwd", b"x")])


def test_docker_not_installed_is_one_line(monkeypatch):
    monkeypatch.delenv("VLLM_FORGE_DOCKER", raising=False)
    with pytest.raises(ForgeError) as info:
        audit._docker("no-such-docker-here")
    assert str(info.value) == ("`no-such-docker-here` is not installed. Fix: install Docker, or audit a wheel or "
                               "directory instead.")


def test_docker_is_found_by_argument_then_environment_then_on_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("docker", "podman", "nerdctl"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("VLLM_FORGE_DOCKER", raising=False)
    assert audit._docker(None) == str(bin_dir / "docker")
    monkeypatch.setenv("VLLM_FORGE_DOCKER", "podman")
    assert audit._docker(None) == str(bin_dir / "podman")
    assert audit._docker("nerdctl") == str(bin_dir / "nerdctl")
    monkeypatch.setenv("VLLM_FORGE_DOCKER", "podman2")
    with pytest.raises(ForgeError, match="^`podman2` is not installed"):
        audit._docker(None)


def test_check_image_asks_the_engine_then_the_image(tmp_path):
    docker, log = fake_docker(tmp_path)
    assert audit._check_image(str(docker), "img:1") is None
    assert calls(log) == ["info --format {{.ServerVersion}}", "image inspect img:1"]


def test_check_image_without_an_engine(tmp_path):
    docker, log = fake_docker(tmp_path, info=1)
    with pytest.raises(ForgeError) as info:
        audit._check_image(str(docker), "img:1")
    assert str(info.value) == ("no Docker engine answers (`docker info` failed). "
                               "Fix: start dockerd, or check DOCKER_HOST.")
    assert calls(log) == ["info --format {{.ServerVersion}}"]


def test_check_image_that_is_not_present(tmp_path):
    docker, _log = fake_docker(tmp_path, inspect=1)
    with pytest.raises(ForgeError) as info:
        audit._check_image(str(docker), "img:1")
    assert str(info.value) == "image img:1 is not present locally. Fix: `docker pull img:1` or build it first."


def test_check_image_when_the_engine_does_not_answer(monkeypatch):
    seen = []

    def hang(command, **kwargs):
        seen.append((command, kwargs))
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(audit.subprocess, "run", hang)
    with pytest.raises(ForgeError) as info:
        audit._check_image("docker", "img:1")
    assert str(info.value) == "the Docker engine does not answer (`docker info` timed out). Fix: start dockerd."
    assert seen == [(["docker", "info", "--format", "{{.ServerVersion}}"],
                     {"capture_output": True, "text": True, "timeout": 60})]


def test_scan_image_streams_docker_save(tmp_path):
    save = tar_bytes([("aaa/layer.tar", BASE_LAYER), ("bbb/layer.tar", TOP_LAYER)])
    docker, log = fake_docker(tmp_path, image_tar=save)
    assert audit.scan_image("img:1", docker=str(docker)) == BASE_FIRST
    assert calls(log) == ["info --format {{.ServerVersion}}", "image inspect img:1", "save img:1"]


def test_scan_image_via_export_removes_its_container(tmp_path):
    docker, log = fake_docker(tmp_path, image_tar=FLAT)
    assert audit.scan_image("img:1", docker=str(docker), via="export") == [found("/usr/lib/libk.so", SM90)]
    assert calls(log) == ["info --format {{.ServerVersion}}", "image inspect img:1", "create img:1 true",
                          "export cid123", "rm -f cid123"]


def test_scan_image_via_export_removes_its_container_when_the_export_fails(tmp_path):
    docker, log = fake_docker(tmp_path, image_tar=FLAT, export=3, stderr="  export broke \n")
    with pytest.raises(ForgeError) as info:
        audit.scan_image("img:1", docker=str(docker), via="export")
    assert str(info.value) == ("`docker export cid123` failed: export broke. Fix: check the image name and the "
                               "Docker engine.")
    assert calls(log)[-2:] == ["export cid123", "rm -f cid123"]


def test_scan_image_via_export_removes_its_container_when_the_stream_is_unreadable(tmp_path):
    docker, log = fake_docker(tmp_path, image_tar=b"garbage" * 100)
    with pytest.raises(ForgeError) as info:
        audit.scan_image("img:1", docker=str(docker), via="export")
    assert info.value.problem == "`export cid123` is not a readable image tar (invalid header)"
    assert calls(log)[-1] == "rm -f cid123"


def test_scan_image_when_create_fails(tmp_path):
    docker, log = fake_docker(tmp_path, create=1, stderr="no space left on device\n")
    with pytest.raises(ForgeError) as info:
        audit.scan_image("img:1", docker=str(docker), via="export")
    assert str(info.value) == "`docker create img:1` failed: no space left on device. Fix: use --via save."
    assert calls(log) == ["info --format {{.ServerVersion}}", "image inspect img:1", "create img:1 true"]


def test_scan_image_when_create_fails_keeps_300_characters_of_its_error(tmp_path):
    docker, _log = fake_docker(tmp_path, create=1, stderr="E" * 400)
    with pytest.raises(ForgeError) as info:
        audit.scan_image("img:1", docker=str(docker), via="export")
    assert info.value.problem == "`docker create img:1` failed: " + "E" * 300


def test_scan_image_when_save_fails_names_the_command(tmp_path):
    docker, _log = fake_docker(tmp_path, image_tar=FLAT, save=1, stderr="  Error response from daemon: boom \n")
    with pytest.raises(ForgeError) as info:
        audit.scan_image("img:1", docker=str(docker))
    assert str(info.value) == ("`docker save img:1` failed: Error response from daemon: boom. Fix: check the image "
                               "name and the Docker engine.")


@pytest.mark.parametrize("way", ["save", "export"])
def test_a_failing_docker_with_no_output_says_dockers_error(tmp_path, way):
    """Nothing on stdout is not an image tar, but Docker's own error is what the user needs."""
    docker, _log = fake_docker(tmp_path, image_tar=b"", save=1, export=1,
                               stderr="Error response from daemon: no space left on device\n")
    with pytest.raises(ForgeError) as info:
        audit.scan_image("img:1", docker=str(docker), via=way)
    command = "save img:1" if way == "save" else "export cid123"
    assert info.value.problem == f"`docker {command}` failed: Error response from daemon: no space left on device"


def test_a_succeeding_docker_with_a_broken_stream_is_unreadable(tmp_path):
    docker, _log = fake_docker(tmp_path, image_tar=b"not a tar" * 100, save=0)
    with pytest.raises(ForgeError) as info:
        audit.scan_image("img:1", docker=str(docker))
    assert info.value.problem.startswith("`save img:1` is not a readable image tar (")


def test_scan_image_save_error_keeps_300_characters(tmp_path):
    docker, _log = fake_docker(tmp_path, image_tar=FLAT, save=2, stderr="x" * 500)
    with pytest.raises(ForgeError) as info:
        audit.scan_image("img:1", docker=str(docker))
    assert info.value.problem == "`docker save img:1` failed: " + "x" * 300


def test_scan_image_refuses_an_unknown_way_to_read(tmp_path):
    docker, log = fake_docker(tmp_path)
    with pytest.raises(ForgeError) as info:
        audit.scan_image("img:1", docker=str(docker), via="pipe")
    assert str(info.value) == "--via 'pipe' is not a way to read an image. Fix: use --via save or --via export."
    assert calls(log) == ["info --format {{.ServerVersion}}", "image inspect img:1"]


def test_scan_image_checks_the_image_first(tmp_path):
    docker, log = fake_docker(tmp_path, inspect=1, image_tar=FLAT)
    with pytest.raises(ForgeError, match="^image img:1 is not present locally"):
        audit.scan_image("img:1", docker=str(docker), via="export")
    assert calls(log) == ["info --format {{.ServerVersion}}", "image inspect img:1"]


# ---- torch's arch list -------------------------------------------------------------------------------


GOOD = json.dumps({"version": "2.9.0", "cuda": "12.8", "arch_list": ["sm_90", "sm_120", "compute_120"]})


@pytest.mark.parametrize("returncode, stdout, stderr", [
    (127, "", "whatever"), (126, "", "permission"), (125, "", 'exec: "python3": executable file not found in $PATH'),
    (1, "", "python3: No such file or directory"), (0, "", "No such file"),
])
def test_probe_without_python3(returncode, stdout, stderr):
    assert audit.parse_torch_probe("image x", returncode, stdout, stderr) == TorchArchs(
        where="image x", error="no python3 in it, so no torch to check")


@pytest.mark.parametrize("returncode, stdout, stderr, error", [
    (1, "", "Traceback (most recent call last):\n  File x\nValueError: bad\n",
     "python3 failed (exit 1): ValueError: bad"),
    (128, "", "x", "python3 failed (exit 128): x"),
    (1, "out1\nout2\n", "", "python3 failed (exit 1): out2"),
    (1, "", "", "python3 failed (exit 1): "),
    (0, "hello\n", "", "python3 failed (exit 0): hello"),
    (2, GOOD, "", f"python3 failed (exit 2): {GOOD}"),
    (1, "", "E" * 300, "python3 failed (exit 1): " + "E" * 200),
    (1, "", "  warning  \n\n", "python3 failed (exit 1): warning"),
])
def test_probe_that_fails_names_the_last_line(returncode, stdout, stderr, error):
    assert audit.parse_torch_probe("image x", returncode, stdout, stderr) == TorchArchs(where="image x", error=error)


@pytest.mark.parametrize("stdout, error", [
    ("{not json", "unexpected output from python3: {not json"),
    ("{" + "x" * 300, "unexpected output from python3: {" + "x" * 199),
])
def test_probe_with_output_that_is_not_json(stdout, error):
    assert audit.parse_torch_probe("image x", 0, stdout, "") == TorchArchs(where="image x", error=error)


def test_probe_where_torch_is_not_importable():
    out = json.dumps({"error": "torch is not importable: ModuleNotFoundError: No module named 'torch'"})
    assert audit.parse_torch_probe("image x", 0, out, "") == TorchArchs(
        where="image x", error="torch is not importable: ModuleNotFoundError: No module named 'torch'")


@pytest.mark.parametrize("cuda", ["", None])
def test_probe_of_a_cpu_only_torch(cuda):
    out = json.dumps({"version": "2.9.0+cpu", "cuda": cuda, "arch_list": []})
    assert audit.parse_torch_probe("this Python", 0, out, "") == TorchArchs(
        where="this Python", version="2.9.0+cpu", cuda="",
        error="torch 2.9.0+cpu is a CPU-only build: it runs no CUDA kernel at all")


@pytest.mark.parametrize("archs", [[], None])
def test_probe_of_a_torch_without_archs(archs):
    out = json.dumps({"version": "2.9.0", "cuda": "12.8", "arch_list": archs})
    assert audit.parse_torch_probe("image x", 0, out, "") == TorchArchs(
        where="image x", version="2.9.0", cuda="12.8", error="torch 2.9.0 reported no compiled CUDA archs")


def test_probe_reads_the_last_json_line():
    out = "Warning: something\n{\"version\": \"1\"}\n" + GOOD + "\ntrailing words\n"
    assert audit.parse_torch_probe("image x", 0, out, "some warning") == TorchArchs(
        where="image x", version="2.9.0", cuda="12.8", arch_list=["sm_90", "sm_120", "compute_120"])


def test_probe_values_are_strings():
    out = json.dumps({"version": 2, "cuda": 12.8, "arch_list": [90, "sm_120"]})
    assert audit.parse_torch_probe("image x", 0, out, "") == TorchArchs(
        where="image x", version="2", cuda="12.8", arch_list=["90", "sm_120"])
    assert audit.parse_torch_probe("image x", 0, json.dumps({"cuda": "12.8", "arch_list": ["sm_90"]}), "") == \
        TorchArchs(where="image x", cuda="12.8", arch_list=["sm_90"])


class Done:
    def __init__(self, returncode=0, stdout=GOOD, stderr=""):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def test_probe_torch_runs_the_probe_with_a_timeout():
    seen = []

    def runner(command, **kwargs):
        seen.append((command, kwargs))
        return Done(1, "", "ImportError: nope")

    assert audit.probe_torch("here", ["py", "-c"], timeout=12, runner=runner) == TorchArchs(
        where="here", error="python3 failed (exit 1): ImportError: nope")
    assert seen == [(["py", "-c", audit.TORCH_PROBE], {"capture_output": True, "text": True, "timeout": 12})]
    seen.clear()
    audit.probe_torch("here", ["py", "-c"], runner=runner)
    assert seen[0][1]["timeout"] == 300


@pytest.mark.parametrize("timeout, text", [(300, "300s"), (12.4, "12s"), (12.6, "13s")])
def test_probe_torch_that_does_not_answer(timeout, text):
    def runner(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    kwargs = {} if timeout == 300 else {"timeout": timeout}
    assert audit.probe_torch("image x", ["python3", "-c"], runner=runner, **kwargs) == TorchArchs(
        where="image x", error=f"python3 did not answer within {text}")


def test_probe_torch_that_cannot_start():
    def runner(command, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    assert audit.probe_torch("this Python", ["python3", "-c"], runner=runner) == TorchArchs(
        where="this Python", error="python3 could not be started (No such file or directory)")


def test_torch_of_image_runs_python3_in_a_throwaway_container():
    seen = []

    def runner(command, **kwargs):
        seen.append((command, kwargs))
        return Done()

    assert audit.torch_of_image("img:1", runner=runner) == TorchArchs(
        where="image img:1", version="2.9.0", cuda="12.8", arch_list=["sm_90", "sm_120", "compute_120"], counts=True)
    assert seen == [(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", "img:1", "-c",
                      audit.TORCH_PROBE], {"capture_output": True, "text": True, "timeout": 300})]
    audit.torch_of_image("img:1", docker="/opt/podman", runner=runner)
    assert seen[-1][0][0] == "/opt/podman"


def test_torch_of_image_counts_even_when_it_fails():
    assert audit.torch_of_image("img:1", runner=lambda c, **k: Done(127, "", "")) == TorchArchs(
        where="image img:1", error="no python3 in it, so no torch to check", counts=True)


def test_torch_of_image_needs_docker(monkeypatch):
    monkeypatch.delenv("VLLM_FORGE_DOCKER", raising=False)
    with pytest.raises(ForgeError, match="^`no-such-docker-here` is not installed"):
        audit.torch_of_image("img:1", docker="no-such-docker-here")


GPUS = [Target("sm_90", 9, 0), Target("sm_86", 8, 6), Target("sm_120", 12, 0), Target("sm_75", 7, 5)]


def test_torch_verdicts_per_gpu():
    torch = TorchArchs("image x", version="2.9.0", cuda="12.8", arch_list=["sm_80", "sm_90", "compute_90", "gfx90a"])
    audit._torch_verdicts(torch, GPUS)
    assert torch.verdict == {"sm_90": "native", "sm_86": "native", "sm_120": "ptx-jit", "sm_75": "none"}


@pytest.mark.parametrize("version, cuda", [("2.9.0+cpu", ""), ("", "12.8")])
def test_torch_verdicts_without_cuda_or_version_are_none(version, cuda):
    torch = TorchArchs("image x", version=version, cuda=cuda, arch_list=["sm_90"])
    audit._torch_verdicts(torch, GPUS)
    assert torch.verdict == {"sm_90": "none", "sm_86": "none", "sm_120": "none", "sm_75": "none"}


# ---- what a path is, and scanning it -----------------------------------------------------------------


def test_classify_by_the_first_bytes(tmp_path):
    kinds = {"k.so": SM90, "raw.fatbin": fatbin(entry(2, 90)), "w.whl": None, "t.tar": tar_bytes([("a", b"x")]),
             "short.tar": bytes(257) + b"ustar"}
    write_zip(tmp_path / "w.whl", [("a.so", b"x")])
    for name, data in kinds.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    assert {name: audit._classify(tmp_path / name) for name in kinds} == {
        "k.so": "binary", "raw.fatbin": "binary", "w.whl": "wheel", "t.tar": "tar", "short.tar": "tar"}


def test_classify_refuses_anything_else(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(bytes(256) + b"ustar")  # one byte short of a tar header's magic
    with pytest.raises(ForgeError) as info:
        audit._classify(path)
    assert str(info.value) == (f"{path} is not an ELF file, a wheel or an image tar. Fix: name a .so, an executable, "
                               "a wheel, a directory, a `docker save` tar, or use --image.")


def test_classify_of_an_unreadable_path(tmp_path):
    with pytest.raises(ForgeError) as info:
        audit._classify(tmp_path)
    assert str(info.value) == f"cannot read {tmp_path} (Is a directory). Fix: check the path and its permissions."


def test_scan_a_missing_path(tmp_path):
    with pytest.raises(ForgeError) as info:
        audit.scan(tmp_path / "nope.whl")
    assert str(info.value) == f"{tmp_path / 'nope.whl'} does not exist. Fix: check the path."


def test_scan_a_binary_names_it_as_given(tmp_path):
    path = tmp_path / "k.so"
    path.write_bytes(SM120)
    assert audit.scan(str(path)) == [found(str(path), SM120, member=False)]


def test_scan_a_directory_within_the_cap(tree):
    wanted = audit.scan_directory(tree)
    assert audit.scan(tree, max_inflate=len(PTX80)) == wanted
    with pytest.raises(ForgeError, match="more than the audit's cap"):
        audit.scan(tree, max_inflate=len(PTX80) - 1)


def test_scan_a_wheel_within_the_cap(wheel):
    total = len(SM90) + len(LINKER_SCRIPT) + len(SM120)
    assert audit.scan(wheel, max_inflate=total) == [found("pkg/big.so", SM120), found("pkg/a.so", SM90)]
    with pytest.raises(ForgeError, match="more than the audit's cap"):
        audit.scan(wheel, max_inflate=total - 1)
    assert audit.scan(wheel) == [found("pkg/big.so", SM120), found("pkg/a.so", SM90)]


def test_scan_an_image_tar(tmp_path):
    path = tmp_path / "img.tar"
    path.write_bytes(saved(json.dumps([{"Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]).encode()).getvalue())
    assert audit.scan(path) == BASE_FIRST
    broken = tmp_path / "broken.tar"
    broken.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(ForgeError) as info:
        audit.scan(broken)
    assert info.value.problem == f"{broken} is not a readable image tar (unexpected end of data)"


def test_scan_the_recorded_partial_library(tmp_path):
    data = (FIXTURES / "gpu_tu_partial" / "libab.so").read_bytes()
    path = write_zip(tmp_path / "x.whl", [("mylib/libab.so", data)])
    (scanned,) = audit.scan(path)
    assert scanned == found("mylib/libab.so", data)
    assert [g.kernels for g in scanned.code.groups] == [(), ("_Z2kaPi",), ("_Z2kbPi",)]
    assert os.listdir(tmp_path) == ["x.whl"]
