"""List the device code (SASS cubins and PTX) an ELF file carries, without a CUDA toolkit.

nvcc puts the device code of a host binary into CUDA fat binaries in the ELF section ``.nv_fatbin``
(``__nv_relfatbin`` for relocatable device code, ``-rdc``). A fat binary is a 16-byte header
(magic ``0xBA55ED50``, version, header size, payload size) followed by entries, each a header and
a payload. The entry header says what the payload is without decompressing it:

=======  ====  =====================================================================
offset   size  field
=======  ====  =====================================================================
0        2     kind: 1 = PTX, 2 = ELF cubin (SASS)
4        4     header size (64, 80 for PTX, 96/112 with Blackwell's extra fields)
8        8     payload size (as stored: compressed when the entry is compressed)
24       4     code version: PTX ISA (9.0) or cubin ELF version (1.8)
28       4     arch number: 90 for sm_90 / compute_90
40       8     flags: 0x2000 LZ4-compressed, 0x8000 ZSTD-compressed,
               0x100000 arch-specific (``a``), 0x200000 family (``f``)
56       8     uncompressed size (compressed entries)
=======  ====  =====================================================================

Each fat binary is one translation unit's device code (``FatBinary``, a kernel group: a kernel
runs only if its own group has code for the GPU); the names of its kernels come from the symbol
table of one small cubin in it. Like ``cuobjdump``, only the executable fat binaries
(``.nv_fatbin``) count when the file has them, else the relocatable ones. A file on disk is read
with a few small seeks (section headers, then each entry header, skipping payloads); a stream (a
wheel member being inflated, a tar member of ``docker save``) is read once, front to back, in
bounded chunks. Every size read from a header is checked against the file size (and
``e_shentsize`` against the ELF spec), and a stream keeps at most ``MAX_CAPTURE`` bytes aside, so a
truncated or hostile file ends in ``BinaryFormatError``, never in a traceback or an unbounded read.

Standalone: ``python -m vllm_forge.audit.fatbin FILE...`` prints what each file carries.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vllm_forge.core.errors import ForgeError, run_main

FATBIN_MAGIC = 0xBA55ED50
FATBIN_MAGIC_BYTES = struct.pack("<I", FATBIN_MAGIC)
ELF_MAGIC = b"\x7fELF"

KIND_PTX = 1
KIND_ELF = 2
ENTRY_VERSION = 0x0101

FLAG_LZ4 = 0x2000
FLAG_ZSTD = 0x8000
FLAG_ARCH_SPECIFIC = 0x100000  # the `a` in sm_90a
FLAG_FAMILY = 0x200000  # the `f` in sm_100f

EXECUTABLE_SECTION = ".nv_fatbin"
RELOCATABLE_SECTION = "__nv_relfatbin"

# Bounds that no real file comes near; a header claiming more is corrupt or hostile.
MAX_ENTRY_HEADER = 4096
MAX_SECTIONS = 1 << 18  # linked libraries have tens; ELF's escape allows more, 256 Ki is plenty
MAX_SHSTRTAB = 16 << 20
MAX_IMAGES = 200_000
STREAM_CHUNK = 1 << 20
SHSTRTAB_WINDOW = 4 << 20  # a stream keeps this much before the section headers, for their names
# The most a stream ever copies aside for one member: the window plus the largest section header table.
MAX_CAPTURE = SHSTRTAB_WINDOW + MAX_SECTIONS * 64
# The ELF spec fixes e_shentsize at sizeof(Elf32_Shdr) / sizeof(Elf64_Shdr); anything else is hostile.
SHDR_SIZE = {False: 40, True: 64}
# Kernel names come from one cubin per fat binary: read when stored plain and at most 1 MiB, or
# LZ4-compressed and at most 16 KiB (a pure-Python LZ4 decoder). Small enough to cost little next to
# inflating the library, big enough for the kernel-less cubins nvlink adds (1-2 KiB) and most
# translation units; a bigger group's kernels are "unknown", which only means no names are shown.
MAX_CUBIN_READ = 1 << 20
MAX_LZ4_CUBIN_READ = 16 << 10
STO_CUDA_ENTRY = 0x10  # st_other bit of a kernel (an entry point) in a cubin's symbol table
STT_FUNC = 2


class BinaryFormatError(ForgeError):
    """The file is not an ELF file or fat binary, or its headers are truncated or inconsistent."""


class NotDeviceBinary(BinaryFormatError):
    """Neither ELF nor a fat binary: a file that cannot carry device code at all."""


@dataclass(frozen=True)
class DeviceImage:
    """One fat binary entry: SASS for one real arch, or PTX for one virtual arch."""

    kind: str  # "sass" | "ptx"
    number: int  # 90, 100, 120
    variant: str  # "" | "a" | "f"
    compression: str  # "" | "lz4" | "zstd"
    size: int  # payload bytes as stored
    code_version: str  # PTX ISA version ("9.0") or cubin ELF version ("1.8")

    @property
    def arch(self) -> str:
        """``sm_90a`` for SASS, ``compute_90a`` for PTX."""
        prefix = "sm" if self.kind == "sass" else "compute"
        return f"{prefix}_{self.number}{self.variant}"

    @property
    def sm(self) -> str:
        """The arch in cuobjdump's spelling, ``sm_90a`` for both kinds."""
        return f"sm_{self.number}{self.variant}"


