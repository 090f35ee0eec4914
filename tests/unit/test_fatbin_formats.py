"""vllm_forge/audit/fatbin.py on the ELF shapes and edge values real files reach but the h200x2 fixtures do not:
32-bit and big-endian ELF, ELF's escapes past 0xff00 sections, every bound at its exact value, the LZ4
decoder and the cubin symbol table (issue 22: these branches had no test that could tell them wrong).

Every case is read both ways (random access and streaming in small chunks) where both apply, so a
bound that only one reader checks shows up as a disagreement.
"""

from __future__ import annotations

import io
import struct

import pytest
from test_fatbin import entry, fatbin  # the builders of the recorded-fixture tests

from vllm_forge.audit import fatbin as fb
from vllm_forge.audit.fatbin import (
    BinaryFormatError,
    cubin_kernels,
    list_device_code,
    lz4_block_decompress,
    scan_stream,
)
from vllm_forge.core.errors import ForgeError


def chunked(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def elf(sections: list[tuple[str, bytes]], *, is64: bool = True, endian: str = "<", escape: str = "",
        strtab_type: int = 3, shstrndx: int | None = None) -> bytes:
    """An ELF file (class and byte order as asked): header, each section's data, .shstrtab, section headers.

    ``escape``: "shnum" puts the section count in section 0's size (e_shnum 0), "shstrndx" puts the
    names' index in section 0's link (e_shstrndx 0xffff), "both" does both, as linkers do past 0xff00.
    """
    ehsize, shsize = (64, 64) if is64 else (52, 40)
    names = b"\0" + b"".join(n.encode() + b"\0" for n, _ in sections) + b".shstrtab\0"
    out = bytearray(ehsize)
    placed = []
    for name, data in sections:
        out += b"\0" * (-len(out) % 8)
        placed.append((name, len(out), len(data)))
        out += data
    strtab_off = len(out)
    out += names
    out += b"\0" * (-len(out) % 8)
    shoff = len(out)
    count = len(placed) + 2
    strndx = count - 1 if shstrndx is None else shstrndx

    def shdr(name, stype, offset, size, link=0):
        if is64:
            return struct.pack(endian + "IIQQQQIIQQ", name, stype, 0, 0, offset, size, link, 0, 1, 0)
        return struct.pack(endian + "IIIIIIIIII", name, stype, 0, 0, offset, size, link, 0, 1, 0)

    zero_size = count if escape in ("shnum", "both") else 0
    zero_link = strndx if escape in ("shstrndx", "both") else 0
    headers = [shdr(0, 0, 0, zero_size, zero_link)]
    pos = 1
    for name, offset, size in placed:
        headers.append(shdr(pos, 1, offset, size))
        pos += len(name) + 1
    headers.append(shdr(pos, strtab_type, strtab_off, len(names)))
    out += b"".join(headers)
    e_shnum = 0 if escape in ("shnum", "both") else count
    e_shstrndx = 0xFFFF if escape in ("shstrndx", "both") else strndx
    struct.pack_into("4sBBBB", out, 0, b"\x7fELF", 2 if is64 else 1, 1 if endian == "<" else 2, 1, 0)
    if is64:
        struct.pack_into(endian + "HHIQQQIHHHHHH", out, 16, 3, 62, 1, 0, 0, shoff, 0, ehsize, 56, 0, shsize,
                         e_shnum, e_shstrndx)
    else:
        struct.pack_into(endian + "HHIIIIIHHHHHH", out, 16, 3, 3, 1, 0, 0, shoff, 0, ehsize, 32, 0, shsize,
                         e_shnum, e_shstrndx)
    return bytes(out)


def both(data: bytes, chunk: int = 13):
    """The random-access reading; the streaming one must give the same groups."""
    random = list_device_code(data)
    stream = scan_stream(chunked(data, chunk), len(data), "stream")
    assert stream.groups == random.groups and stream.section == random.section
    return random


def refused_both(data: bytes, match: str, chunk: int = 13) -> None:
    with pytest.raises(BinaryFormatError, match=match):
        list_device_code(data)
    with pytest.raises(BinaryFormatError):
        scan_stream(chunked(data, chunk), len(data), "stream")


def cubin(kernels: list[str], others: list[tuple[str, int, int]] = (), *, entsize: int = 24,
          symtab: bool = True) -> bytes:
    """A little ELF64 cubin: a symbol table of ``kernels`` (FUNC + CUDA entry) and ``others`` (name, info, other)."""
    symbols = [(k, fb.STT_FUNC | 0x10, fb.STO_CUDA_ENTRY) for k in kernels] + list(others)
    strtab = b"\0" + b"".join(n.encode() + b"\0" for n, _, _ in symbols)
    syms = bytes(24)  # symbol 0 is null
    pos = 1
    for name, info, other in symbols:
        syms += struct.pack("<IBBHQQ", pos, info, other, 0, 0, 0)
        pos += len(name) + 1
    out = bytearray(64)
    str_off = len(out)
    out += strtab + b"\0" * (-len(strtab) % 8)
    sym_off = len(out)
    out += syms
    shoff = len(out)
    headers = [bytes(64), struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, str_off, len(strtab), 0, 0, 1, 0),
               struct.pack("<IIQQQQIIQQ", 0, 2 if symtab else 1, 0, 0, sym_off, len(syms), 1, 0, 8, entsize)]
    out += b"".join(headers)
    struct.pack_into("4sBBBB", out, 0, b"\x7fELF", 2, 1, 1, 0)
    struct.pack_into("<Q", out, 40, shoff)
    struct.pack_into("<HH", out, 58, 64, len(headers))
    return bytes(out)


