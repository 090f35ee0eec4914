"""The scanner against the real tools: binaries nvcc builds for several arch mixes (compressed and not),
listed by cuobjdump, must list the same (every entry, in order) through vllm_forge/audit/fatbin.py, read from
disk and streamed out of a wheel."""

from __future__ import annotations

import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from vllm_forge.audit import audit
from vllm_forge.audit.fatbin import list_device_code, scan_stream

pytestmark = [pytest.mark.integration, pytest.mark.nvcc]

KERNEL = """
__global__ void add_one(int *a) { a[threadIdx.x] += 1; }
extern "C" void launch(int *a) { add_one<<<1, 32>>>(a); }
"""

# name -> nvcc flags. sm_100f / sm_120f need nvcc >= 12.9 (this project's build machine has 13.0).
MIXES = {
    "sm90a": ["-gencode", "arch=compute_90a,code=sm_90a"],
    "sm120_ptx120": ["-gencode", "arch=compute_120,code=[sm_120,compute_120]"],
    "family": ["-gencode", "arch=compute_100f,code=[sm_100f,compute_100f]",
               "-gencode", "arch=compute_120f,code=sm_120f"],
    "mixed_default": ["-gencode", "arch=compute_75,code=[sm_75,compute_75]", "-gencode", "arch=compute_90,code=sm_90",
                      "-gencode", "arch=compute_90a,code=compute_90a", "-gencode", "arch=compute_120a,code=sm_120a"],
    "compressed_all": ["-gencode", "arch=compute_89,code=[sm_89,compute_89]", "-gencode",
                       "arch=compute_120,code=sm_120", "-Xfatbin", "-compress-all"],
    "compressed_lz4": ["-gencode", "arch=compute_80,code=[sm_86,compute_80]", "-Xfatbin", "-compress-all",
                       "--compress-mode=speed"],
    "uncompressed": ["-gencode", "arch=compute_90,code=[sm_90,compute_90]", "-gencode",
                     "arch=compute_100,code=sm_100", "--no-compress"],
}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "h200x2"


