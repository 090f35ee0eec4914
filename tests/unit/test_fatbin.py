"""vllm_forge/audit/fatbin.py: what SASS/PTX an ELF file carries, checked against cuobjdump's recorded output
(the h200x2 fixtures) and against hand-made fat binaries; garbage never crashes it."""

from __future__ import annotations

import re
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_forge.audit.fatbin import (
    FATBIN_MAGIC,
    FLAG_ARCH_SPECIFIC,
    FLAG_FAMILY,
    FLAG_LZ4,
    FLAG_ZSTD,
    BinaryFormatError,
    NotDeviceBinary,
    list_device_code,
    scan_stream,
)
from vllm_forge.core.errors import ForgeError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "h200x2"
BINARIES = ["k_sm_120", "k_sm_90", "k_ptx80", "k_sm_90a", "k_sm_100_120_ptx120"]


def recorded_listing() -> dict[str, tuple[list[str], list[str]]]:
    """cuobjdump --list-elf --list-ptx of each fixture, as recorded on the H200 host (arch.txt)."""
    listing: dict[str, tuple[list[str], list[str]]] = {}
    for line in (FIXTURES / "arch.txt").read_text().splitlines():
        m = re.match(r"(ELF|PTX) file\s+\d+: (k_\w+?)\.\d+\.(sm_\w+)\.(cubin|ptx)$", line)
        if m:
            elf, ptx = listing.setdefault(m.group(2), ([], []))
            (elf if m.group(1) == "ELF" else ptx).append(m.group(3))
        m = re.search(r"No (ELF|PTX) file found to extract from '(k_\w+)'", line)
        if m:
            listing.setdefault(m.group(2), ([], []))
    return listing