@dataclass
class FatBinary:
    """One fat binary: the device code of one translation unit (or of nvlink's device link step).

    A kernel runs only if *its own* fat binary has SASS for the GPU or PTX the driver can JIT, so
    this is the unit a verdict is made of ("kernel group").
    """

    offset: int  # where it starts in the file
    images: list[DeviceImage] = field(default_factory=list)
    # Kernel names from the symbol table of one of its cubins; () for a cubin without kernels (the
    # one nvlink adds for the device runtime); None when no cubin could be read (compressed, or PTX only).
    kernels: tuple[str, ...] | None = None

    @property
    def sass(self) -> set[str]:
        return {image.arch for image in self.images if image.kind == "sass"}

    @property
    def ptx(self) -> set[str]:
        return {image.arch for image in self.images if image.kind == "ptx"}

    @property
    def kernel_less(self) -> bool:
        """Known to hold no kernel: nothing in it is ever launched, so it cannot fail a GPU."""
        return self.kernels == () and not self.ptx


@dataclass
class DeviceCode:
    """What one file carries. ``images`` are in file order; ``sass``/``ptx`` are the arch sets;
    ``groups`` are its fat binaries (the images again, by the fat binary they belong to)."""

    images: list[DeviceImage] = field(default_factory=list)
    section: str = ""  # the section the images came from ("" for a raw fat binary or none)
    is_elf: bool = True
    groups: list[FatBinary] = field(default_factory=list)

    @property
    def sass(self) -> set[str]:
        return {image.arch for image in self.images if image.kind == "sass"}

    @property
    def ptx(self) -> set[str]:
        return {image.arch for image in self.images if image.kind == "ptx"}

    @property
    def has_device_code(self) -> bool:
        return bool(self.images)

    def add(self, group: FatBinary) -> None:
        self.groups.append(group)
        self.images.extend(group.images)

    def cuobjdump_listing(self) -> tuple[list[str], list[str]]:
        """The arch of each ``ELF file N`` and ``PTX file N`` line of ``cuobjdump --list-elf --list-ptx``.

        cuobjdump names a cubin after its own ELF header, which has no family flag: sm_100f SASS is
        listed as ``sm_100`` there (its fat binary header, and plain ``cuobjdump``, say ``sm_100f``).
        """
        elf = [f"sm_{i.number}{'' if i.variant == 'f' else i.variant}" for i in self.images if i.kind == "sass"]
        ptx = [i.sm for i in self.images if i.kind == "ptx"]
        return elf, ptx


# ---- readers: one interface over a file on disk, bytes in memory, and a stream of chunks ----------


class _RandomReader:
    """peek/read/skip over a seekable source, bounded to ``size`` bytes."""

    def __init__(self, read_at: Callable[[int, int], bytes], size: int, pos: int = 0):
        self._read_at = read_at
        self.size = size
        self.pos = pos

    def tell(self) -> int:
        return self.pos

    def peek(self, n: int) -> bytes:
        n = max(0, min(n, self.size - self.pos))
        return self._read_at(self.pos, n) if n else b""

    def read(self, n: int) -> bytes:
        data = self.peek(n)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        n = max(0, min(n, self.size - self.pos))
        self.pos += n
        return n