def lz4_literals(data: bytes) -> bytes:
    """One LZ4 block holding ``data`` as literals only (length extension bytes when 15 or more)."""
    n = len(data)
    if n < 15:
        return bytes([n << 4]) + data
    rest, ext = n - 15, bytearray()
    while rest >= 255:
        ext.append(255)
        rest -= 255
    ext.append(rest)
    return bytes([0xF0]) + bytes(ext) + data


ONE = fatbin(entry(2, 90), entry(1, 90, header_size=80))


# ---- ELF classes, byte orders and escapes -------------------------------------------------------------


@pytest.mark.parametrize("is64", [True, False], ids=["elf64", "elf32"])
@pytest.mark.parametrize("endian", ["<", ">"], ids=["le", "be"])
@pytest.mark.parametrize("escape", ["", "shnum", "shstrndx", "both"])
def test_every_elf_class_byte_order_and_escape_finds_the_fat_binary(is64, endian, escape):
    code = both(elf([(".text", b"\x90" * 24), (".nv_fatbin", ONE)], is64=is64, endian=endian, escape=escape))
    assert [i.arch for i in code.images] == ["sm_90", "compute_90"]
    assert code.section == ".nv_fatbin" and code.is_elf


@pytest.mark.parametrize("is64", [True, False], ids=["elf64", "elf32"])
def test_section_header_size_other_than_the_specs_is_refused(is64):
    data = bytearray(elf([(".nv_fatbin", ONE)], is64=is64))
    struct.pack_into("<H", data, 58 if is64 else 46, 64 if not is64 else 40)  # the other class's size
    refused_both(bytes(data), "invalid ELF section header size")


@pytest.mark.parametrize("is64", [True, False], ids=["elf64", "elf32"])
def test_elf_header_cut_short_is_truncated(is64):
    data = elf([(".nv_fatbin", ONE)], is64=is64)
    refused_both(data[:63 if is64 else 51], "ELF header is incomplete")


def test_elf32_header_is_complete_at_52_bytes():
    """A 52-byte ELF32 header with no section headers is a whole file: no device code, not truncated."""
    head = bytearray(52)
    struct.pack_into("4sBBBB", head, 0, b"\x7fELF", 1, 1, 1, 0)
    code = list_device_code(bytes(head))
    assert code.is_elf and not code.has_device_code and code.groups == []


def test_bad_elf_class_or_byte_order_is_refused():
    data = bytearray(elf([(".nv_fatbin", ONE)]))
    for at, value in ((4, 3), (4, 0), (5, 0), (5, 3)):
        bad = bytearray(data)
        bad[at] = value
        refused_both(bytes(bad), r"invalid ELF header \(class")


def test_section_headers_exactly_at_the_end_are_read_and_one_byte_past_is_refused():
    data = elf([(".nv_fatbin", ONE)])
    assert both(data).sass == {"sm_90"}  # the last header ends at the file's last byte
    refused_both(data[:-1], "truncated")
    shoff, = struct.unpack_from("<Q", data, 40)
    moved = bytearray(data)
    struct.pack_into("<Q", moved, 40, len(data) - 63)  # one header would end one byte past the end
    refused_both(bytes(moved), "section headers lie past its end")
    assert shoff == len(data) - 3 * 64


def test_too_many_sections_are_refused(monkeypatch):
    data = elf([(".a", b"x"), (".nv_fatbin", ONE)])  # four section headers
    monkeypatch.setattr(fb, "MAX_SECTIONS", 4)
    assert both(data).sass == {"sm_90"}
    monkeypatch.setattr(fb, "MAX_SECTIONS", 3)
    with pytest.raises(BinaryFormatError, match="4 section headers"):
        list_device_code(data)


def test_names_index_out_of_range_or_nobits_reads_no_section():
    """No section names (index 0, past the table, or a NOBITS table): nothing is a .nv_fatbin."""
    sections = [(".nv_fatbin", ONE)]
    for shstrndx in (0, 3, 9):
        assert not both(elf(sections, shstrndx=shstrndx)).has_device_code, shstrndx
    assert not both(elf(sections, strtab_type=fb.SHT_NOBITS)).has_device_code
    assert both(elf(sections, shstrndx=2)).sass == {"sm_90"}