def chunked(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


# ---- hand-made fat binaries inside a minimal ELF64 --------------------------------------------------


def entry(kind: int, arch: int, flags: int = 0x11, payload: bytes = b"\xab" * 40, header_size: int = 64,
          raw_size: int = 0) -> bytes:
    """One fat binary entry; ``raw_size``: the uncompressed size a compressed entry declares (header >= 64)."""
    header = bytearray(header_size)
    struct.pack_into("<HHIQ", header, 0, kind, 0x0101, header_size, len(payload))
    struct.pack_into("<II", header, 24, (1 << 16) | 8, arch)
    struct.pack_into("<Q", header, 40, flags)
    if header_size >= 64:
        struct.pack_into("<Q", header, 56, raw_size)
    return bytes(header) + payload


def fatbin(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, len(body)) + body


def elf(sections: list[tuple[str, bytes]], *, prefix: bytes = b"") -> bytes:
    """An ELF64 LE file: header, ``prefix``, each section's data (8-aligned), .shstrtab, section headers."""
    names = b"\0" + b"".join(n.encode() + b"\0" for n, _ in sections) + b".shstrtab\0"
    out = bytearray(64) + prefix
    placed = []
    for name, data in sections:
        out += b"\0" * (-len(out) % 8)
        placed.append((name, len(out), len(data)))
        out += data
    strtab_off = len(out)
    out += names
    out += b"\0" * (-len(out) % 8)
    shoff = len(out)
    headers = [bytes(64)]
    pos = 1
    for name, offset, size in placed:
        headers.append(struct.pack("<IIQQQQIIQQ", pos, 1, 2, 0, offset, size, 0, 0, 8, 0))
        pos += len(name) + 1
    headers.append(struct.pack("<IIQQQQIIQQ", pos, 3, 0, 0, strtab_off, len(names), 0, 0, 1, 0))
    out += b"".join(headers)
    struct.pack_into("<4sBBBB", out, 0, b"\x7fELF", 2, 1, 1, 0)
    struct.pack_into("<HHIQQQIHHHHHH", out, 16, 3, 62, 1, 0, 0, shoff, 0, 64, 56, 0, 64, len(headers),
                     len(headers) - 1)
    return bytes(out)


def both_ways(data: bytes, chunk: int = 4096):
    """The random-access and the streaming reading of ``data``; they must agree."""
    random = list_device_code(data)
    stream = scan_stream(chunked(data, chunk), len(data), "stream")
    assert stream.images == random.images
    assert stream.groups == random.groups  # the same fat binaries, at the same offsets, same kernels
    return random


# ---- the recorded H200 fixtures ----------------------------------------------------------------------


@pytest.mark.parametrize("name", BINARIES)
def test_fixture_matches_recorded_cuobjdump(name):
    expected = recorded_listing()[name]
    code = list_device_code(FIXTURES / name)
    assert code.cuobjdump_listing() == expected
    assert code.section == ".nv_fatbin"


@pytest.mark.parametrize("name", BINARIES)
@pytest.mark.parametrize("chunk", [1 << 20, 4093, 64])
def test_fixture_streamed_equals_random_access(name, chunk):
    data = (FIXTURES / name).read_bytes()
    streamed, random = scan_stream(chunked(data, chunk), len(data), name), list_device_code(data)
    assert streamed.images == random.images
    assert streamed.groups == random.groups
    assert any(g.kernels for g in random.groups) or not random.sass  # a cubin's kernels are read


def test_fixture_sets():
    code = list_device_code(FIXTURES / "k_sm_100_120_ptx120")
    assert code.sass == {"sm_100", "sm_120"} and code.ptx == {"compute_120"}
    assert list_device_code(FIXTURES / "k_sm_90a").sass == {"sm_90a"}
    ptx80 = list_device_code(FIXTURES / "k_ptx80")
    assert ptx80.sass == set() and ptx80.ptx == {"compute_80"}
    assert ptx80.images[0].compression == "zstd"  # nvcc 13 compresses PTX by default


def test_file_object_and_path_agree():
    path = FIXTURES / "k_sm_120"
    with open(path, "rb") as fp:
        assert list_device_code(fp).images == list_device_code(path).images


# ---- variants, compression, sections -----------------------------------------------------------------


def test_variant_and_compression_flags():
    blob = fatbin(entry(2, 90, 0x11 | FLAG_ARCH_SPECIFIC), entry(2, 100, 0x11 | FLAG_FAMILY | FLAG_ZSTD),
                  entry(1, 120, 0x11 | FLAG_LZ4, header_size=80), entry(1, 100, 0x11 | FLAG_FAMILY, header_size=80),
                  entry(2, 120, 0x1000011, header_size=112))
    code = both_ways(elf([(".nv_fatbin", blob)]))
    assert [i.arch for i in code.images] == ["sm_90a", "sm_100f", "compute_120", "compute_100f", "sm_120"]
    assert [i.compression for i in code.images] == ["", "zstd", "lz4", "", ""]
    assert code.sass == {"sm_90a", "sm_100f", "sm_120"} and code.ptx == {"compute_120", "compute_100f"}
    # cuobjdump names a family cubin after its ELF header, which has no `f`
    assert code.cuobjdump_listing() == (["sm_90a", "sm_100", "sm_120"], ["sm_120", "sm_100f"])


def test_several_fatbins_with_padding():
    one = fatbin(entry(2, 80, payload=b"x" * 13))  # odd size: the next one starts after padding
    two = fatbin(entry(2, 86), entry(1, 80, header_size=80))
    section = one + b"\0" * (-len(one) % 8) + two
    code = both_ways(elf([(".nv_fatbin", section)]))
    assert [i.arch for i in code.images] == ["sm_80", "sm_86", "compute_80"]


def test_executable_fatbin_wins_over_relocatable():
    """As cuobjdump: .nv_fatbin when there is one, else __nv_relfatbin (an -rdc object)."""
    exe, rel = fatbin(entry(2, 89)), fatbin(entry(2, 75), entry(1, 75, header_size=80))
    assert both_ways(elf([(".nv_fatbin", exe), ("__nv_relfatbin", rel)])).sass == {"sm_89"}
    code = both_ways(elf([("__nv_relfatbin", rel)]))
    assert code.sass == {"sm_75"} and code.section == "__nv_relfatbin"


def test_fatbin_outside_its_section_is_not_device_code():
    """A fat binary embedded in .rodata is data to cuobjdump (and to the CUDA runtime's registration)."""
    data = elf([(".rodata", fatbin(entry(2, 89))), (".text", b"\x90" * 100)])
    code = both_ways(data)
    assert not code.has_device_code


def test_elf_without_sections_or_fatbin():
    assert not both_ways(elf([(".text", b"\xc3" * 64)])).has_device_code


def test_raw_fatbin_file():
    code = both_ways(fatbin(entry(2, 90), entry(1, 90, header_size=80)))
    assert not code.is_elf and code.sass == {"sm_90"} and code.ptx == {"compute_90"}


def test_magic_in_host_code_before_the_section_is_ignored():
    """Stream mode finds fat binaries by magic; a stray magic elsewhere must not derail it."""
    stray = struct.pack("<I", FATBIN_MAGIC) + b"\x01\x00\x10\x00" + b"\xff" * 200
    data = elf([(".text", stray), (".nv_fatbin", fatbin(entry(2, 120)))], prefix=stray)
    assert both_ways(data, chunk=7).sass == {"sm_120"}


# ---- user errors and hostile input -------------------------------------------------------------------


def test_not_a_binary_is_one_line_forge_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(NotDeviceBinary) as info:
        list_device_code(path)
    assert isinstance(info.value, ForgeError) and "\n" not in str(info.value)
    assert "not an ELF file" in str(info.value)


def test_missing_file_is_forge_error(tmp_path):
    with pytest.raises(ForgeError, match="does not exist"):
        list_device_code(tmp_path / "nope.so")


def test_fat_size_past_the_section_is_refused():
    blob = bytearray(fatbin(entry(2, 90)))
    struct.pack_into("<Q", blob, 8, 1 << 60)  # claims an exabyte
    data = elf([(".nv_fatbin", bytes(blob))])
    with pytest.raises(BinaryFormatError, match="truncated|corrupt"):
        list_device_code(data)
    with pytest.raises(BinaryFormatError):
        scan_stream(chunked(data, 1000), len(data), "x")


def test_entry_payload_past_the_fatbin_is_refused():
    blob = bytearray(fatbin(entry(2, 90)))
    struct.pack_into("<Q", blob, 16 + 8, 1 << 40)
    with pytest.raises(BinaryFormatError, match="corrupt fat binary entry"):
        list_device_code(elf([(".nv_fatbin", bytes(blob))]))


def test_section_headers_past_the_end_are_refused():
    data = bytearray(elf([(".nv_fatbin", fatbin(entry(2, 90)))]))
    struct.pack_into("<Q", data, 40, len(data) * 10)
    with pytest.raises(BinaryFormatError, match="truncated"):
        list_device_code(bytes(data))


def test_memory_stays_bounded_on_a_lying_stream():
    """A stream that says it is 1 GiB but carries garbage: chunks are dropped as they pass."""
    head = bytearray(64)
    struct.pack_into("<4sBBB", head, 0, b"\x7fELF", 2, 1, 1)
    struct.pack_into("<Q", head, 40, 1 << 29)  # section headers "at 512 MiB"
    struct.pack_into("<HHH", head, 58, 64, 10, 9)

    def endless():
        yield bytes(head)
        for _ in range(64):
            yield b"\x5a" * (1 << 20)

    tracemalloc.start()
    try:
        with pytest.raises(BinaryFormatError):
            scan_stream(endless(), 1 << 30, "lying")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


# Truncation and random bytes: tests/unit/test_mutants_fatbin.py checks what each reading returns.


SEED = elf([(".nv_fatbin", fatbin(entry(2, 90, 0x11 | FLAG_ARCH_SPECIFIC), entry(1, 80, header_size=80))),
            (".text", b"\x90" * 32)])


@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), min_size=1, max_size=12),
       st.integers(0, len(SEED)))
