"""Run an all-reduce across the GPUs and judge it: nccl-tests ``all_reduce_perf`` where it exists,
else ``vllm_forge/nccl/nccl_allreduce.py`` through torch.distributed (same table). Always with
``NCCL_DEBUG=INFO`` and ``NCCL_DEBUG_FILE`` into the output directory, whose files are then read by
``vllm_forge/nccl/nccl_logs.py``.

    python -m vllm_forge.nccl.nccl_test [--gpus N] [--sizes 8:128M] [--out DIR] [--image TAG] \
        [--runner auto|nccl-tests|torch]
    python -m vllm_forge.nccl.nccl_test --build-nccl-tests SRC [--nccl-home DIR] [--dry-run]

Stdlib only; torch is needed by the torch runner on the machine (or in the image) that runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.core.nofollow import write_file
from vllm_forge.core.package import python_path
from vllm_forge.core.validate import check_image_ref
from vllm_forge.nccl import nccl_logs

REPO_ROOT = Path(__file__).resolve().parents[2]
ALLREDUCE_SCRIPT = Path(__file__).resolve().parent / "nccl_allreduce.py"
ALLREDUCE_MODULE = "vllm_forge.nccl.nccl_allreduce"
DEFAULT_BUILD_DIR = REPO_ROOT / "build" / "nccl-tests"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
# Settings every run gets unless the caller's environment already sets them. NVLS stays off: it
# needs the fabric manager / IMEX inside containers and is not what a start-up check is about.
DEFAULT_NCCL_ENV = {"NCCL_NVLS_ENABLE": "0"}

# How to bake nccl-tests into an image (no heredoc, no `# syntax=`; the NCCL is the one torch uses).
NCCL_TESTS_DOCKERFILE_SNIPPET = """\
# nccl-tests against the NCCL that PyTorch ships (pip nvidia-nccl-cu1x): all_reduce_perf in /opt/nccl-tests/build
ARG NCCL_TESTS_REF=master
RUN git clone --depth 1 --branch ${NCCL_TESTS_REF} https://github.com/NVIDIA/nccl-tests.git /opt/nccl-tests \\
 && NCCL_HOME=$(python3 -c "import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))") \\
 && make -C /opt/nccl-tests/src -j"$(nproc)" MPI=0 NCCL_HOME="$NCCL_HOME" CUDA_HOME=/usr/local/cuda \\
      NVCC_GENCODE="${NCCL_TESTS_GENCODE:--gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_120,code=sm_120}" \\
      BUILDDIR=/opt/nccl-tests/build \\
 && ln -s $NCCL_HOME/lib/libnccl.so.2 $NCCL_HOME/lib/libnccl.so 2>/dev/null || true
ENV PATH=/opt/nccl-tests/build:$PATH
"""


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise ForgeError(f"{text!r} is not a size", "write sizes like 8, 64K, 128M or 1G")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def parse_sizes(spec: str) -> tuple[int, int]:
    """``8:128M`` -> (8, 134217728); one size means that size only."""
    parts = [p for p in str(spec).split(":")]
    if len(parts) == 1:
        size = parse_size(parts[0])
        return size, size
    if len(parts) != 2:
        raise ForgeError(f"--sizes {spec!r} is not MIN:MAX", "write --sizes 8:128M")
    low, high = parse_size(parts[0]), parse_size(parts[1])
    if low > high:
        raise ForgeError(f"--sizes {spec}: the minimum is above the maximum", "write the smaller size first")
    return low, high


def human_size(size: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


# ---------------------------------------------------------------------------------------------------
# Finding and building nccl-tests
# ---------------------------------------------------------------------------------------------------
def find_all_reduce_perf(explicit: str | None = None, env: dict | None = None) -> Path | None:
    env = os.environ if env is None else env
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ForgeError(f"{path} does not exist", "pass the all_reduce_perf binary built by --build-nccl-tests")
        return path
    candidates = []
    if env.get("NCCL_TESTS_DIR"):
        candidates += [Path(env["NCCL_TESTS_DIR"]) / "all_reduce_perf",
                       Path(env["NCCL_TESTS_DIR"]) / "build" / "all_reduce_perf"]
    found = shutil.which("all_reduce_perf", path=env.get("PATH"))
    if found:
        candidates.append(Path(found))
    candidates.append(DEFAULT_BUILD_DIR / "build" / "all_reduce_perf")
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def find_nccl_home() -> Path | None:
    """A directory with include/nccl.h and lib/libnccl.so*: pip's nvidia-nccl package, then the system."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("nvidia.nccl")
        if spec and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                home = Path(location)
                if (home / "include" / "nccl.h").is_file():
                    return home
    except (ImportError, ValueError):
        pass
    for home in (Path("/usr/local/nccl"), Path("/usr/local"), Path("/usr")):
        if (home / "include" / "nccl.h").is_file() and any((home / "lib").glob("libnccl.so*")):
            return home
    return None


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    why: str = ""

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (f"cd {shlex.quote(self.cwd)} && " if self.cwd else "") + (env + " " if env else "") + shlex.join(
            self.argv)