def test_a_name_offset_past_the_names_is_no_name():
    data = bytearray(elf([(".nv_fatbin", ONE)]))
    shoff, = struct.unpack_from("<Q", data, 40)
    struct.pack_into("<I", data, shoff + 64, 10_000)  # section 1's name offset
    assert not both(bytes(data)).has_device_code


def test_section_name_stops_at_its_nul_or_at_the_table_end():
    assert fb._section_name(b"\0.nv_fatbin\0rest", 1) == ".nv_fatbin"
    assert fb._section_name(b"\0.nv_fatbin", 1) == ".nv_fatbin"
    assert fb._section_name(b"\0.nv", 4) == ""
    assert fb._section_name(b"\0.nv", 3) == "v"


def test_empty_and_nobits_fatbin_sections_are_skipped():
    empty = elf([(".nv_fatbin", b""), ("__nv_relfatbin", fatbin(entry(2, 75)))])
    assert both(empty).sass == {"sm_75"} and both(empty).section == "__nv_relfatbin"


def test_fatbin_section_past_the_end_of_the_file_is_refused():
    data = bytearray(elf([(".nv_fatbin", ONE)]))
    shoff, = struct.unpack_from("<Q", data, 40)
    struct.pack_into("<Q", data, shoff + 64 + 32, len(data))  # section 1's size: ends past the file
    with pytest.raises(BinaryFormatError, match="its .nv_fatbin section ends at byte"):
        list_device_code(bytes(data))


def test_section_ending_exactly_at_the_file_end_is_read():
    hdr = fb._ElfHeader(True, "<", 0, 0, 64, 1, 0)
    section = fb._Section(1, 1, 100, 50, 0)
    assert fb._fatbin_sections([section], [".nv_fatbin"], 150, "f") == [(".nv_fatbin", section)]
    with pytest.raises(BinaryFormatError):
        fb._fatbin_sections([section], [".nv_fatbin"], 149, "f")
    assert hdr.table_size == 64


# ---- fat binary and entry headers: each bound at its value ---------------------------------------------


@pytest.mark.parametrize("header_size, ok", [(47, False), (48, True), (4096, True), (4097, False)])
def test_entry_header_size_bounds(header_size, ok):
    data = elf([(".nv_fatbin", fatbin(entry(2, 90, header_size=max(header_size, 48))))])
    blob = bytearray(data)
    at = data.index(struct.pack("<I", fb.FATBIN_MAGIC)) + 16
    struct.pack_into("<I", blob, at + 4, header_size)
    if ok:
        assert both(bytes(blob)).sass == {"sm_90"}
    else:
        refused_both(bytes(blob), "corrupt fat binary entry")


def test_payload_exactly_filling_the_fat_binary_is_read_and_one_more_byte_is_refused():
    blob = bytearray(fatbin(entry(2, 90, payload=b"z" * 40)))
    assert both(elf([(".nv_fatbin", bytes(blob))])).sass == {"sm_90"}
    struct.pack_into("<Q", blob, 16 + 8, 41)
    refused_both(elf([(".nv_fatbin", bytes(blob))]), "corrupt fat binary entry")


@pytest.mark.parametrize("field, value", [("version", 2), ("header", 8), ("header", 4097)])
def test_fat_binary_header_fields_are_checked(field, value):
    blob = bytearray(ONE)
    struct.pack_into("<H", blob, 4 if field == "version" else 6, value)
    with pytest.raises(BinaryFormatError, match="corrupt fat binary header"):
        list_device_code(elf([(".nv_fatbin", bytes(blob))]))


def test_a_longer_fat_binary_header_is_skipped():
    blob = bytearray(struct.pack("<IHHQ", fb.FATBIN_MAGIC, 1, 24, 64 + 40) + bytes(8) + entry(2, 86))
    assert list_device_code(elf([(".nv_fatbin", bytes(blob))])).sass == {"sm_86"}


def test_fat_binary_ending_exactly_at_its_section_end_is_read():
    assert both(elf([(".nv_fatbin", ONE)])).ptx == {"compute_90"}
    blob = bytearray(ONE)
    struct.pack_into("<Q", blob, 8, len(ONE) - 16 + 1)
    refused_both(elf([(".nv_fatbin", bytes(blob))]), "truncated|corrupt|not fat binaries")


def test_entries_of_other_kinds_are_skipped_not_counted():
    code = both(elf([(".nv_fatbin", fatbin(entry(2, 89), entry(4, 90), entry(1, 89, header_size=80)))]))
    assert [i.arch for i in code.images] == ["sm_89", "compute_89"]


