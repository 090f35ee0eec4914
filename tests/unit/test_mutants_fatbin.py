"""The fat binary reader on truncated and random input: what it returns, not only that it returns.

Replaces test_fatbin.py's truncation and random-bytes tests, which swallowed the format error and
checked nothing (issue 22). Kept apart so they hold across rewrites of vllm_forge/audit/fatbin.py: they use only
``list_device_code``, ``scan_stream`` and the two error types.
"""

from __future__ import annotations

import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_forge.audit.fatbin import BinaryFormatError, NotDeviceBinary, list_device_code, scan_stream

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "h200x2"
ELF_MAGIC = b"\x7fELF"
FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)


def chunked(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def both_readers(data: bytes, chunk: int):
    """(random-access outcome, streaming outcome): a DeviceCode or the BinaryFormatError raised."""
    outcomes = []
    for scan in (lambda d: list_device_code(d), lambda d: scan_stream(chunked(d, chunk), len(d), "data")):
        try:
            outcomes.append(scan(data))
        except BinaryFormatError as err:
            outcomes.append(err)
    return outcomes


def assert_one_line_error(err: BinaryFormatError) -> None:
    text = str(err)
    assert "\n" not in text and text.endswith(".") and "Fix:" in text, text


def test_every_truncation_of_a_real_binary_is_refused_as_such():
    """A cut binary is never read as one with less device code: both readers refuse every prefix."""
    data = (FIXTURES / "k_sm_100_120_ptx120").read_bytes()
    full = list_device_code(data)
    assert (full.sass, full.ptx) == ({"sm_100", "sm_120"}, {"compute_120"})
    for cut in list(range(0, 200, 3)) + list(range(200, len(data), 4099)):
        for outcome in both_readers(data[:cut], 8192):
            assert isinstance(outcome, BinaryFormatError), f"a {cut}-byte prefix was read as {outcome}"
            assert_one_line_error(outcome)
            # Under 4 bytes there is no magic to recognise; from there on it is a broken ELF file.
            assert isinstance(outcome, NotDeviceBinary) == (cut < 4), cut


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([b"", ELF_MAGIC, FATBIN_MAGIC]), st.binary(max_size=4096))
def test_fuzz_random_bytes(magic, tail):
    data = magic + tail
    random, stream = both_readers(data, 97)
    for outcome in (random, stream):
        if isinstance(outcome, BinaryFormatError):
            assert_one_line_error(outcome)
    if not data.startswith((ELF_MAGIC, FATBIN_MAGIC)):
        assert isinstance(random, NotDeviceBinary) and isinstance(stream, NotDeviceBinary)
    else:
        assert not isinstance(random, NotDeviceBinary) and not isinstance(stream, NotDeviceBinary)
    if not isinstance(random, BinaryFormatError) and not isinstance(stream, BinaryFormatError):
        assert random.images == stream.images
        assert random.sass | random.ptx == {image.arch for image in random.images}