def test_fuzz_mutated_elf(flips, cut):
    data = bytearray(SEED)
    for at, value in flips:
        data[at] = value
    data = bytes(data[:cut] if cut else data)
    results = []
    for scan in (lambda d: list_device_code(d), lambda d: scan_stream(chunked(d, 50), len(d), "fuzz")):
        try:
            results.append(scan(data).images)
        except BinaryFormatError:
            results.append(None)
    # When both readings succeed they agree (one may refuse what the other reads: streaming is stricter).
    if None not in results:
        assert results[0] == results[1]


# test_fatbin_formats.py streams a small file 1, 2 and 3 bytes at a time (the magic split over up to four
# chunks); this library at 2 bytes a chunk took 4 s a run under mutmut, for no case the small file misses.
@pytest.mark.parametrize("chunk", [7, 4096, 1 << 20])
def test_recorded_partial_library_groups_streamed_and_random(chunk):
    data = (FIXTURES.parent / "gpu_tu_partial" / "libab.so").read_bytes()
    random = list_device_code(data)
    assert [g.kernels for g in random.groups] == [(), ("_Z2kaPi",), ("_Z2kbPi",)]
    assert scan_stream(chunked(data, chunk), len(data), "libab.so").groups == random.groups


def test_lz4_block_decoder_round_trips_a_hand_made_block():
    from vllm_forge.audit.fatbin import lz4_block_decompress

    # literals "abcd", then a match of 8 at offset 4 (overlapping: repeats "abcd"), then literals "xyz"
    block = bytes([0x44]) + b"abcd" + struct.pack("<H", 4) + bytes([0x30]) + b"xyz"
    assert lz4_block_decompress(block, 15) == b"abcdabcdabcdxyz"
    assert lz4_block_decompress(block, 14) is None  # more than it says: refused
    assert lz4_block_decompress(bytes([0x10]) + b"a" + struct.pack("<H", 9), 10) is None  # offset before start


def test_kernel_names_of_a_compressed_cubin():
    from vllm_forge.audit.fatbin import FLAG_LZ4

    code = list_device_code(FIXTURES / "k_sm_90")
    assert [g.kernels for g in code.groups] == [(), ("_Z3addPf",)]
    assert not any(i.compression for i in code.images)
    assert FLAG_LZ4 == 0x2000