def test_code_version_is_major_dot_minor():
    blob = bytearray(fatbin(entry(1, 120, header_size=80)))
    struct.pack_into("<I", blob, 16 + 24, (9 << 16) | 1)
    (image,) = list_device_code(bytes(blob)).images
    assert image.code_version == "9.1" and image.size == 40 and image.kind == "ptx" and image.number == 120


def test_image_count_bound(monkeypatch):
    monkeypatch.setattr(fb, "MAX_IMAGES", 3)
    three = elf([(".nv_fatbin", fatbin(entry(2, 80), entry(2, 86)) + fatbin(entry(2, 89)))])
    assert [i.arch for i in both(three).images] == ["sm_80", "sm_86", "sm_89"]
    four = elf([(".nv_fatbin", fatbin(entry(2, 80), entry(2, 86)) + fatbin(entry(2, 89), entry(2, 90)))])
    with pytest.raises(BinaryFormatError, match="more than 3 device images"):
        list_device_code(four)
    with pytest.raises(BinaryFormatError, match="more than 3 device images"):
        list_device_code(fatbin(entry(2, 80), entry(2, 86), entry(2, 89), entry(2, 90)))


def test_garbage_between_fat_binaries_is_refused_and_zero_padding_is_not():
    padded = ONE + bytes(24) + fatbin(entry(2, 100))
    assert both(elf([(".nv_fatbin", padded)])).sass == {"sm_90", "sm_100"}
    garbage = ONE + b"\x01" + bytes(23) + fatbin(entry(2, 100))
    with pytest.raises(BinaryFormatError, match="unexpected bytes at offset"):
        list_device_code(elf([(".nv_fatbin", garbage)]))
    with pytest.raises(BinaryFormatError, match="not fat binaries"):
        data = elf([(".nv_fatbin", garbage + b"\x01" * 64)])
        scan_stream(chunked(data, 13), len(data), "stream")


def test_trailing_zero_padding_in_a_section_is_fine_both_ways():
    assert both(elf([(".nv_fatbin", ONE + bytes(16))])).sass == {"sm_90"}


def test_stream_allows_padding_of_16_bytes_per_fat_binary_only():
    data = elf([(".nv_fatbin", ONE + bytes(32))])  # 32 bytes uncovered, one fat binary: 2 x 16 allowed
    assert scan_stream(chunked(data, 13), len(data), "s").sass == {"sm_90"}
    data = elf([(".nv_fatbin", ONE + bytes(33))])
    with pytest.raises(BinaryFormatError, match="33 bytes in its .nv_fatbin section that are not fat binaries"):
        scan_stream(chunked(data, 13), len(data), "s")


def test_plausible_fatbin_checks_each_field():
    good = fatbin(entry(2, 90))
    assert fb._plausible_fatbin(good[:64], len(good))
    assert not fb._plausible_fatbin(good[:64], len(good) - 1)  # claims more than is left
    assert fb._plausible_fatbin(struct.pack("<IHHQ", fb.FATBIN_MAGIC, 1, 16, 0), 16)  # empty: a header only
    assert not fb._plausible_fatbin(good[:15], len(good))
    for at, fmt, value in ((4, "<H", 2), (6, "<H", 24), (16, "<H", 3), (18, "<H", 0x0102), (20, "<I", 47),
                           (20, "<I", 4097), (44, "<I", 9), (44, "<I", 1000), (24, "<Q", 41), (24, "<Q", 1 << 40)):
        bad = bytearray(good)
        struct.pack_into(fmt, bad, at, value)
        assert not fb._plausible_fatbin(bytes(bad[:64]), len(good)), (at, value)
    for arch in (10, 999):
        ok = fatbin(entry(2, arch))
        assert fb._plausible_fatbin(ok[:64], len(ok)), arch
    tiny = struct.pack("<IHHQ", fb.FATBIN_MAGIC, 1, 16, 47) + bytes(47)
    assert not fb._plausible_fatbin(tiny[:64], len(tiny))
    assert fb._plausible_fatbin(struct.pack("<IHHQ", fb.FATBIN_MAGIC, 1, 16, 48) + entry(2, 90, payload=b"",
                                                                                          header_size=48), 64)


def test_an_empty_fat_binary_in_a_stream_is_read():
    empty = struct.pack("<IHHQ", fb.FATBIN_MAGIC, 1, 16, 0)
    code = both(elf([(".nv_fatbin", empty + fatbin(entry(2, 89)))]))
    assert [len(g.images) for g in code.groups] == [0, 1] and code.sass == {"sm_89"}


# ---- kernel names: which cubins are read ---------------------------------------------------------------