class _ChunkReader:
    """peek/read/skip/find over an iterator of chunks, read once, front to back.

    Bytes in ``capture`` (an absolute [start, end) range) are copied aside as they stream past,
    whatever the parser does with them: that is how the section headers at the end of an ELF file
    are kept without holding the file.
    """

    def __init__(self, chunks: Iterator[bytes], size: int):
        self._chunks = chunks
        self.size = size
        self._buf = b""
        self._i = 0  # position in _buf
        self._buf_start = 0  # absolute offset of _buf[0]
        self._pulled = 0  # absolute offset after the last byte pulled
        self.capture_range = (0, 0)
        self.captured = bytearray()
        self.capture_start = 0

    def tell(self) -> int:
        return self._buf_start + self._i

    def set_capture(self, start: int, end: int) -> None:
        start = max(start, self._buf_start)  # what already streamed past is gone
        end = min(end, start + MAX_CAPTURE)  # whatever the headers claim, never keep more than this
        self.capture_range = (start, max(start, end))
        self.capture_start = start
        lo, hi = start - self._buf_start, min(end, self._pulled) - self._buf_start
        self.captured = bytearray(self._buf[lo:hi]) if lo < hi else bytearray()

    def _pull(self) -> bool:
        for chunk in self._chunks:
            if not chunk:
                continue
            remaining = self.size - self._pulled
            if remaining <= 0:
                return False
            if len(chunk) > remaining:  # a stream longer than it said: never read past its size
                chunk = chunk[:remaining]
            start, end = self.capture_range
            lo, hi = max(start, self._pulled), min(end, self._pulled + len(chunk))
            if lo < hi:
                self.captured += chunk[lo - self._pulled:hi - self._pulled]
            self._pulled += len(chunk)
            rest = self._buf[self._i:]
            self._buf_start = self._pulled - len(chunk) - len(rest)
            self._buf = rest + chunk if rest else chunk
            self._i = 0
            return True
        return False

    def peek(self, n: int) -> bytes:
        while len(self._buf) - self._i < n and self._pull():
            pass
        return self._buf[self._i:self._i + n]

    def read(self, n: int) -> bytes:
        if len(self._buf) - self._i >= n:
            data = self._buf[self._i:self._i + n]
            self._i += n
            return data
        # Longer than the buffer: gather whole chunks and join once (growing the buffer chunk by
        # chunk would copy it again for every chunk).
        parts = [self._buf[self._i:]]
        got = len(parts[0])
        self._i = len(self._buf)
        while got < n and self._pull():
            take = min(n - got, len(self._buf))
            parts.append(self._buf[:take])
            self._i = take
            got += take
        return b"".join(parts)

    def skip(self, n: int) -> int:
        done = 0
        while done < n:
            available = len(self._buf) - self._i
            if available == 0:
                if not self._pull():
                    break
                continue
            step = min(available, n - done)
            self._i += step
            done += step
        return done

    def drain(self) -> None:
        """Stream the rest (so the capture range is seen), keeping nothing."""
        self._buf, self._i, self._buf_start = b"", 0, self._pulled
        while self._pull():
            self._buf, self._i, self._buf_start = b"", 0, self._pulled

    def find(self, needle: bytes) -> int | None:
        """Advance to the next ``needle``; its absolute offset, or None at the end of the stream.

        Chunks are searched where they lie: only the last ``len(needle) - 1`` bytes of one are
        kept to catch a needle across two, so nothing is copied on the way (this loop sees every
        byte of every library in a wheel).
        """
        keep = len(needle) - 1
        tail = b""  # the last bytes seen that may start a needle ending in the next chunk(s)
        while True:
            if tail:
                at = (tail + self._buf[self._i:self._i + keep]).find(needle)
                if 0 <= at < len(tail):  # it starts in earlier chunks: put those bytes back in front
                    start = self._buf_start + self._i - len(tail) + at
                    self._buf = tail[at:] + self._buf[self._i:]
                    self._buf_start, self._i = start, 0
                    return start
            at = self._buf.find(needle, self._i)
            if at >= 0:
                self._i = at
                return self.tell()
            tail = (tail + self._buf[max(self._i, len(self._buf) - keep):])[-keep:]
            self._i = len(self._buf)
            if not self._pull():
                return None


# ---- ELF headers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ElfHeader:
    is64: bool
    endian: str  # "<" or ">"
    machine: int
    shoff: int
    shentsize: int
    shnum: int
    shstrndx: int

    @property
    def table_size(self) -> int:
        return self.shentsize * self.shnum