def gencode_for(capabilities: list[str]) -> str:
    """nvcc -gencode flags for the GPUs' capabilities ("9.0" -> sm_90), plus PTX of the newest."""
    nums = sorted({c.replace(".", "") for c in capabilities if re.fullmatch(r"\d+\.\d+", c)}, key=int)
    if not nums:
        raise ForgeError("no GPU capability to build nccl-tests for", "pass --gpu-cap 12.0 (or run on the GPU host)")
    flags = [f"-gencode=arch=compute_{n},code=sm_{n}" for n in nums]
    flags.append(f"-gencode=arch=compute_{nums[-1]},code=compute_{nums[-1]}")
    return " ".join(flags)


def plan_nccl_tests_build(src: Path, nccl_home: Path | None, *, cuda_home: str | None = None,
                          capabilities: list[str] | None = None, jobs: int = 0,
                          build_dir: Path | None = None) -> list[Command]:
    """``make MPI=0 NCCL_HOME=...`` in an NVIDIA/nccl-tests checkout, for exactly the GPUs named."""
    src = Path(src)
    if not (src / "src" / "Makefile").is_file():
        raise ForgeError(f"{src} is not an nccl-tests checkout (no src/Makefile)",
                         "git clone https://github.com/NVIDIA/nccl-tests and pass its path")
    if nccl_home is None:
        raise ForgeError("no NCCL with headers found (pip nvidia-nccl-cu12/cu13 or /usr/include/nccl.h)",
                         "pass --nccl-home DIR (the directory holding include/nccl.h and lib/libnccl.so.2)")
    nccl_home = Path(nccl_home)
    argv = ["make", "-C", str(src / "src"), f"-j{jobs or os.cpu_count() or 1}", "MPI=0", f"NCCL_HOME={nccl_home}",
            f"BUILDDIR={build_dir or (src / 'build')}"]
    if cuda_home:
        argv.append(f"CUDA_HOME={cuda_home}")
    if capabilities:
        argv.append(f"NVCC_GENCODE={gencode_for(capabilities)}")
    commands = []
    lib = nccl_home / "lib"
    if not (lib / "libnccl.so").exists() and (lib / "libnccl.so.2").exists():
        # pip's wheel ships only libnccl.so.2; the linker's -lnccl needs the unversioned name
        commands.append(Command(["ln", "-sf", "libnccl.so.2", str(lib / "libnccl.so")],
                                why="pip's NCCL ships only libnccl.so.2; -lnccl needs libnccl.so"))
    commands.append(Command(argv, why="nccl-tests without MPI, against the NCCL in use"))
    return commands