def test_kernel_names_come_from_the_symbol_table_entries_only():
    body = cubin(["_Z1kPf", "_Z1jPi"], others=[("helper", fb.STT_FUNC, 0), ("data", 1, fb.STO_CUDA_ENTRY)])
    assert cubin_kernels(body) == ("_Z1kPf", "_Z1jPi")
    assert cubin_kernels(cubin([])) == ()
    assert cubin_kernels(cubin(["k"], symtab=False)) is None  # no symbol table: unknown, not "no kernel"
    assert cubin_kernels(cubin(["k"], entsize=16)) is None
    assert cubin_kernels(body[:63]) is None and cubin_kernels(b"\x7fELF" + bytes(60)) is None
    for at, value in ((0, 0x7E), (4, 1), (5, 2)):
        bad = bytearray(body)
        bad[at] = value
        assert cubin_kernels(bytes(bad)) is None, at
    bad = bytearray(body)
    struct.pack_into("<H", bad, 58, 40)
    assert cubin_kernels(bytes(bad)) is None
    bad = bytearray(body)
    struct.pack_into("<Q", bad, 40, len(body) - 3 * 64 + 1)  # the table would end one byte past the end
    assert cubin_kernels(bytes(bad)) is None


def test_a_symbol_table_past_the_end_or_linking_nowhere_is_unknown():
    body = bytearray(cubin(["k"]))
    shoff, = struct.unpack_from("<Q", body, 40)
    symtab = shoff + 2 * 64
    exact = bytearray(body)
    assert cubin_kernels(bytes(exact)) == ("k",)
    struct.pack_into("<I", body, symtab + 40, 3)  # link: past the 3 sections
    assert cubin_kernels(bytes(body)) is None
    body = bytearray(cubin(["k"]))
    size, = struct.unpack_from("<Q", body, symtab + 32)
    struct.pack_into("<Q", body, symtab + 32, size + 24 * 100)
    assert cubin_kernels(bytes(body)) is None


@pytest.mark.parametrize("flags, payload_size, read", [
    (0x11, fb.MAX_CUBIN_READ, True), (0x11, fb.MAX_CUBIN_READ + 1, False),
    (0x11 | fb.FLAG_ZSTD, 2000, False),
])
def test_which_cubins_are_read_for_kernel_names(flags, payload_size, read):
    body = cubin(["_Z4kernv"])
    payload = body + bytes(payload_size - len(body))
    code = both(elf([(".nv_fatbin", fatbin(entry(2, 90, flags=flags, payload=payload)))]), chunk=1 << 16)
    assert code.groups[0].kernels == (("_Z4kernv",) if read else None)


@pytest.mark.parametrize("extra, read", [(0, True), (1, False)])
def test_lz4_cubins_are_read_up_to_16_kib_stored(extra, read):
    body = cubin(["_Z2lzv"])
    raw = next(n for n in range(fb.MAX_LZ4_CUBIN_READ - 100, fb.MAX_LZ4_CUBIN_READ)
               if len(lz4_literals(bytes(n))) == fb.MAX_LZ4_CUBIN_READ + extra)
    block = lz4_literals(body + bytes(raw - len(body)))
    assert len(block) == fb.MAX_LZ4_CUBIN_READ + extra
    data = elf([(".nv_fatbin", fatbin(entry(2, 90, flags=0x11 | fb.FLAG_LZ4, payload=block, raw_size=raw)))])
    assert both(data).groups[0].kernels == (("_Z2lzv",) if read else None)


def test_lz4_cubin_needs_its_uncompressed_size():
    body = cubin(["_Z2lzv"])
    block = lz4_literals(body)
    for raw, kernels in ((len(body), ("_Z2lzv",)), (0, None), (len(body) + 1, None), (fb.MAX_CUBIN_READ + 1, None)):
        data = fatbin(entry(2, 90, flags=0x11 | fb.FLAG_LZ4, payload=block, raw_size=raw))
        assert list_device_code(data).groups[0].kernels == kernels, raw
    # A 48-byte entry header has no uncompressed size: the cubin is not decoded.
    short = fatbin(entry(2, 90, flags=0x11 | fb.FLAG_LZ4, payload=block, header_size=48))
    assert list_device_code(short).groups[0].kernels is None


def test_only_the_first_readable_cubin_of_a_group_names_its_kernels():
    first, second = cubin(["_Z1av"]), cubin(["_Z1bv"])
    code = both(elf([(".nv_fatbin", fatbin(entry(1, 90, header_size=80), entry(2, 90, payload=first),
                                            entry(2, 100, payload=second)))]))
    assert code.groups[0].kernels == ("_Z1av",)
    unreadable = fatbin(entry(2, 90, payload=b"not a cubin" * 4), entry(2, 100, payload=second))
    assert list_device_code(unreadable).groups[0].kernels == ("_Z1bv",)


def test_a_ptx_only_group_has_unknown_kernels_and_is_not_kernel_less():
    (group,) = list_device_code(fatbin(entry(1, 90, header_size=80))).groups
    assert group.kernels is None and not group.kernel_less
    (group,) = list_device_code(fatbin(entry(2, 90, payload=cubin([])))).groups
    assert group.kernels == () and group.kernel_less
    (group,) = list_device_code(fatbin(entry(2, 90, payload=cubin([])), entry(1, 90, header_size=80))).groups
    assert not group.kernel_less  # its PTX may hold kernels


