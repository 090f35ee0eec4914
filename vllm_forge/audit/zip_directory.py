"""A zip's central directory, read in one piece, with a ZipInfo made only for the members asked for.

zipfile decodes every entry into a ZipInfo (torch's wheel has 12,000 members, a vLLM wheel 4,600: a
third and a twentieth of a second); the audit wants a dozen libraries, and a vLLM's import analysis
its Python files. Both read the directory here. ``None`` for anything unusual (data before the
archive, a disk-spanning or damaged directory): then zipfile's own reader decides.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

_EOCD = struct.Struct("<4sHHHHIIH")
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")
_CDH = struct.Struct("<4sHHHHHHIIIHHHHHII")
MAX_DIRECTORY = 256 << 20  # bytes: a central directory larger than this is no wheel's


def _directory(path: Path) -> tuple[bytes, int] | None:
    """The central directory's bytes and its entry count, or None where the archive is unusual."""
    with open(path, "rb") as fp:
        size = fp.seek(0, os.SEEK_END)
        tail_len = min(size, _EOCD.size + 0xFFFF)
        fp.seek(size - tail_len)
        tail = fp.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + _EOCD.size > len(tail):
            return None
        _sig, disk, cd_disk, _here, count, cd_size, cd_offset, _comment = _EOCD.unpack_from(tail, at)
        if disk or cd_disk:
            return None
        if 0xFFFF in (count,) or 0xFFFFFFFF in (cd_size, cd_offset):  # ZIP64: the locator precedes it
            locator = at - 20
            if locator < 0 or tail[locator:locator + 4] != b"PK\x06\x07":
                return None
            eocd64_offset, = struct.unpack_from("<Q", tail, locator + 8)
            fp.seek(eocd64_offset)
            record = fp.read(_EOCD64.size)
            if len(record) < _EOCD64.size or record[:4] != b"PK\x06\x06":
                return None
            count, cd_size, cd_offset = _EOCD64.unpack(record)[7:10]
        if cd_offset + cd_size > size or cd_size > MAX_DIRECTORY:
            return None
        fp.seek(cd_offset)
        return fp.read(cd_size), count


def _zip64_sizes(extra: bytes, csize: int, usize: int, offset: int) -> tuple[int, int, int] | None:
    """ZIP64 sizes live in the extra field, in this order, for the fields that say 0xFFFFFFFF."""
    values, i = [], 0
    while i + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, i)
        if tag == 1:
            values = [v for (v,) in struct.iter_unpack("<Q", extra[i + 4:i + 4 + length - length % 8])]
            break
        i += 4 + length
    if usize == 0xFFFFFFFF:
        usize = values.pop(0) if values else None
    if csize == 0xFFFFFFFF:
        csize = values.pop(0) if values else None
    if offset == 0xFFFFFFFF:
        offset = values.pop(0) if values else None
    return None if None in (usize, csize, offset) else (csize, usize, offset)


def read_members(path: Path, wanted: Callable[[str], bool],
                 quick: Callable[[bytes], bool] | None = None) -> list[zipfile.ZipInfo] | None:
    """The files (not folders) of the zip at ``path`` whose decoded name ``wanted`` accepts, in directory
    order, each a ZipInfo with the fields a reader needs (flags, method, CRC, sizes, local header offset).
    ``quick``, when given, sees each raw name first and drops what can never be wanted without decoding it.
    None where the archive is unusual (see the module's docstring)."""
    found = _directory(path)
    if found is None:
        return None
    directory, count = found
    members, pos, seen = [], 0, 0
    while pos + _CDH.size <= len(directory):
        (sig, _made, _need, flags, method, _time, _date, crc, csize, usize, name_len, extra_len, comment_len,
         _disk, _iattr, _eattr, offset) = _CDH.unpack_from(directory, pos)
        if sig != b"PK\x01\x02":
            return None
        start = pos + _CDH.size
        raw = directory[start:start + name_len]
        pos = start + name_len + extra_len + comment_len
        seen += 1
        if quick is not None and not quick(raw):
            continue
        name = raw.decode("utf-8" if flags & 0x800 else "cp437")
        if name.endswith("/") or not wanted(name):
            continue
        if 0xFFFFFFFF in (csize, usize, offset):
            sizes = _zip64_sizes(directory[start + name_len:start + name_len + extra_len], csize, usize, offset)
            if sizes is None:
                return None
            csize, usize, offset = sizes
        info = zipfile.ZipInfo(name)
        info.flag_bits, info.compress_type, info.CRC = flags, method, crc
        info.compress_size, info.file_size, info.header_offset = csize, usize, offset
        members.append(info)
    return members if seen == count else None