def build_nccl_tests(commands: list[Command], *, runner=subprocess.run) -> Path:
    for command in commands:
        result = runner(command.argv, env={**os.environ, **command.env}, cwd=command.cwd, capture_output=True,
                        text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise ForgeError(f"`{command.shell()}` failed (exit {result.returncode}):\n{tail}",
                             "check CUDA_HOME/NCCL_HOME and that nvcc supports the archs in NVCC_GENCODE",
                             exit_code=1)
    build = next((a.split("=", 1)[1] for a in commands[-1].argv if a.startswith("BUILDDIR=")), "")
    return Path(build) / "all_reduce_perf"


# ---------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------
@dataclass
class RunPlan:
    runner: str  # "nccl-tests" | "torch"
    command: Command
    out_dir: Path
    output_file: Path
    gpus: int
    image: str = ""
    notes: list[str] = field(default_factory=list)
    blocker: str = ""  # why this plan cannot run here (a dry run still prints it)


def _nccl_env(debug_file: str, base: dict | None = None) -> dict[str, str]:
    base = os.environ if base is None else base
    env = {"NCCL_DEBUG": "INFO", "NCCL_DEBUG_FILE": debug_file}
    for key, value in DEFAULT_NCCL_ENV.items():
        if key not in base:
            env[key] = value
    return env


def torch_importable(python: str = sys.executable, runner=subprocess.run) -> bool:
    """Whether ``python`` can import torch (the torch runner's one requirement)."""
    if python == sys.executable:
        import importlib.util

        return importlib.util.find_spec("torch") is not None
    try:
        return runner([python, "-c", "import torch"], capture_output=True, timeout=120, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


NO_RUNNER_FIX = ("install torch for this Python (pip install torch, CUDA wheels from download.pytorch.org), or pass "
                 "--binary PATH/TO/all_reduce_perf (build it with --build-nccl-tests PATH/TO/nccl-tests)")


def plan_run(*, gpus: int, sizes: str = "8:128M", out_dir: Path, runner: str = "auto", binary: str | None = None,
             image: str = "", python: str = sys.executable, docker: str = "docker", iters: int = 20,
             env: dict | None = None, has_torch=None) -> RunPlan:
    if gpus < 1:
        raise ForgeError(f"--gpus {gpus}: need at least one GPU", "pass --gpus 1 or more")
    if runner not in ("auto", "nccl-tests", "torch"):
        raise ForgeError(f"--runner {runner!r} is unknown", "use auto, nccl-tests or torch")
    if image:
        check_image_ref(image, "--image")  # docker reads it after its options: never one itself
    low, high = parse_sizes(sizes)
    out_dir = Path(out_dir).resolve()
    notes: list[str] = []
    size_args = ["-b", str(low), "-e", str(high), "-f", "2", "-n", str(iters)]
    if image:
        inner_out = "/forge-out"
        nccl_env = _nccl_env(f"{inner_out}/nccl_debug.%h.%p.log", env)
        argv = [docker, "run", "--rm", "--gpus", "all", "--ipc=host", "--ulimit", "memlock=-1",
                "-v", f"{out_dir}:{inner_out}"]
        for key, value in nccl_env.items():
            argv += ["-e", f"{key}={value}"]
        if runner == "nccl-tests" or binary:
            argv += ["--entrypoint", binary or "all_reduce_perf", image, *size_args, "-g", str(gpus)]
            chosen = "nccl-tests"
        else:
            argv += ["-v", f"{ALLREDUCE_SCRIPT.parent}:/forge-scripts:ro", "--entrypoint", "python3", image,
                     "/forge-scripts/nccl_allreduce.py", "--nproc", str(gpus), *size_args]
            chosen = "torch"
            notes.append("torch.distributed runner inside the image (pass --runner nccl-tests --binary PATH when "
                         "the image has all_reduce_perf)")
        command = Command(argv, why=f"all-reduce inside {image}")
    else:
        found = find_all_reduce_perf(binary, env) if runner in ("auto", "nccl-tests") else None
        if runner == "nccl-tests" and found is None:
            raise ForgeError("all_reduce_perf was not found (PATH, $NCCL_TESTS_DIR, build/nccl-tests/build)",
                             "build it: invoke nccl-test --build-nccl-tests PATH/TO/nccl-tests, or use --runner torch")
        nccl_env = _nccl_env(str(out_dir / "nccl_debug.%h.%p.log"), env)
        if found is not None:
            command = Command([str(found), *size_args, "-g", str(gpus)], nccl_env, why="nccl-tests all_reduce_perf")
            chosen = "nccl-tests"
        else:
            # Here a module of this package; inside an image (above) a file of its own: it imports nothing of ours.
            command = Command([python, "-m", ALLREDUCE_MODULE, "--nproc", str(gpus), *size_args],
                              {**nccl_env, **python_path(environ=env)},
                              why="torch.distributed all-reduce (no all_reduce_perf found)")
            chosen = "torch"
            notes.append("all_reduce_perf not found: using torch.distributed (build nccl-tests with "
                         "--build-nccl-tests for NCCL's own benchmark)")
            if not (has_torch if has_torch is not None else torch_importable(python)):
                blocker = f"{python} cannot import torch and no all_reduce_perf was found"
                notes.append(f"{blocker}: {NO_RUNNER_FIX}")
                return RunPlan(chosen, command, out_dir, out_dir / "all_reduce.txt", gpus, image, notes, blocker)
    return RunPlan(chosen, command, out_dir, out_dir / "all_reduce.txt", gpus, image, notes)


@dataclass
class RunOutcome:
    plan: RunPlan
    returncode: int
    result: nccl_logs.NcclTestsRun
    reports: list[nccl_logs.FileReport]
    files: list[Path]
    root_cause: nccl_logs.RootCause | None = None

    @property
    def level(self) -> str:
        return nccl_logs.worst_level([f for r in self.reports for f in r.findings])

    def to_dict(self) -> dict:
        return {"runner": self.plan.runner, "command": self.plan.command.shell(), "returncode": self.returncode,
                "level": self.level, "out_dir": str(self.plan.out_dir), "files": [str(f) for f in self.files],
                "result": self.result.to_dict(),
                "root_cause": self.root_cause.to_dict() if self.root_cause else None,
                "reports": [r.to_dict() for r in self.reports]}


TOPOLOGY_FILES = (("topo.txt", ["topo", "-m"]), ("topo_p2p.txt", ["topo", "-p2p", "r"]),
                  ("gpus.csv", ["--query-gpu=index,name,compute_cap,pcie.link.gen.max,pcie.link.width.max",
                                "--format=csv"]))


def record_topology(out_dir: Path, runner=subprocess.run) -> list[Path]:
    """Save ``nvidia-smi topo -m``, ``topo -p2p r`` and the GPUs' capability and PCIe generation/width next to
    the logs (when nvidia-smi exists): the link model needs all three to say what the link should carry."""
    if not shutil.which("nvidia-smi"):
        return []
    saved = []
    for name, args in TOPOLOGY_FILES:
        try:
            result = runner(["nvidia-smi", *args], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if result.returncode == 0 and result.stdout.strip():
            write_file(out_dir / name, result.stdout)
            saved.append(out_dir / name)
    return saved


def analyse_outputs(out_dir: Path, output_file: Path, ctx: nccl_logs.Context | None = None,
                    ) -> tuple[nccl_logs.NcclTestsRun, list[nccl_logs.FileReport], list[Path]]:
    files = [output_file] + sorted(p for p in out_dir.glob("nccl_debug*.log")) + [
        out_dir / name for name, _ in TOPOLOGY_FILES if (out_dir / name).is_file()]
    files = [f for f in files if f.is_file()]
    reports = nccl_logs.diagnose_files(files, ctx) if files else []
    text = output_file.read_text(errors="replace") if output_file.is_file() else ""
    return nccl_logs.parse_nccl_tests(text), reports, files


def run_env(plan: RunPlan, base: dict | None = None) -> dict[str, str]:
    """The NCCL_* settings the run sees: the caller's environment, then the plan's own."""
    base = os.environ if base is None else base
    return {k: v for k, v in {**base, **plan.command.env}.items() if k.startswith("NCCL_")
            and k not in ("NCCL_DEBUG", "NCCL_DEBUG_FILE")}


def run_plan(plan: RunPlan, *, runner=subprocess.run, timeout: int = 1800, on_line=None) -> RunOutcome:
    if plan.blocker:
        raise ForgeError(plan.blocker, NO_RUNNER_FIX)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    for old in plan.out_dir.glob("nccl_debug*.log"):
        old.unlink()
    topo_files = [] if plan.image else record_topology(plan.out_dir)
    try:
        result = runner(plan.command.argv, env={**os.environ, **plan.command.env}, capture_output=True, text=True,
                        timeout=timeout, check=False)
        output, code = (result.stdout or "") + (result.stderr or ""), result.returncode
    except FileNotFoundError as err:
        raise ForgeError(f"cannot run {plan.command.argv[0]}: {err.strerror}",
                         "install it, or pick another --runner") from None
    except subprocess.TimeoutExpired as err:
        output = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        output += f"\nTest timeout: the all-reduce did not finish in {timeout} s (hung collective?)\n"
        code = 124
    write_file(plan.output_file, output)  # never through a link planted in the output dir
    if on_line:
        for line in output.splitlines():
            on_line(line)
    ctx = nccl_logs.Context(env=run_env(plan), debug_logs=str(plan.out_dir / "nccl_debug.*.log"))
    parsed, reports, files = analyse_outputs(plan.out_dir, plan.output_file, ctx)
    if code != 0 and not parsed.failures:
        parsed.failures.append(f"exit status {code}")
        reports[0].findings.insert(0, nccl_logs.Finding(
            "fail", "exit-status", f"{plan.command.argv[0]} exited with status {code}",
            f"read {plan.output_file} and the nccl_debug logs next to it"))
    cause = nccl_logs.find_root_cause(reports, ctx)
    return RunOutcome(plan, code, parsed, reports, files + [f for f in topo_files if f not in files], cause)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nccl_test.py", description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=0, help="GPUs to use (0: all that nvidia-smi lists, else 1)")
    parser.add_argument("--sizes", default="8:128M", help="MIN:MAX message sizes, doubling (8:128M)")
    parser.add_argument("--out", default="build/nccl-test", help="directory for the output and NCCL debug logs")
    parser.add_argument("--runner", default="auto", help="auto (nccl-tests if found), nccl-tests or torch")
    parser.add_argument("--binary", default=None, help="all_reduce_perf to run")
    parser.add_argument("--image", default="", help="run inside this image (docker run --gpus all)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--build-nccl-tests", metavar="SRC", default="", help="build nccl-tests from this checkout")
    parser.add_argument("--nccl-home", default="", help="NCCL to build against (default: pip's nvidia-nccl)")
    parser.add_argument("--gpu-cap", action="append", default=[], help="compute capability to build for (9.0)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.build_nccl_tests:
        home = Path(args.nccl_home) if args.nccl_home else find_nccl_home()
        commands = plan_nccl_tests_build(Path(args.build_nccl_tests), home, capabilities=args.gpu_cap or None)
        for command in commands:
            print(command.shell())
        if not args.dry_run:
            print(f"built {build_nccl_tests(commands)}")
        return 0
    gpus = args.gpus or count_gpus() or 1
    plan = plan_run(gpus=gpus, sizes=args.sizes, out_dir=Path(args.out), runner=args.runner, binary=args.binary,
                    image=args.image, iters=args.iters)
    if args.dry_run:
        for note in plan.notes:
            print(f"# {note}")
        print(plan.command.shell())
        return 0
    outcome = run_plan(plan)
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2, default=str))
    else:
        print(plan.output_file.read_text(errors="replace"))
        print(nccl_logs.render_text(outcome.reports, outcome.root_cause))
    return 1 if outcome.level == "fail" else 0


def count_gpus(runner=subprocess.run) -> int:
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        result = runner(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True,
                        timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    return len([line for line in result.stdout.splitlines() if line.strip()]) if result.returncode == 0 else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