# ---- LZ4 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [14, 15, 16, 269, 270, 271, 600])
def test_lz4_literal_lengths_across_the_extension_bytes(n):
    data = bytes(range(256)) * 3
    assert lz4_block_decompress(lz4_literals(data[:n]), n) == data[:n]


@pytest.mark.parametrize("match", [4, 18, 19, 20, 273, 274, 500])
def test_lz4_match_lengths_across_the_extension_bytes(match):
    code = match - 4
    token = 0x40 | min(code, 15)
    ext = bytearray()
    if code >= 15:
        rest = code - 15
        while rest >= 255:
            ext.append(255)
            rest -= 255
        ext.append(rest)
    block = bytes([token]) + b"wxyz" + struct.pack("<H", 4) + bytes(ext) + bytes([0x10]) + b"!"
    assert lz4_block_decompress(block, 4 + match + 1) == (b"wxyz" * 200)[:4 + match] + b"!"


def test_lz4_non_overlapping_match_copies_from_further_back():
    block = bytes([0x84]) + b"abcdefgh" + struct.pack("<H", 8) + bytes([0x00])
    assert lz4_block_decompress(block, 16) == b"abcdefghabcdefgh"
    block = bytes([0x84]) + b"abcdefgh" + struct.pack("<H", 6) + bytes([0x10]) + b"."
    assert lz4_block_decompress(block, 17) == b"abcdefghcdefghcd."


def test_lz4_refuses_what_is_not_a_block_of_that_size():
    assert lz4_block_decompress(lz4_literals(b"abc"), 3) == b"abc"
    assert lz4_block_decompress(lz4_literals(b"abc"), 4) is None  # shorter than promised
    assert lz4_block_decompress(lz4_literals(b"abc"), 2) is None  # longer than promised
    assert lz4_block_decompress(bytes([0x40]) + b"abcd" + struct.pack("<H", 0), 8) is None  # offset 0
    assert lz4_block_decompress(bytes([0x40]) + b"abcd" + struct.pack("<H", 5), 8) is None  # before the start
    assert lz4_block_decompress(bytes([0x40]) + b"abcd" + struct.pack("<H", 4), 8) == b"abcdabcd"
    assert lz4_block_decompress(bytes([0x40]) + b"abcd" + struct.pack("<H", 4), 7) is None  # match overflows
    assert lz4_block_decompress(bytes([0x40]) + b"abcd" + b"\x04", 8) is None  # offset cut short
    assert lz4_block_decompress(bytes([0xF0]), 20) is None  # length extension missing
    assert lz4_block_decompress(bytes([0x4F]) + b"abcd" + struct.pack("<H", 4), 40) is None  # match ext missing
    assert lz4_block_decompress(b"", 0) == b""
    # Literals up to the promised size end the block even when bytes follow.
    assert lz4_block_decompress(bytes([0x30]) + b"abc" + b"\x99\x99", 3) == b"abc"


# ---- the streaming reader -------------------------------------------------------------------------------


def test_stream_skips_empty_chunks_and_stops_at_its_size():
    data = elf([(".nv_fatbin", ONE)])

    def with_empties():
        for piece in chunked(data, 11):
            yield b""
            yield piece
        yield b"\xff" * 4096  # more than it said: never read

    code = scan_stream(with_empties(), len(data), "s")
    assert code.sass == {"sm_90"}
    longer = scan_stream(iter([data + b"\xff" * 100]), len(data), "s")
    assert longer.groups == code.groups


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_byte_by_byte_streams_read_what_random_access_reads(chunk):
    second = fatbin(entry(2, 120, payload=cubin(["_Z1kv"])))
    data = elf([(".text", b"\x90" * 5), (".nv_fatbin", ONE + bytes(8) + second)])
    code = both(data, chunk=chunk)
    assert [g.kernels for g in code.groups] == [None, ("_Z1kv",)] and code.sass == {"sm_90", "sm_120"}


def test_chunk_reader_capture_keeps_only_the_range_asked():
    r = fb._ChunkReader(iter([b"0123456789", b"abcdefghij", b"ABCDEFGHIJ"]), 30)
    assert r.peek(3) == b"012"
    r.set_capture(5, 25)
    r.drain()
    assert bytes(r.captured) == b"56789abcdefghijABCDE" and r.capture_start == 5
    r = fb._ChunkReader(iter([b"0123456789", b"abcdefghij"]), 20)
    r.skip(12)
    r.set_capture(3, 15)  # what streamed past is gone: the capture starts where the buffer does
    r.drain()
    assert r.capture_start == 10 and bytes(r.captured) == b"abcde"