@pytest.fixture(scope="module")
def built(nvcc_toolchain, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("nvcc-mixes")
    source = out / "kernel.cu"
    source.write_text(KERNEL)
    binaries = {}
    for name, flags in MIXES.items():
        target = out / f"lib{name}.so"
        subprocess.run([str(nvcc_toolchain.nvcc), "-shared", "-Xcompiler", "-fPIC", "-o", str(target), str(source),
                        *flags], check=True, capture_output=True)
        binaries[name] = target
    return binaries


def cuobjdump_lists(cuobjdump: Path, path: Path) -> tuple[list[str], list[str]]:
    done = subprocess.run([str(cuobjdump), "--list-elf", "--list-ptx", str(path)], capture_output=True, text=True)
    text = done.stdout + done.stderr
    elf = re.findall(r"^ELF file\s+\d+: .*\.(sm_\w+)\.cubin$", text, re.M)
    ptx = re.findall(r"^PTX file\s+\d+: .*\.(sm_\w+)\.ptx$", text, re.M)
    return elf, ptx


def cuobjdump_headers(cuobjdump: Path, path: Path) -> list[tuple[str, str, bool]]:
    """Plain cuobjdump: (kind, arch, compressed) per entry, its arch from the fat binary header (with `f`)."""
    text = subprocess.run([str(cuobjdump), str(path)], capture_output=True, text=True).stdout
    entries = []
    for block in re.split(r"\n(?=Fatbin )", text):
        m = re.match(r"Fatbin (elf|ptx) code:", block.strip())
        if m:
            arch = re.search(r"^arch = (\S+)", block, re.M).group(1)
            entries.append(("sass" if m.group(1) == "elf" else "ptx", arch, "\ncompressed" in block))
    return entries


def test_every_mix_equals_cuobjdump(built, cuobjdump):
    for name, path in built.items():
        code = list_device_code(path)
        assert code.cuobjdump_listing() == cuobjdump_lists(cuobjdump, path), name
        headers = [(i.kind, i.sm, bool(i.compression)) for i in code.images]
        assert headers == cuobjdump_headers(cuobjdump, path), name


def test_mixes_carry_what_was_asked(built):
    assert list_device_code(built["sm90a"]).sass == {"sm_90a"}
    family = list_device_code(built["family"])
    assert family.sass == {"sm_100f", "sm_120f"} and family.ptx == {"compute_100f"}
    assert list_device_code(built["sm120_ptx120"]).ptx == {"compute_120"}
    assert {i.compression for i in list_device_code(built["compressed_all"]).images} == {"zstd"}
    assert {i.compression for i in list_device_code(built["compressed_lz4"]).images} == {"lz4"}
    assert {i.compression for i in list_device_code(built["uncompressed"]).images} == {""}


def test_h200_fixtures_equal_cuobjdump_here(cuobjdump):
    for path in sorted(FIXTURES.glob("k_*")):
        code = list_device_code(path)
        assert code.cuobjdump_listing() == cuobjdump_lists(cuobjdump, path), path.name
        assert [(i.kind, i.sm, bool(i.compression)) for i in code.images] == cuobjdump_headers(cuobjdump, path)


def test_wheel_of_the_mixes_streams_the_same(built, tmp_path):
    wheel = tmp_path / "mixes-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in built.values():
            zf.write(path, f"pkg/{path.name}")
    report = audit.audit_path(wheel, ["sm_90", "sm_120", "10.3"])
    by_name = {Path(f.path).name: f for f in report.files}
    with zipfile.ZipFile(wheel) as zf:
        for name, path in built.items():
            disk = list_device_code(path)
            info = zf.getinfo(f"pkg/{path.name}")
            streamed = scan_stream(iter([zf.read(info)]), info.file_size, name)
            assert streamed.images == disk.images
            assert by_name[path.name].sass == audit.sort_archs(disk.sass)
            assert by_name[path.name].ptx == audit.sort_archs(disk.ptx)
    assert by_name["libfamily.so"].verdict == {"sm_90": "none", "sm_120": "native", "sm_103": "native"}
    assert by_name["libsm90a.so"].verdict == {"sm_90": "native", "sm_120": "none", "sm_103": "none"}
    assert by_name["libmixed_default.so"].verdict == {"sm_90": "native", "sm_120": "native", "sm_103": "ptx-jit"}


# Two translation units linked into one library, each with its own fat binary: one built for an old
# arch with PTX (sm_52 SASS + compute_52 PTX; sm_75 + compute_75 where nvcc >= 13 dropped Maxwell:
# the same shape), one for Hopper only (sm_90 SASS).
TU_OLD = """
__global__ void old_kernel(int *a) { a[threadIdx.x] += 1; }
extern "C" void launch_old(int *a) { old_kernel<<<1, 32>>>(a); }
"""
TU_HOPPER = """
__global__ void hopper_kernel(int *a) { a[threadIdx.x] += 2; }
extern "C" void launch_hopper(int *a) { hopper_kernel<<<1, 32>>>(a); }
"""


@pytest.fixture(scope="module")
def two_units(nvcc_toolchain, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nvcc-two-units")
    nvcc = str(nvcc_toolchain.nvcc)
    (out / "old.cu").write_text(TU_OLD)
    (out / "hopper.cu").write_text(TU_HOPPER)
    def compile_unit(name: str, flags: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([nvcc, "-c", "-Xcompiler", "-fPIC", *flags, "-o", str(out / f"{name}.o"),
                               str(out / f"{name}.cu")], capture_output=True, text=True)

    for old in ("52", "75"):
        done = compile_unit("old", ["-gencode", f"arch=compute_{old},code=[sm_{old},compute_{old}]"])
        if done.returncode == 0:
            break
    assert done.returncode == 0, done.stderr
    (out / "old_arch").write_text(old)
    done = compile_unit("hopper", ["-gencode", "arch=compute_90,code=sm_90"])
    assert done.returncode == 0, done.stderr
    library = out / "libtwo.so"
    subprocess.run([nvcc, "-shared", "-o", str(library), str(out / "old.o"), str(out / "hopper.o")],
                   check=True, capture_output=True)
    return library


def test_a_library_is_judged_by_each_kernel_group(two_units, tmp_path):
    """The union of archs (sm_52, sm_90, compute_52) says "runs via PTX" on 12.0; the hopper unit has
    nothing for 12.0, so the library is partial there. On 9.0 every unit runs, the old one through PTX."""
    old = (two_units.parent / "old_arch").read_text()
    code = list_device_code(two_units)
    kernel_groups = [g for g in code.groups if not g.kernel_less]
    assert sorted(tuple(audit.sort_archs(g.sass | g.ptx)) for g in kernel_groups) == [
        (f"sm_{old}", f"compute_{old}"), ("sm_90",)]
    assert sorted(k for g in kernel_groups for k in g.kernels) == ["_Z10old_kernelPi", "_Z13hopper_kernelPi"]
    report = audit.audit_path(two_units, ["12.0", "9.0"])
    (f,) = report.files
    assert f.verdict == {"sm_120": "partial", "sm_90": "ptx-jit"}
    counts = f.groups["sm_120"]
    assert (counts.count, counts.native, counts.ptx_jit, counts.none) == (2, 0, 1, 1)
    assert counts.missing_kernels == ["_Z13hopper_kernelPi"]
    assert not report.ok
    assert "1 of 2 kernel groups have no code for sm_120" in "\n".join(report.notes())
    # Required explicitly, it still fails: the union of archs would have said "1 via PTX JIT".
    assert not audit.audit_path(two_units, ["12.0"], require=["libtwo.so"]).ok


def test_partial_library_natively_complete_on_one_gpu(nvcc_toolchain, two_units):
    """Built again with the old unit carrying sm_90 SASS too: native on 9.0, still partial on 12.0."""
    out = two_units.parent
    old = (out / "old_arch").read_text()
    nvcc = str(nvcc_toolchain.nvcc)
    subprocess.run([nvcc, "-c", "-Xcompiler", "-fPIC", "-gencode", f"arch=compute_{old},code=[sm_{old},compute_{old}]",
                    "-gencode", "arch=compute_90,code=sm_90", "-o", str(out / "old90.o"), str(out / "old.cu")],
                   check=True, capture_output=True)
    library = out / "libtwo90.so"
    subprocess.run([nvcc, "-shared", "-o", str(library), str(out / "old90.o"), str(out / "hopper.o")],
                   check=True, capture_output=True)
    (f,) = audit.audit_path(library, ["12.0", "9.0"]).files
    assert f.verdict == {"sm_120": "partial", "sm_90": "native"}