@dataclass(frozen=True)
class _Section:
    name_offset: int
    type: int
    offset: int
    size: int
    link: int


SHT_NOBITS = 8
SHN_XINDEX = 0xFFFF


def _parse_elf_header(head: bytes, size: int, where: str) -> _ElfHeader:
    if len(head) < 52 or head[:4] != ELF_MAGIC:
        raise BinaryFormatError(f"{where} is truncated: its ELF header is incomplete", "re-download or rebuild it")
    ei_class, ei_data = head[4], head[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise BinaryFormatError(f"{where} has an invalid ELF header (class {ei_class}, data {ei_data})",
                                "re-download or rebuild it")
    endian = "<" if ei_data == 1 else ">"
    is64 = ei_class == 2
    if is64:
        if len(head) < 64:
            raise BinaryFormatError(f"{where} is truncated: its ELF header is incomplete", "re-download or rebuild it")
        machine, = struct.unpack_from(endian + "H", head, 18)
        shoff, = struct.unpack_from(endian + "Q", head, 40)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", head, 58)
        min_entsize = SHDR_SIZE[True]
    else:
        machine, = struct.unpack_from(endian + "H", head, 18)
        shoff, = struct.unpack_from(endian + "I", head, 32)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", head, 46)
        min_entsize = SHDR_SIZE[False]
    if shoff == 0:  # no section headers (stripped to the bone): no sections, no fat binaries
        return _ElfHeader(is64, endian, machine, 0, min_entsize, 0, 0)
    if shentsize != min_entsize:  # the spec fixes it; a bigger one would make every read huge
        raise BinaryFormatError(f"{where} has an invalid ELF section header size ({shentsize}; the ELF spec "
                                f"fixes it at {min_entsize})", "re-download or rebuild it")
    if shoff + shentsize > size:
        raise BinaryFormatError(f"{where} is truncated: its section headers lie past its end "
                                f"(offset {shoff}, file size {size})", "re-download or rebuild it")
    return _ElfHeader(is64, endian, machine, shoff, shentsize, shnum, shstrndx)


def _parse_section(hdr: _ElfHeader, data: bytes, at: int) -> _Section:
    e = hdr.endian
    if hdr.is64:
        name, stype, _flags, _addr, offset, size, link = struct.unpack_from(e + "IIQQQQI", data, at)
    else:
        name, stype, _flags, _addr, offset, size, link = struct.unpack_from(e + "IIIIIII", data, at)
    return _Section(name, stype, offset, size, link)


def _first_section(hdr: _ElfHeader, first: bytes) -> tuple[int, int]:
    """(section count, shstrndx) after ELF's escapes for more than 0xff00 sections."""
    shnum, shstrndx = hdr.shnum, hdr.shstrndx
    if shnum == 0 or shstrndx == SHN_XINDEX:
        zero = _parse_section(hdr, first, 0)
        if shnum == 0:
            shnum = zero.size
        if shstrndx == SHN_XINDEX:
            shstrndx = zero.link
    return shnum, shstrndx


def _check_table(hdr: _ElfHeader, shnum: int, size: int, where: str) -> None:
    if shnum > MAX_SECTIONS or hdr.shoff + shnum * hdr.shentsize > size:
        raise BinaryFormatError(f"{where} is truncated or corrupt: {shnum} section headers at offset "
                                f"{hdr.shoff} do not fit in {size} bytes", "re-download or rebuild it")


def _parse_sections(hdr: _ElfHeader, table: bytes, shnum: int) -> list[_Section]:
    return [_parse_section(hdr, table, i * hdr.shentsize) for i in range(shnum)]


def _section_name(strtab: bytes, offset: int) -> str:
    if offset >= len(strtab):
        return ""
    end = strtab.find(b"\0", offset)
    return strtab[offset:end if end >= 0 else len(strtab)].decode("latin-1")


def _fatbin_sections(sections: list[_Section], names: list[str], size: int, where: str) -> list[tuple[str, _Section]]:
    """The sections cuobjdump reads: every ``.nv_fatbin``, else every ``__nv_relfatbin``."""
    for wanted in (EXECUTABLE_SECTION, RELOCATABLE_SECTION):
        chosen = [(n, s) for n, s in zip(names, sections, strict=True)
                  if n == wanted and s.type != SHT_NOBITS and s.size]
        if chosen:
            for name, sec in chosen:
                if sec.offset + sec.size > size:
                    raise BinaryFormatError(f"{where} is truncated: its {name} section ends at byte "
                                            f"{sec.offset + sec.size}, past the file's {size} bytes",
                                            "re-download or rebuild it")
            return chosen
    return []


# ---- fat binaries --------------------------------------------------------------------------------


def _entry(header: bytes, endian: str = "<") -> tuple[int, int, int, int, int, int, int] | None:
    """(kind, version, header size, payload size, code version, arch, flags), or None if too short."""
    if len(header) < 48:
        return None
    kind, version, header_size, payload = struct.unpack_from(endian + "HHIQ", header, 0)
    code_version, arch = struct.unpack_from(endian + "II", header, 24)
    flags, = struct.unpack_from(endian + "Q", header, 40)
    return kind, version, header_size, payload, code_version, arch, flags


def _image(kind: int, payload: int, code_version: int, arch: int, flags: int) -> DeviceImage:
    variant = "a" if flags & FLAG_ARCH_SPECIFIC else ("f" if flags & FLAG_FAMILY else "")
    compression = "zstd" if flags & FLAG_ZSTD else ("lz4" if flags & FLAG_LZ4 else "")
    return DeviceImage(kind="ptx" if kind == KIND_PTX else "sass", number=arch, variant=variant,
                       compression=compression, size=payload,
                       code_version=f"{code_version >> 16}.{code_version & 0xFFFF}")


def _plausible_fatbin(head: bytes, room: int) -> bool:
    """Whether the bytes at a magic look like a fat binary header and a sane first entry.

    ``room`` is how many bytes are left in the file from the magic on.
    """
    if len(head) < 16 or head[:4] != FATBIN_MAGIC_BYTES:
        return False
    version, header_size, fat_size = struct.unpack_from("<HHQ", head, 4)
    if version != 1 or header_size != 16 or 16 + fat_size > room:
        return False
    if fat_size == 0:  # an empty fat binary (nvcc emits them): just a header
        return True
    if fat_size < 48 or len(head) < 16 + 48:
        return False
    kind, eversion, ehs, payload, _cv, arch, _flags = _entry(head[16:])  # 48 bytes are there: never None
    return (kind in (KIND_PTX, KIND_ELF) and eversion == ENTRY_VERSION and 48 <= ehs <= MAX_ENTRY_HEADER
            and ehs + payload <= fat_size and 10 <= arch < 1000)


def _read_fatbin(r, end: int, where: str, count: int = 0) -> FatBinary:
    """Read one fat binary at the reader's position (its magic). ``count``: images already read in
    this file (for the MAX_IMAGES bound)."""
    start = r.tell()
    head = r.read(16)
    if len(head) < 16:
        raise BinaryFormatError(f"{where} is truncated inside a fat binary at offset {start}",
                                "re-download or rebuild it")
    magic, version, header_size, fat_size = struct.unpack("<IHHQ", head)
    if magic != FATBIN_MAGIC or version != 1 or header_size < 16 or header_size > MAX_ENTRY_HEADER:
        raise BinaryFormatError(f"{where} has a corrupt fat binary header at offset {start}",
                                "re-download or rebuild it")
    r.skip(header_size - 16)
    fat_end = start + header_size + fat_size
    if fat_end > end:
        raise BinaryFormatError(f"{where} is truncated: the fat binary at offset {start} claims {fat_size} bytes, "
                                f"past the end of its section or file", "re-download or rebuild it")
    group = FatBinary(start)
    while r.tell() < fat_end:
        at = r.tell()
        header = r.peek(min(MAX_ENTRY_HEADER, fat_end - at, 64))
        entry = _entry(header)
        if entry is None:
            raise BinaryFormatError(f"{where} is truncated inside the fat binary entry at offset {at}",
                                    "re-download or rebuild it")
        kind, _version, ehs, payload, code_version, arch, flags = entry
        if ehs < 48 or ehs > MAX_ENTRY_HEADER or at + ehs + payload > fat_end:
            raise BinaryFormatError(f"{where} has a corrupt fat binary entry at offset {at} "
                                    f"(header {ehs} bytes, payload {payload} bytes)", "re-download or rebuild it")
        if kind in (KIND_PTX, KIND_ELF):
            if count + len(group.images) >= MAX_IMAGES:
                raise BinaryFormatError(f"{where} claims more than {MAX_IMAGES} device images", "check the file")
            group.images.append(_image(kind, payload, code_version, arch, flags))
        if kind == KIND_ELF and group.kernels is None and _worth_reading(flags, payload):
            if r.skip(ehs) != ehs:
                raise BinaryFormatError(f"{where} is truncated inside the fat binary entry at offset {at}",
                                        "re-download or rebuild it")
            body = r.read(payload)
            if len(body) != payload:
                raise BinaryFormatError(f"{where} is truncated inside the fat binary entry at offset {at}",
                                        "re-download or rebuild it")
            if flags & FLAG_LZ4:
                raw_size, = struct.unpack_from("<Q", header, 56) if len(header) >= 64 else (0,)
                body = lz4_block_decompress(body, raw_size) if 0 < raw_size <= MAX_CUBIN_READ else None
            group.kernels = cubin_kernels(body) if body else None
        elif r.skip(ehs + payload) != ehs + payload:
            raise BinaryFormatError(f"{where} is truncated inside the fat binary entry at offset {at}",
                                    "re-download or rebuild it")
    return group


def _worth_reading(flags: int, payload: int) -> bool:
    if flags & FLAG_ZSTD:
        return False
    if flags & FLAG_LZ4:
        return payload <= MAX_LZ4_CUBIN_READ
    return payload <= MAX_CUBIN_READ


# ---- cubins: the kernel names ----------------------------------------------------------------------


def lz4_block_decompress(src: bytes, size: int) -> bytes | None:
    """One LZ4 block (the format fat binaries compress entries with), or None when it is not one.

    Pure Python, so only used on small cubins; never writes more than ``size`` bytes.
    """
    out = bytearray()
    i, n = 0, len(src)
    try:
        while i < n:
            token = src[i]
            i += 1
            length = token >> 4
            if length == 15:
                while True:
                    extra = src[i]
                    i += 1
                    length += extra
                    if extra != 255:
                        break
            if len(out) + length > size:
                return None
            out += src[i:i + length]
            i += length
            if i >= n or len(out) >= size:
                break
            offset = src[i] | (src[i + 1] << 8)
            i += 2
            if offset == 0 or offset > len(out):
                return None
            match = (token & 15) + 4
            if token & 15 == 15:
                while True:
                    extra = src[i]
                    i += 1
                    match += extra
                    if extra != 255:
                        break
            if len(out) + match > size:
                return None
            start = len(out) - offset
            if match <= offset:
                out += out[start:start + match]
            else:  # an overlapping copy repeats the last `offset` bytes
                chunk = out[start:]
                out += (chunk * (match // offset + 1))[:match]
    except IndexError:
        return None
    return bytes(out) if len(out) == size else None


def cubin_kernels(cubin: bytes) -> tuple[str, ...] | None:
    """The kernels (entry functions) a cubin defines, from its symbol table; None if it is not a cubin."""
    if len(cubin) < 64 or cubin[:4] != ELF_MAGIC or cubin[4] != 2 or cubin[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", cubin, 40)
    shentsize, shnum = struct.unpack_from("<HH", cubin, 58)
    if shentsize != 64 or shoff + shnum * 64 > len(cubin):
        return None
    sections = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * 64) for i in range(shnum)]
    for _name, stype, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if stype != 2:  # SHT_SYMTAB
            continue
        if entsize != 24 or offset + size > len(cubin) or link >= shnum:
            return None
        str_off, str_size = sections[link][4], sections[link][5]
        strtab = cubin[str_off:str_off + str_size]
        names = []
        for st_name, info, other, _shndx, _value, _size in struct.iter_unpack("<IBBHQQ", cubin[offset:offset + size]):
            if info & 0xF == STT_FUNC and other & STO_CUDA_ENTRY:
                names.append(_section_name(strtab, st_name))
        return tuple(names)
    return None  # no symbol table: nothing says it has no kernel


def _skip_padding(r, end: int) -> bool:
    """Skip zero bytes up to ``end``; True when a non-zero byte (the next magic, or garbage) follows."""
    while r.tell() < end:
        block = r.peek(min(4096, end - r.tell()))
        if not block:
            return False
        stripped = block.lstrip(b"\0")
        r.skip(len(block) - len(stripped))
        if stripped:
            return True
    return False


def _read_region(r, end: int, where: str, code: DeviceCode) -> None:
    """Every fat binary between the reader's position and ``end`` (a section, or a whole .fatbin file)."""
    while _skip_padding(r, end):
        at = r.tell()
        if r.peek(4) != FATBIN_MAGIC_BYTES:
            raise BinaryFormatError(f"{where} has unexpected bytes at offset {at} where a fat binary should start",
                                    "re-download or rebuild it")
        code.add(_read_fatbin(r, end, where, len(code.images)))
    if r.tell() < end:  # a stream that ended early, between two fat binaries
        raise BinaryFormatError(f"{where} is truncated: it ends at byte {r.tell()} of {end}",
                                "re-download or rebuild it")


# ---- entry points --------------------------------------------------------------------------------


def _open(r, size: int, where: str):
    """(finished DeviceCode, None) for a bare fat binary or an ELF file without sections, else
    (None, its ELF header); refuses anything else. Shared by the random-access and streaming readers."""
    head = r.peek(64)
    if head[:4] == FATBIN_MAGIC_BYTES:
        code = DeviceCode(is_elf=False)
        _read_region(r, size, where, code)
        return code, None
    if head[:4] != ELF_MAGIC:
        raise NotDeviceBinary(f"{where} is not an ELF file or CUDA fat binary",
                              "name a .so, an executable, a wheel, a directory or an image")
    hdr = _parse_elf_header(head, size, where)
    return (DeviceCode(), None) if hdr.shoff == 0 else (None, hdr)


def _scan_random(read_at: Callable[[int, int], bytes], size: int, where: str) -> DeviceCode:
    r = _RandomReader(read_at, size)
    done, hdr = _open(r, size, where)
    if done is not None:
        return done
    shnum, shstrndx = _first_section(hdr, read_at(hdr.shoff, hdr.shentsize))
    _check_table(hdr, shnum, size, where)
    sections = _parse_sections(hdr, read_at(hdr.shoff, shnum * hdr.shentsize), shnum)
    names = _names(sections, shstrndx, size, lambda s: read_at(s.offset, min(s.size, MAX_SHSTRTAB)))
    code = DeviceCode()
    for name, sec in _fatbin_sections(sections, names, size, where):
        code.section = name
        r.pos = sec.offset
        _read_region(r, sec.offset + sec.size, where, code)
    return code


def _names(sections: list[_Section], shstrndx: int, size: int, read_strtab) -> list[str]:
    if not (0 < shstrndx < len(sections)):
        return [""] * len(sections)
    strtab_sec = sections[shstrndx]
    if strtab_sec.type == SHT_NOBITS or strtab_sec.offset >= size:
        return [""] * len(sections)
    strtab = read_strtab(strtab_sec)
    if strtab is None:
        return None
    return [_section_name(strtab, s.name_offset) for s in sections]


def scan_stream(chunks: Iterator[bytes], size: int, where: str) -> DeviceCode:
    """Device code of a file that can only be read once, front to back (``size`` bytes in ``chunks``).

    Fat binaries are found by their magic as the bytes stream past and kept when they lie in the
    section cuobjdump would read; the section headers (at the end) and the window before them
    (where linkers put the section names) are copied aside on the way.
    """
    r = _ChunkReader(iter(chunks), size)
    done, hdr = _open(r, size, where)
    if done is not None:
        return done
    # Section headers come last: copy them (and the names before them) aside as they stream past.
    # shnum 0 is ELF's escape for "more than 0xff00, see section 0": then up to MAX_SECTIONS.
    table = (hdr.shnum or MAX_SECTIONS) * hdr.shentsize
    r.set_capture(hdr.shoff - SHSTRTAB_WINDOW, min(size, hdr.shoff + table))
    found: list[tuple[int, int, FatBinary]] = []  # (start, end, fat binary) of each fat binary seen
    corrupt: list[tuple[int, str]] = []  # magics that did not start a readable fat binary (first 10000)
    total = 0
    while (at := r.find(FATBIN_MAGIC_BYTES)) is not None:
        if not _plausible_fatbin(r.peek(64), size - at):
            if len(corrupt) < 10_000:
                corrupt.append((at, f"{where} has a corrupt fat binary header at offset {at}"))
            r.skip(1)
            continue
        try:
            group = _read_fatbin(r, size, where, total)
        except BinaryFormatError as err:
            corrupt.append((at, str(err)))
            continue
        total += len(group.images)
        found.append((at, r.tell(), group))
    r.drain()
    table = r.captured
    base = r.capture_start
    rel = hdr.shoff - base
    if rel < 0 or len(table) < rel + hdr.shentsize:
        raise BinaryFormatError(f"{where} is truncated: its section headers are missing", "re-download or rebuild it")
    shnum, shstrndx = _first_section(hdr, bytes(table[rel:rel + hdr.shentsize]))
    _check_table(hdr, shnum, size, where)
    sections = _parse_sections(hdr, bytes(table[rel:rel + shnum * hdr.shentsize]), shnum)

    def strtab_from_window(sec: _Section) -> bytes | None:
        lo = sec.offset - base
        if lo < 0 or sec.offset + sec.size > base + len(table):
            return None
        return bytes(table[lo:lo + min(sec.size, MAX_SHSTRTAB)])

    names = _names(sections, shstrndx, size, strtab_from_window)
    if names is None:  # section names not next to the headers: an unusual layout; say so plainly
        raise BinaryFormatError(f"{where} keeps its section names away from its section headers, which a "
                                "single streaming pass cannot read", "extract the file and audit it on disk")
    code = DeviceCode()
    for name, sec in _fatbin_sections(sections, names, size, where):
        code.section = name
        lo, hi = sec.offset, sec.offset + sec.size
        for at, message in corrupt:
            if lo <= at < hi:
                raise BinaryFormatError(message, "re-download or rebuild it")
        inside = [(start, end, group) for start, end, group in found if lo <= start and end <= hi]
        # What the fat binaries do not cover may only be alignment padding between them.
        uncovered = sec.size - sum(end - start for start, end, _ in inside)
        if uncovered > 16 * (len(inside) + 1):
            raise BinaryFormatError(f"{where} has {uncovered} bytes in its {name} section that are not fat binaries",
                                    "re-download or rebuild it")
        for _start, _end, group in inside:
            code.add(group)
    return code


def list_device_code(source, where: str | None = None) -> DeviceCode:
    """What device code ``source`` carries: a path, bytes, or a seekable binary file object.

    Raises ``NotDeviceBinary`` when it is neither ELF nor a fat binary, ``BinaryFormatError`` when
    its headers are truncated or inconsistent.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _scan_random(lambda off, n: data[off:off + n], len(data), where or "the data")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        where = where or str(path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ForgeError(f"{where} does not exist", "check the path") from None
        except OSError as err:
            raise ForgeError(f"cannot read {where} ({err.strerror})", "check its permissions") from None
        if path.is_dir():  # Linux opens a directory read-only; only the first read would fail
            os.close(fd)
            raise ForgeError(f"{where} is a directory", "audit it with python -m vllm_forge.audit.audit instead")
        try:
            size = os.fstat(fd).st_size
            return _scan_random(lambda off, n: os.pread(fd, n, off), size, where)
        finally:
            os.close(fd)
    fileobj = source
    fileobj.seek(0, os.SEEK_END)
    size = fileobj.tell()

    def read_at(off: int, n: int) -> bytes:
        fileobj.seek(off)
        return fileobj.read(n)

    return _scan_random(read_at, size, where or getattr(fileobj, "name", "the file"))


def looks_like_binary(head: bytes) -> bool:
    """Whether the first bytes of a file are ELF or a fat binary (worth scanning)."""
    return head[:4] in (ELF_MAGIC, FATBIN_MAGIC_BYTES)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="List the SASS and PTX archs ELF files carry (no CUDA toolkit).")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--images", action="store_true", help="one line per fat binary entry, in file order")
    args = parser.parse_args(argv)
    for path in args.files:
        code = list_device_code(path)
        if not code.has_device_code:
            print(f"{path}: no device code")
            continue
        print(f"{path}: SASS {' '.join(sorted(code.sass)) or '-'}; PTX {' '.join(sorted(code.ptx)) or '-'}")
        if args.images:
            for image in code.images:
                packed = f", {image.compression}" if image.compression else ""
                print(f"  {image.kind:4} {image.arch:14} {image.size:>10} bytes{packed}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