def test_chunk_reader_read_peek_skip_and_find_across_chunks():
    parts = [b"ab", b"cdMA", b"GI", b"Cxyz"]
    r = fb._ChunkReader(iter(parts), 14)
    assert r.read(3) == b"abc" and r.tell() == 3
    assert r.find(b"MAGIC") == 4 and r.tell() == 4
    assert r.peek(6) == b"MAGICx" and r.read(7) == b"MAGICxy"
    assert r.skip(5) == 1 and r.read(1) == b"" and r.tell() == 12  # it said 14 but carried 12
    r = fb._ChunkReader(iter([b"xxxxMA", b"GICyy", b"MAGIC"]), 16)
    assert r.find(b"MAGIC") == 4 and r.skip(1) == 1
    assert r.find(b"MAGIC") == 11 and r.read(5) == b"MAGIC" and r.find(b"MAGIC") is None


def test_random_reader_is_bounded_by_its_size():
    data = b"0123456789"
    r = fb._RandomReader(lambda off, n: data[off:off + n], 8)
    assert r.read(5) == b"01234" and r.peek(10) == b"567" and r.skip(10) == 3 and r.read(1) == b""
    assert r.tell() == 8 and r.peek(-1) == b""


# ---- entry points ---------------------------------------------------------------------------------------


def test_a_directory_or_unreadable_path_is_one_forge_error(tmp_path):
    with pytest.raises(ForgeError, match="is a directory"):
        list_device_code(tmp_path)
    target = tmp_path / "lib.so"
    target.write_bytes(ONE)
    assert list_device_code(target, where="named").sass == {"sm_90"}
    with open(target, "rb") as fp:
        assert list_device_code(fp).sass == {"sm_90"}
    with pytest.raises(BinaryFormatError, match="^named "):
        list_device_code(b"\x7fELF", where="named")


def test_looks_like_binary():
    assert fb.looks_like_binary(b"\x7fELF\x02") and fb.looks_like_binary(ONE[:8])
    assert not fb.looks_like_binary(b"PK\x03\x04") and not fb.looks_like_binary(b"\x7fEL")


def test_main_prints_each_file(tmp_path, capsys):
    lib = tmp_path / "lib.so"
    lib.write_bytes(elf([(".nv_fatbin", fatbin(entry(2, 90), entry(1, 90, flags=0x11 | fb.FLAG_LZ4,
                                                                      header_size=80)))]))
    text = tmp_path / "host.so"
    text.write_bytes(elf([(".text", b"\x90")]))
    assert fb.main([str(text), str(lib), "--images"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{text}: no device code",
        f"{lib}: SASS sm_90; PTX compute_90",
        "  sass sm_90                  40 bytes",
        "  ptx  compute_90             40 bytes, lz4",
    ]
    many = tmp_path / "many.so"
    many.write_bytes(fatbin(entry(2, 90), entry(2, 80), entry(1, 80, header_size=80), entry(1, 90, header_size=80)))
    sass_only = tmp_path / "sass.so"
    sass_only.write_bytes(fatbin(entry(2, 120)))
    fb.main([str(many), str(sass_only)])
    assert capsys.readouterr().out.splitlines() == [f"{many}: SASS sm_80 sm_90; PTX compute_80 compute_90",
                                                    f"{sass_only}: SASS sm_120; PTX -"]
    assert fb.main([str(lib)]) == 0
    assert capsys.readouterr().out == f"{lib}: SASS sm_90; PTX compute_90\n"
    ptx_only = tmp_path / "ptx.so"
    ptx_only.write_bytes(fatbin(entry(1, 80, header_size=80)))
    fb.main([str(ptx_only)])
    assert capsys.readouterr().out == f"{ptx_only}: SASS -; PTX compute_80\n"


# ---- every refusal names the file it is about --------------------------------------------------------------


def _corrupt_inputs() -> dict[str, bytes]:
    good = elf([(".nv_fatbin", ONE)])
    shoff, = struct.unpack_from("<Q", good, 40)
    too_many = bytearray(good)
    struct.pack_into("<H", too_many, 60, 9)  # nine section headers claimed where three fit
    escape = elf([(".nv_fatbin", ONE)], escape="shnum")
    escape_cut = bytearray(escape)
    struct.pack_into("<Q", escape_cut, shoff + 32, 9)  # section 0 (the count past 0xff00) says nine
    past = bytearray(good)
    struct.pack_into("<Q", past, shoff + 64 + 32, len(good))
    entry_bad = bytearray(good)
    entry_bad[good.index(ONE) + 20] = 8  # the first entry's header size: 8 bytes
    return {
        "header": good[:40],
        "table": bytes(too_many),
        "escaped table": bytes(escape_cut),
        "section past the end": bytes(past),
        "entry": bytes(entry_bad),
        "unexpected bytes": elf([(".nv_fatbin", ONE + b"\x01" + bytes(7))]),
    }


@pytest.mark.parametrize("case", list(_corrupt_inputs()))
def test_a_refusal_names_the_file_as_the_caller_named_it(case, tmp_path):
    data = _corrupt_inputs()[case]
    with pytest.raises(BinaryFormatError) as info:
        list_device_code(data, where="wheel/lib/_C.so")
    assert str(info.value).startswith("wheel/lib/_C.so "), str(info.value)
    with pytest.raises(BinaryFormatError) as info:
        list_device_code(data)
    assert str(info.value).startswith("the data "), str(info.value)
    path = tmp_path / "lib.so"
    path.write_bytes(data)
    with pytest.raises(BinaryFormatError) as info:
        list_device_code(path)
    assert str(info.value).startswith(f"{path} "), str(info.value)
    with open(path, "rb") as fp:
        with pytest.raises(BinaryFormatError) as info:
            list_device_code(fp)
    assert str(info.value).startswith(f"{path} "), str(info.value)
    with pytest.raises(BinaryFormatError) as info:
        list_device_code(io.BytesIO(data))
    assert str(info.value).startswith("the file "), str(info.value)
    with pytest.raises(BinaryFormatError) as info:
        list_device_code(io.BytesIO(data), where="member")
    assert str(info.value).startswith("member "), str(info.value)


def test_unexpected_bytes_name_their_offset():
    section = ONE + b"X" + bytes(7)
    data = elf([(".nv_fatbin", section)])
    at = data.index(ONE) + len(ONE)
    with pytest.raises(BinaryFormatError, match=f"unexpected bytes at offset {at} where"):
        list_device_code(data)


def test_a_file_object_is_measured_from_its_end():
    data = elf([(".nv_fatbin", ONE)])
    assert list_device_code(io.BytesIO(data)).sass == {"sm_90"}
    with pytest.raises(BinaryFormatError, match="truncated"):
        list_device_code(io.BytesIO(data[:-1]))


def test_chunk_reader_drain_streams_the_rest_and_keeps_nothing():
    r = fb._ChunkReader(iter([b"abc", b"def", b"gh"]), 8)
    assert r.read(1) == b"a"
    r.drain()
    assert r.tell() == 8 and r.peek(1) == b"" and r.read(3) == b""
    r = fb._ChunkReader(iter([b"abc"]), 3)
    assert r.read(3) == b"abc"
    r.drain()  # nothing left to pull
    assert r.tell() == 3 and r.peek(1) == b""


def test_find_reports_the_first_needle_and_only_a_whole_one():
    assert fb._ChunkReader(iter([b"AB"]), 2).find(b"XXAB") is None
    r = fb._ChunkReader(iter([b"xaa", b"aaaa"]), 7)
    assert r.find(b"aaaa") == 1 and r.read(4) == b"aaaa"
    r = fb._ChunkReader(iter([b"x", b"M", b"A", b"G", b"I", b"C"]), 6)
    assert r.find(b"MAGIC") == 1 and r.read(5) == b"MAGIC"


def test_a_raw_fat_binary_stream_that_ends_early_is_truncated():
    data = ONE + bytes(8) + fatbin(entry(2, 120))
    cut = len(ONE) + 8
    with pytest.raises(BinaryFormatError, match=f"is truncated: it ends at byte {cut} of {len(data)}"):
        scan_stream(chunked(data[:cut], 5), len(data), "s")
    assert scan_stream(chunked(data, 5), len(data), "s").sass == {"sm_90", "sm_120"}


def test_lz4_offsets_use_both_bytes():
    literals = bytes(range(256)) + bytes(range(44))  # 300 distinct-enough bytes
    block = lz4_literals(literals)[:-300]  # the literal run's token and length
    block = bytes([0xF0 | 0]) + block[1:] + literals + struct.pack("<H", 300) + bytes([0x10]) + b"!"
    assert lz4_block_decompress(block, 300 + 4 + 1) == literals + literals[:4] + b"!"


def test_random_reader_peek_of_nothing_is_nothing():
    r = fb._RandomReader(lambda off, n: b"0123456789"[off:off + n], 10)
    r.skip(3)
    assert r.peek(0) == b"" and r.read(0) == b"" and r.tell() == 3 and r.skip(0) == 0


# (8 stray bytes after a fat binary pass a stream as padding: it allows 16 per fat binary.)
@pytest.mark.parametrize("case", [c for c in _corrupt_inputs() if c != "unexpected bytes"])
def test_a_streamed_refusal_names_the_member(case):
    data = _corrupt_inputs()[case]
    with pytest.raises(BinaryFormatError) as info:
        scan_stream(chunked(data, 13), len(data), "wheel.whl/pkg/_C.so")
    assert str(info.value).startswith("wheel.whl/pkg/_C.so "), str(info.value)


def test_a_huge_arch_number_is_kept_as_written():
    (image,) = list_device_code(fatbin(entry(2, 0x80000000))).images
    assert image.number == 0x80000000 and image.arch == "sm_2147483648"
