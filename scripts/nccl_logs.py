"""Read what multi-GPU start-up failures leave behind and say what went wrong and how to fix it.

Understands, and tells apart by content: NCCL debug logs (``NCCL_DEBUG=INFO``/``TRACE``, also
application logs that quote NCCL errors), nccl-tests outputs (``all_reduce_perf`` tables and their
failure lines; the torch.distributed stand-in prints the same table), ``nvidia-smi topo -m``,
``nvidia-smi topo -p2p r``, ``nvidia-smi -q`` and bundles of ``== section`` blocks holding several.

    python scripts/nccl_logs.py diagnose FILE... [--json] [--gpu-cap 12.0]

exits 1 when any file shows a failure. Stdlib only (reads ``scripts.compat`` for the tables).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/nccl_logs.py`: make the `scripts` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import compat
from scripts.errors import ForgeError, run_main

LEVELS = ("pass", "info", "warn", "fail")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """``nvidia-smi topo`` underlines its header with ANSI codes; drop them (and stray CRs)."""
    return _ANSI_RE.sub("", text).replace("\r", "")


@dataclass
class Finding:
    """One verdict: pass / info / warn / fail, what was seen, and the fix."""

    level: str
    check: str
    message: str
    fix: str = ""
    source: str = ""  # where the cause is documented (issue, release note)
    evidence: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def worst_level(findings: list[Finding]) -> str:
    order = {"pass": 0, "info": 0, "warn": 1, "fail": 2}
    worst = "pass"
    for item in findings:
        if order.get(item.level, 0) > order[worst]:
            worst = item.level
    return worst


def parse_version(text: str) -> tuple[int, ...] | None:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


def version_str(version: tuple[int, ...] | None) -> str:
    return ".".join(str(p) for p in version) if version else "?"


# ---------------------------------------------------------------------------------------------------
# nccl-tests output
# ---------------------------------------------------------------------------------------------------
@dataclass
class Measure:
    time_us: float | None
    algbw: float | None
    busbw: float | None
    wrong: int | None


@dataclass
class CollRow:
    size: int
    count: int
    dtype: str
    redop: str
    root: int
    out_of_place: Measure | None
    in_place: Measure | None

    def best_busbw(self) -> float | None:
        values = [m.busbw for m in (self.out_of_place, self.in_place) if m and m.busbw is not None]
        return max(values) if values else None

    def wrong(self) -> int:
        return sum(m.wrong or 0 for m in (self.out_of_place, self.in_place) if m)


@dataclass
class TestDevice:
    rank: int
    pid: int
    host: str
    device: int
    bus: str
    name: str


@dataclass
class NcclTestsRun:
    ngpus: int | None = None
    nthreads: int | None = None
    min_bytes: int | None = None
    max_bytes: int | None = None
    nranks: int | None = None  # from the device lines (all ranks of the run)
    devices: list[TestDevice] = field(default_factory=list)
    rows: list[CollRow] = field(default_factory=list)
    avg_busbw: float | None = None
    out_of_bounds: int | None = None
    failures: list[str] = field(default_factory=list)
    runner: str = "nccl-tests"  # or "torch.distributed" (scripts/nccl_allreduce.py)
    nccl_version: str = ""

    @property
    def ranks(self) -> int:
        return self.nranks or len(self.devices) or (self.ngpus or 0) * (self.nthreads or 1)

    def large_rows(self, threshold: int = 64 << 20) -> list[CollRow]:
        rows = [r for r in self.rows if r.size >= threshold]
        return rows or self.rows[-1:]

    def peak_busbw(self) -> float | None:
        values = [r.best_busbw() for r in self.large_rows()]
        values = [v for v in values if v is not None]
        return max(values) if values else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["peak_busbw"] = self.peak_busbw()
        return data


_HEADER_RE = re.compile(
    r"#\s*nThread\s+(?P<nthreads>\d+)\s+nGpus\s+(?P<ngpus>\d+)\s+minBytes\s+(?P<min>\d+)\s+maxBytes\s+(?P<max>\d+)")
_DEVICE_RE = re.compile(
    r"#\s+Rank\s+(?P<rank>\d+)\s+Group\s+\d+\s+Pid\s+(?P<pid>\d+)\s+on\s+(?P<host>\S+)\s+device\s+(?P<dev>\d+)\s+"
    r"\[(?P<bus>[^\]]*)\]\s+(?P<name>.+?)\s*$")
_FAILURE_RE = re.compile(r"(Test (?:NCCL|CUDA) failure .*|Test failure \S+|Invalid number of GPUs.*|"
                         r"Incompatible NCCL versions.*|Test timeout.*)")
_NUM_RE = re.compile(r"^-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?$")


def _num(token: str) -> float | None:
    if _NUM_RE.match(token):
        return float(token)
    return None


def _measure(tokens: list[str]) -> Measure | None:
    if len(tokens) < 4:
        return None
    time_us, algbw, busbw, wrong = (_num(t) for t in tokens[:4])
    if time_us is None and algbw is None and busbw is None:
        return None
    return Measure(time_us, algbw, busbw, int(wrong) if wrong is not None else None)


def _parse_row(line: str, group: int) -> CollRow | None:
    tokens = line.split()
    if len(tokens) < 9 or not tokens[0].isdigit() or not tokens[1].isdigit():
        return None
    if not re.match(r"^-?\d+$", tokens[4]) or _num(tokens[2]) is not None:
        return None
    rest = tokens[5:]
    oop = _measure(rest[:4])
    ip = _measure(rest[group:group + 4]) if len(rest) >= group + 4 else None
    if oop is None and ip is None:
        return None
    return CollRow(int(tokens[0]), int(tokens[1]), tokens[2], tokens[3], int(tokens[4]), oop, ip)


def parse_nccl_tests(text: str) -> NcclTestsRun:
    """Parse an nccl-tests ``*_perf`` output (old and new column layouts) or its torch stand-in."""
    run = NcclTestsRun()
    group = 4
    for raw in strip_ansi(text).splitlines():
        line = raw.rstrip()
        if m := _HEADER_RE.search(line):
            run.nthreads, run.ngpus = int(m["nthreads"]), int(m["ngpus"])
            run.min_bytes, run.max_bytes = int(m["min"]), int(m["max"])
        elif m := _DEVICE_RE.match(line):
            run.devices.append(TestDevice(int(m["rank"]), int(m["pid"]), m["host"], int(m["dev"]), m["bus"],
                                          m["name"]))
        elif line.startswith("#") and re.search(r"\bsize\b.*\bcount\b.*\btype\b", line):
            group = 8 if "i_min" in line else 4
        elif m := re.match(r"#\s*Avg bus bandwidth\s*:\s*(\S+)\s*(FAILED)?", line):
            run.avg_busbw = _num(m.group(1))
            if m.group(2):
                run.failures.append(line.lstrip("# "))
        elif m := re.match(r"#\s*Out of bounds values\s*:\s*(\d+)", line):
            run.out_of_bounds = int(m.group(1))
            if run.out_of_bounds:
                run.failures.append(line.lstrip("# "))
        elif m := re.match(r"#\s*runner\s*:\s*(.+)", line):
            run.runner = m.group(1).strip()
        elif m := re.match(r"#\s*nccl-tests version \S+ nccl-headers=\d+ nccl-library=(\d+)", line):
            code = int(m.group(1))
            run.nccl_version = f"{code // 10000}.{code // 100 % 100}.{code % 100}" if code >= 10000 else str(code)
        elif m := re.match(r"#\s*NCCL version\s*:\s*(\S+)", line):
            run.nccl_version = m.group(1)
        elif m := _FAILURE_RE.search(line):
            run.failures.append(m.group(1).strip())
        elif not line.startswith("#"):
            row = _parse_row(line, group)
            if row is not None:
                run.rows.append(row)
    if run.devices:
        run.nranks = len(run.devices)
    elif run.nranks is None:
        run.nranks = ranks_from_bandwidths(run.rows)
    for row in run.rows:
        if row.wrong():
            run.failures.append(f"{row.wrong()} wrong elements at size {row.size} (data corruption)")
    return run


def ranks_from_bandwidths(rows: list[CollRow]) -> int | None:
    """All-reduce busbw = algbw * 2(n-1)/n, so n = 2 / (2 - busbw/algbw); None when no row tells."""
    for row in reversed(rows):
        for m in (row.in_place, row.out_of_place):
            if m and m.algbw and m.busbw is not None and m.algbw > 1:
                ratio = m.busbw / m.algbw
                if ratio < 1.99:
                    return max(1, round(2 / (2 - ratio)))
    return None


_KV_ROW_RE = re.compile(r"size=(\d+)\s+time_us=([\d.]+)\s+algbw=([\d.]+)\s+busbw=([\d.]+)(?:\s+ok=(\w+))?")


def parse_allreduce_kv(text: str) -> NcclTestsRun:
    """The ``size=... time_us=... algbw=... busbw=... ok=...`` lines of a quick torch all-reduce."""
    run = NcclTestsRun(runner="torch.distributed (key=value)")
    for line in strip_ansi(text).splitlines():
        if m := _KV_ROW_RE.search(line):
            size = int(m.group(1))
            ok = (m.group(5) or "True").lower() == "true"
            measure = Measure(float(m.group(2)), float(m.group(3)), float(m.group(4)), 0 if ok else 1)
            run.rows.append(CollRow(size, size // 4, "float", "sum", -1, None, measure))
            if not ok:
                run.failures.append(f"wrong result at size {size}")
        elif m := re.match(r"exit=(\d+)", line.strip()):
            if int(m.group(1)) != 0:
                run.failures.append(f"the all-reduce exited with status {m.group(1)}")
    run.nranks = ranks_from_bandwidths(run.rows)
    return run


# ---------------------------------------------------------------------------------------------------
# nvidia-smi topo -m / topo -p2p
# ---------------------------------------------------------------------------------------------------
@dataclass
class TopoMatrix:
    kind: str  # "topo" (link types) or "p2p" (P2P status)
    devices: list[str]
    cells: dict[str, dict[str, str]]
    cpu_affinity: dict[str, str] = field(default_factory=dict)
    numa_affinity: dict[str, str] = field(default_factory=dict)

    def gpus(self) -> list[str]:
        return [d for d in self.devices if d.startswith("GPU")]

    def gpu_pairs(self) -> list[tuple[str, str, str]]:
        gpus = self.gpus()
        return [(a, b, self.cells.get(a, {}).get(b, "?")) for i, a in enumerate(gpus) for b in gpus[i + 1:]]

    def to_dict(self) -> dict:
        return asdict(self)


_DEVICE_NAME_RE = re.compile(r"^(GPU\d+|NIC\d+|mlx\d+_\d+)$")
P2P_CODES = {"OK": "supported", "CNS": "chipset not supported", "GNS": "GPU not supported",
             "TNS": "topology not supported", "NS": "not supported", "U": "unknown"}


def parse_topo_matrix(text: str) -> TopoMatrix | None:
    """``nvidia-smi topo -m`` (link types) or ``topo -p2p r|w|...`` (P2P status), ANSI codes or not."""
    lines = [line.rstrip() for line in strip_ansi(text).splitlines()]
    header_at = None
    devices: list[str] = []
    for i, line in enumerate(lines):
        tokens = line.split()
        # the header starts with whitespace, or (pasted without it) lists only names: "GPU0 GPU1 CPU Affinity"
        if tokens and tokens[0] == "GPU0" and (line[:1] in ("\t", " ") or len(tokens) == 1
                                                or _DEVICE_NAME_RE.match(tokens[1]) or tokens[1] == "CPU"):
            header_at, devices = i, [t for t in tokens if _DEVICE_NAME_RE.match(t)]
            break
    if header_at is None or not devices:
        return None
    cells: dict[str, dict[str, str]] = {}
    cpu, numa = {}, {}
    for line in lines[header_at + 1:]:
        tokens = line.split()
        if not tokens:
            if cells:
                break
            continue
        if tokens[0] not in devices:
            if cells:
                break
            continue
        values = tokens[1:1 + len(devices)]
        if len(values) < len(devices):
            continue
        cells[tokens[0]] = dict(zip(devices, values, strict=True))
        extra = tokens[1 + len(devices):]
        if extra:
            cpu[tokens[0]] = extra[0]
        if len(extra) > 1:
            numa[tokens[0]] = extra[1]
    if not cells:
        return None
    values = {v for row in cells.values() for v in row.values()} - {"X"}
    body = "\n".join(lines)
    is_p2p = bool(values) and values <= set(P2P_CODES) or "CNS  = Chipset not supported" in body
    return TopoMatrix("p2p" if is_p2p else "topo", devices, cells, cpu, numa)


LINK_WORDS = {
    "PIX": "at most one PCIe bridge",
    "PXB": "several PCIe bridges, no host bridge",
    "PHB": "through a PCIe host bridge (the CPU)",
    "NODE": "between PCIe host bridges of one NUMA node",
    "SYS": "across NUMA nodes (QPI/UPI/Infinity Fabric)",
}


def describe_link(link: str) -> str:
    if m := re.match(r"NV(\d+)$", link):
        return f"{m.group(1)} bonded NVLinks"
    return LINK_WORDS.get(link, link)


# ---------------------------------------------------------------------------------------------------
# nvidia-smi -q
# ---------------------------------------------------------------------------------------------------
@dataclass
class SmiGpu:
    name: str = ""
    bus_id: str = ""
    architecture: str = ""
    pcie_gen_max: int | None = None
    pcie_gen_current: int | None = None
    pcie_width_max: int | None = None
    pcie_width_current: int | None = None


def parse_smi_query(text: str) -> dict:
    """Driver, CUDA and per-GPU name / bus / PCIe generation and width from ``nvidia-smi -q``."""
    facts: dict = {"driver": "", "cuda": "", "gpus": []}
    gpu: SmiGpu | None = None
    section = ""
    for line in strip_ansi(text).splitlines():
        stripped = line.strip()
        if re.match(r"^GPU [0-9A-Fa-f]{4,}:", stripped):
            gpu = SmiGpu(bus_id=stripped[4:].rstrip(":"))
            facts["gpus"].append(gpu)
            continue
        if ":" not in stripped:
            section = stripped
            continue
        key, _, value = (part.strip() for part in stripped.partition(":"))
        if key == "Driver Version":
            facts["driver"] = value
        elif key == "CUDA Version":
            facts["cuda"] = value
        elif gpu is None:
            continue
        elif key == "Product Name":
            gpu.name = value
        elif key == "Product Architecture":
            gpu.architecture = value
        elif section == "PCIe Generation" and key in ("Max", "Current"):
            number = int(value) if value.isdigit() else None
            if key == "Max":
                gpu.pcie_gen_max = number
            else:
                gpu.pcie_gen_current = number
        elif section == "Link Width" and key in ("Max", "Current"):
            number = int(value.rstrip("x")) if value.rstrip("x").isdigit() else None
            if key == "Max":
                gpu.pcie_width_max = number
            else:
                gpu.pcie_width_current = number
    facts["gpus"] = [asdict(g) for g in facts["gpus"]]
    return facts


# ---------------------------------------------------------------------------------------------------
# NCCL debug logs
# ---------------------------------------------------------------------------------------------------
_NCCL_LINE_RE = re.compile(
    r"(?:(?P<host>[\w.\-]+):(?P<pid>\d+):(?P<tid>\d+) \[(?P<dev>\d+)\] )?"
    r"(?:(?P<src>[\w/.\-]+\.(?:cc|cu|h|c|cpp):\d+) )?NCCL (?P<level>INFO|WARN|TRACE|ABORT) ?(?P<msg>.*)")
_TRANSPORT_RE = re.compile(r"Channel (\d+)(?:/\d+)? : (\d+)\[(\d+)\] -> (\d+)\[(\d+)\] (?:\[\w+\] )?via (\S+)")
_ENV_RE = re.compile(r"(NCCL_[A-Z0-9_]+) set by environment to ([^\s.]*(?:\.[^\s.]+)*)\.?")
_INIT_RE = re.compile(r"ncclCommInitRank\w* comm (\S+) rank (\d+) nranks (\d+) cudaDev (\d+)(?: nvmlDev \d+)? "
                      r"busId (\w+).*- Init (START|COMPLETE)")


@dataclass
class LogLine:
    number: int
    level: str
    source: str
    message: str
    text: str


@dataclass
class NcclLog:
    versions: list[str] = field(default_factory=list)  # "2.25.1+cuda12.8"
    driver_cuda: str = ""  # from cudaDriverVersion 12080 -> "12.8"
    hosts: set[str] = field(default_factory=set)
    pids: set[str] = field(default_factory=set)
    ranks: dict[int, dict] = field(default_factory=dict)  # rank -> {nranks, cudaDev, busId}
    init_complete: int = 0
    transports: dict[str, int] = field(default_factory=dict)  # "P2P/CUMEM" -> channel count
    env: dict[str, str] = field(default_factory=dict)
    no_ib: bool = False
    net: str = ""  # "Socket", "IB"
    nnodes: int | None = None
    smem: tuple[int, int] | None = None  # ncclMaxSharedMem N exceeds device/fn maxSharedMem M
    warns: list[LogLine] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # error lines outside NCCL's own prefix
    gpu_names: list[str] = field(default_factory=list)
    lines: int = 0

    @property
    def version(self) -> tuple[int, ...] | None:
        return parse_version(self.versions[0]) if self.versions else None

    @property
    def built_cuda(self) -> str:
        for text in self.versions:
            if m := re.search(r"\+cuda(\d+\.\d+)", text):
                return m.group(1)
        return ""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["hosts"], data["pids"] = sorted(self.hosts), sorted(self.pids)
        data["warns"] = [asdict(w) for w in self.warns[:20]]
        data["version"] = version_str(self.version) if self.version else ""
        return data


_APP_ERROR_RE = re.compile(
    r"(unhandled cuda error[^\n]*|ncclUnhandledCudaError[^\n]*|NCCL error[^\n]*|DistBackendError[^\n]*|"
    r"no kernel image is available for execution on the device|"
    r"with CUDA capability sm_\d+ is not compatible with the current PyTorch installation|"
    r"CUDA driver version is insufficient for CUDA runtime version|"
    r"Mul\w*procExecutor got fatal signal[^\n]*|Got fatal signal from worker processes[^\n]*|Cuda failure \d+ '[^']*'|"
    r"Test (?:NCCL|CUDA) failure[^\n]*|error while loading shared libraries: [^\n]*)", re.IGNORECASE)


def parse_nccl_log(text: str) -> NcclLog:
    log = NcclLog()
    for number, raw in enumerate(strip_ansi(text).splitlines(), 1):
        log.lines += 1
        line = raw.strip()
        if not line:
            continue
        if m := re.search(r"vLLM is using nccl==(\S+)", line):
            if m.group(1) not in log.versions:
                log.versions.append(m.group(1))
        if m := re.search(r"NCCL version (\d+\.\d+\.\d+\S*)", line):
            if m.group(1).rstrip(",") not in log.versions:
                log.versions.append(m.group(1).rstrip(","))
        m = _NCCL_LINE_RE.search(line)
        if not m:
            if e := _APP_ERROR_RE.search(line):
                log.errors.append(e.group(1).strip())
            continue
        if m["host"]:
            log.hosts.add(m["host"])
            log.pids.add(m["pid"])
        msg = m["msg"].strip()
        level = m["level"]
        if level in ("WARN", "ABORT"):
            log.warns.append(LogLine(number, level, m["src"] or "", msg, line))
        if d := re.match(r"cudaDriverVersion (\d+)", msg):
            code = int(d.group(1))
            log.driver_cuda = f"{code // 1000}.{code % 1000 // 10}"
        elif t := _TRANSPORT_RE.search(msg):
            log.transports[t.group(6)] = log.transports.get(t.group(6), 0) + 1
        elif e := _ENV_RE.search(msg):
            log.env[e.group(1)] = e.group(2)
        elif i := _INIT_RE.search(msg):
            rank = int(i.group(2))
            log.ranks.setdefault(rank, {"nranks": int(i.group(3)), "cudaDev": int(i.group(4)),
                                        "busId": i.group(5)})
            if i.group(6) == "COMPLETE":
                log.init_complete += 1
        elif s := re.search(r"ncclMaxSharedMem (\d+) exceeds device/fn maxSharedMem (\d+)", msg):
            log.smem = (int(s.group(1)), int(s.group(2)))
        elif "NET/IB : No device found" in msg:
            log.no_ib = True
        elif n := re.match(r"Using network (\w+)", msg):
            log.net = n.group(1)
        elif n := re.search(r"nNodes (\d+)", msg):
            log.nnodes = int(n.group(1))
        if e := _APP_ERROR_RE.search(msg) if level not in ("WARN", "ABORT") else None:
            log.errors.append(e.group(1).strip())
    return log


# ---------------------------------------------------------------------------------------------------
# Signatures: what a line means, why it happens, and the fix
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signature:
    id: str
    level: str
    pattern: str  # regex searched in WARN messages and error lines
    cause: str
    fix: str
    source: str = ""


BLACKWELL_NCCL_FIX = compat.NCCL_MIN_FOR_ARCH["12.0"][0]
VLLM_NCCL_HINT = ("install a newer NCCL into the image: pip install -U 'nvidia-nccl-cu12>={v}' (CUDA 12.x) or "
                  "'nvidia-nccl-cu13>={v}' (CUDA 13); vLLM loads torch's libnccl.so.2, or the one named by "
                  "VLLM_NCCL_SO_PATH")

SIGNATURES: list[Signature] = [
    Signature(
        "nccl-too-old-for-blackwell", "fail", r"Cuda failure 1 'invalid argument'",
        f"NCCL older than {BLACKWELL_NCCL_FIX} sizes its kernels' shared memory for data-centre GPUs; on "
        "RTX 50xx / RTX PRO Blackwell (sm_120) the first collective after a successful init fails with "
        "`Cuda failure 1 'invalid argument'` (one GPU passes, two fail with `unhandled cuda error`)",
        VLLM_NCCL_HINT.format(v=BLACKWELL_NCCL_FIX),
        "NVIDIA/nccl-tests#287, NVIDIA/nccl-tests#291; fixed in NCCL 2.26.2-1 (2025-03-12, 'Fix shared memory "
        "usage on recent Blackwell GPUs', NVIDIA/nccl#1637)"),
    Signature(
        "nvls-invalid-argument", "fail", r"nvls\.cc:\d+.*Cuda failure 1 'invalid argument'|"
        r"Cuda failure 1 'invalid argument'.*nvls",
        "NVLink SHARP (NVLS) multicast set-up failed: the container lacks the fabric manager / IMEX "
        "channel, or the driver does not expose multicast",
        "set NCCL_NVLS_ENABLE=0 (costs a little all-reduce bandwidth on NVSwitch systems)",
        "NVIDIA/nccl#1672, vllm-project/vllm#6732"),
    Signature(
        "cuda-invalid-argument", "fail", r"Cuda failure 1 'invalid argument'",
        "a CUDA call inside NCCL was rejected; the source file in the WARN line says which step "
        "(enqueue.cc: kernel launch; nvls.cc: multicast; transport/p2p.cc: peer memory)",
        "upgrade NCCL to the newest release for this CUDA; if the WARN names nvls.cc set "
        "NCCL_NVLS_ENABLE=0; if it names p2p set NCCL_P2P_DISABLE=1 to confirm",
        "NVIDIA/nccl#1410"),
    Signature(
        "cuda-out-of-memory", "fail", r"Cuda failure 2 'out of memory'|CUDA error: out of memory",
        "NCCL could not allocate its buffers: the GPU is full (another process, or "
        "gpu_memory_utilization too high)",
        "free the GPU (nvidia-smi shows who holds it) or lower vLLM's --gpu-memory-utilization"),
    Signature(
        "no-kernel-image", "fail",
        r"no kernel image is available for execution on the device|is not compatible with the current "
        r"PyTorch installation",
        "the installed PyTorch (or an extension) has no kernels for this GPU's compute capability",
        "run `invoke doctor` to see which arch is missing; install a torch built for it (cu128+ wheels "
        "for sm_120) and rebuild vLLM with --arch naming the GPU"),
    Signature(
        "driver-too-old", "fail", r"CUDA driver version is insufficient|cudaErrorInsufficientDriver",
        "the NVIDIA driver is older than the CUDA runtime needs, or no driver is loaded at all (no GPU, or a "
        "container started without --gpus)",
        "run nvidia-smi: if it fails, install the driver / add --gpus all; else upgrade the driver (`invoke "
        "doctor` names the minimum) or use an image built for an older CUDA"),
    Signature(
        "remote-peer-closed", "fail", r"Connection closed by remote peer|remote process exited|"
        r"socketProgress.*Connection reset",
        "another rank died first; this rank only saw its socket close",
        "read the log of the rank that failed first (its WARN lines come earlier)"),
    Signature(
        "missing-library", "fail", r"error while loading shared libraries: \S+|libnccl\.so[.\d]*: cannot open",
        "the program could not load a shared library (libnccl.so.2 / libcudart.so.*) at start",
        "put the library's directory on LD_LIBRARY_PATH (pip wheels keep them in site-packages/nvidia/*/lib) "
        "or install it (libnccl2 from NVIDIA's apt repository)"),
    Signature(
        "vllm-worker-died", "fail", r"Mul\w*procExecutor got fatal signal|Got fatal signal from worker processes",
        "a vLLM worker process died during start-up; vLLM only reports that it went away",
        "rerun with NCCL_DEBUG=INFO NCCL_DEBUG_FILE=/tmp/nccl.%h.%p.log and diagnose those logs; run "
        "`invoke doctor` for NCCL-versus-GPU and arch mismatches"),
    Signature(
        "unhandled-cuda-error", "fail", r"unhandled cuda error|ncclUnhandledCudaError",
        "NCCL saw a CUDA call fail; the real error is the `Cuda failure N '...'` WARN line in the "
        "NCCL_DEBUG=INFO log of the failing rank",
        "rerun with NCCL_DEBUG=INFO NCCL_DEBUG_FILE=/tmp/nccl.%h.%p.log and run `invoke nccl-diagnose` on "
        "those files", "NVIDIA/nccl-tests#287"),
]


def _first_match(pattern: str, texts: list[str]) -> str | None:
    regex = re.compile(pattern, re.IGNORECASE)
    for text in texts:
        if regex.search(text):
            return text
    return None


@dataclass
class Context:
    """Facts from other files of the same diagnosis, or from the doctor."""

    gpu_caps: list[str] = field(default_factory=list)  # "12.0"
    links: list[str] = field(default_factory=list)  # topo link types between GPU pairs
    p2p: list[str] = field(default_factory=list)  # p2p matrix statuses between GPU pairs
    pcie_gen: int | None = None
    pcie_width: int | None = None


def _blackwell_consumer(ctx: Context, log: NcclLog) -> bool:
    if any(cap.startswith("12.") for cap in ctx.gpu_caps):
        return True
    for name in log.gpu_names:
        model = compat.lookup_gpu(name)
        if model and model.capability.startswith("12."):
            return True
    return log.smem is not None


def diagnose_nccl_log(log: NcclLog, ctx: Context | None = None) -> list[Finding]:
    ctx = ctx or Context()
    findings: list[Finding] = []
    version = log.version
    texts = [w.message if not w.source else f"{w.source} {w.message}" for w in log.warns] + log.errors
    if version:
        info = f"NCCL {version_str(version)}" + (f" built for CUDA {log.built_cuda}" if log.built_cuda else "")
        if log.driver_cuda:
            info += f"; the driver supports CUDA {log.driver_cuda}"
        findings.append(Finding("info", "nccl-version", info, evidence=log.versions[:2]))
    if log.built_cuda and log.driver_cuda and parse_version(log.built_cuda) > parse_version(log.driver_cuda):
        findings.append(Finding(
            "fail", "driver-older-than-nccl-cuda",
            f"NCCL was built for CUDA {log.built_cuda} but the driver only supports CUDA {log.driver_cuda}",
            "upgrade the NVIDIA driver, or use an image whose CUDA is not newer than the driver's"))

    matched: set[str] = set()
    for cap in ctx.gpu_caps:
        row = compat.nccl_min_for_capability(cap)
        if version and row and version < parse_version(row[0]):
            findings.append(Finding(
                "fail", "nccl-too-old", f"NCCL {version_str(version)} is older than {row[0]}, the first release "
                f"that works on compute capability {cap}: {row[1]}", VLLM_NCCL_HINT.format(v=row[0]),
                evidence=log.versions[:1]))
            matched.add("nccl-too-old")
            break
    blackwell = _blackwell_consumer(ctx, log)
    too_old = version is not None and version < parse_version(BLACKWELL_NCCL_FIX)
    for sig in SIGNATURES:
        hit = _first_match(sig.pattern, texts)
        if not hit:
            continue
        if sig.id == "nccl-too-old-for-blackwell":
            if not (too_old and blackwell and not re.search(r"nvls", hit, re.IGNORECASE)):
                continue
        if sig.id == "cuda-invalid-argument" and {"nccl-too-old-for-blackwell", "nvls-invalid-argument"} & matched:
            continue
        if sig.id == "nvls-invalid-argument" and "nccl-too-old-for-blackwell" in matched:
            continue
        if sig.id in ("unhandled-cuda-error", "vllm-worker-died") and matched - {"nccl-too-old"}:
            continue  # the specific cause is already named
        matched.add(sig.id)
        message = sig.cause
        if sig.id == "vllm-worker-died" and too_old and blackwell:
            message += (f"; with NCCL {version_str(version)} on RTX 50xx the likely cause is NCCL older than "
                        f"{BLACKWELL_NCCL_FIX}")
        if sig.id == "nccl-too-old-for-blackwell":
            message = f"NCCL {version_str(version)} is too old for these GPUs: {sig.cause}"
        findings.append(Finding(sig.level, sig.id, message, sig.fix, sig.source, [hit]))

    if log.smem and too_old and "nccl-too-old-for-blackwell" not in matched:
        findings.append(Finding(
            "warn", "nccl-shared-memory",
            f"NCCL {version_str(version)} wants {log.smem[0]} bytes of shared memory but this GPU allows "
            f"{log.smem[1]}: its first collective will fail with `Cuda failure 1 'invalid argument'`",
            VLLM_NCCL_HINT.format(v=BLACKWELL_NCCL_FIX), SIGNATURES[0].source))

    findings.extend(_env_findings(log.env))
    findings.extend(_transport_findings(log, ctx))

    if log.no_ib:
        multi = (log.nnodes or 1) > 1
        findings.append(Finding(
            "warn" if multi else "info", "no-ib",
            "no InfiniBand/RoCE device: NCCL uses TCP sockets between nodes" + ("" if multi else
                                                                                 " (fine on one node)"),
            "for several nodes install the RDMA stack (rdma-core, the HCA driver) or pass the devices into "
            "the container (--device /dev/infiniband, --cap-add IPC_LOCK)" if multi else ""))
    if any("falling back to simple order" in w.message for w in log.warns) and not matched:
        findings.append(Finding(
            "info", "graph-search-fallback",
            "NCCL found no fast ring/tree path and fell back to a simple order (normal on PCIe-only hosts)",
            evidence=[w.text for w in log.warns if "falling back" in w.message][:1]))

    known = {"Could not find a path for pattern"}
    unknown = [w for w in log.warns if not any(k in w.message for k in known)
               and not any(re.search(s.pattern, w.message, re.IGNORECASE) for s in SIGNATURES)]
    if unknown:
        fatal = bool(log.errors) or any(w.level == "ABORT" for w in unknown)
        findings.append(Finding(
            "fail" if fatal else "warn", "unrecognised-warn",
            f"{len(unknown)} WARN line(s) no signature explains; the first: {unknown[0].message}",
            "read these lines (they name the source file and the failing call); rerun with NCCL_DEBUG=INFO "
            "NCCL_DEBUG_SUBSYS=INIT,ENV,GRAPH for more",
            evidence=[w.text for w in unknown[:5]]))
    elif log.errors and not matched:
        findings.append(Finding(
            "fail", "unrecognised-error", f"the log reports an error no signature explains: {log.errors[0]}",
            "rerun with NCCL_DEBUG=INFO NCCL_DEBUG_FILE=... and diagnose those files", evidence=log.errors[:5]))

    if log.init_complete and worst_level(findings) == "pass":
        nranks = max((r["nranks"] for r in log.ranks.values()), default=log.init_complete)
        transports = ", ".join(sorted(log.transports)) or "no channels logged"
        findings.append(Finding("pass", "init", f"communicator initialised ({nranks} ranks; {transports})"))
    elif not findings and not log.warns:
        findings.append(Finding("info", "no-verdict", "no NCCL init, warning or error in this log"))
    return findings


def _env_findings(env: dict[str, str]) -> list[Finding]:
    out = []
    for name, value in sorted(env.items()):
        if name == "NCCL_P2P_DISABLE" and value not in ("0", ""):
            out.append(Finding(
                "warn", "env-p2p-disable", "NCCL_P2P_DISABLE=1 is set: GPUs exchange data through host memory "
                "(SHM) even where NVLink or PCIe P2P works",
                "unset NCCL_P2P_DISABLE unless P2P is known broken on this host (ACS/IOMMU on PCIe switches)"))
        elif name == "NCCL_CUMEM_ENABLE" and value == "0":
            out.append(Finding(
                "info", "env-cumem", "NCCL_CUMEM_ENABLE=0 set by environment (vLLM sets it itself); NCCL "
                "uses legacy cudaMalloc buffers and IPC handles instead of cuMem", ""))
        elif name == "NCCL_SHM_DISABLE" and value not in ("0", ""):
            out.append(Finding("warn", "env-shm-disable", "NCCL_SHM_DISABLE=1: without P2P, traffic goes through "
                               "sockets", "unset NCCL_SHM_DISABLE"))
        elif name in ("NCCL_IB_DISABLE", "NCCL_NET_GDR_LEVEL", "NCCL_P2P_LEVEL", "NCCL_NVLS_ENABLE",
                      "NCCL_ALGO", "NCCL_PROTO"):
            out.append(Finding("info", "env", f"{name}={value} set by environment"))
    return out


def _transport_findings(log: NcclLog, ctx: Context) -> list[Finding]:
    if not log.transports:
        return []
    kinds = {name.split("/")[0] for name in log.transports}
    summary = ", ".join(f"{k} ({v} channels)" for k, v in sorted(log.transports.items()))
    if "SHM" in kinds:
        p2p_expected = [lk for lk in ctx.links if lk.startswith("NV") or lk in ("PIX", "PXB")]
        p2p_ok = any(status == "OK" for status in ctx.p2p)
        if log.env.get("NCCL_P2P_DISABLE", "0") not in ("0", "") or p2p_expected or p2p_ok:
            why = ("NCCL_P2P_DISABLE is set" if log.env.get("NCCL_P2P_DISABLE", "0") not in ("0", "") else
                   f"the topology shows {', '.join(sorted(set(p2p_expected)) or ['P2P OK'])}")
            return [Finding(
                "warn", "shm-instead-of-p2p", f"transport via SHM (host memory) although {why}: {summary}",
                "unset NCCL_P2P_DISABLE; in containers add --ipc=host (or a large --shm-size); check "
                "`nvidia-smi topo -p2p r` says OK", evidence=[summary])]
        return [Finding(
            "info", "transport", f"transport via SHM (host memory): {summary}; expected when P2P is not "
            "supported (consumer GPUs, PHB/SYS paths); bandwidth is bounded by PCIe and host memory")]
    return [Finding("pass", "transport", f"transport: {summary}")]


# ---------------------------------------------------------------------------------------------------
# Bus bandwidth against the link
# ---------------------------------------------------------------------------------------------------
def link_peak_gbps(link: str, capability: str | None = None, pcie_gen: int | None = None,
                   pcie_width: int | None = 16) -> tuple[float | None, str]:
    """Peak one-direction GB/s of a GPU pair's link and how it was worked out."""
    if m := re.match(r"NV(\d+)$", link or ""):
        count = int(m.group(1))
        per = compat.NVLINK_GBPS_PER_LINK.get(capability or "")
        if per is None and capability:
            major = capability.split(".")[0]
            per = next((v for k, v in compat.NVLINK_GBPS_PER_LINK.items() if k.split(".")[0] == major), None)
        if per is None:
            return None, f"{count} NVLinks of an unknown generation (no capability known)"
        return count * per, f"{count} NVLinks x {per:g} GB/s (compute capability {capability})"
    if link in LINK_WORDS or link == "PCIe":
        if pcie_gen is None or pcie_gen not in compat.PCIE_X16_GBPS:
            return None, f"PCIe ({link}) of unknown generation"
        width = pcie_width or 16
        peak = compat.PCIE_X16_GBPS[pcie_gen] * width / 16
        return peak, f"PCIe gen{pcie_gen} x{width} ({link}): {peak:g} GB/s"
    return None, f"unknown link {link!r}"


def judge_busbw(run: NcclTestsRun, link: str | None, capability: str | None = None,
                pcie_gen: int | None = None, pcie_width: int | None = 16) -> Finding:
    peak_seen = run.peak_busbw()
    if run.ranks <= 1:
        return Finding("info", "busbw", "one rank: bus bandwidth is 0 by definition; this only proves NCCL runs "
                       "on the GPU")
    if peak_seen is None:
        return Finding("info", "busbw", "no result rows to judge")
    if not link:
        return Finding("info", "busbw", f"{peak_seen:g} GB/s bus bandwidth at large sizes (no topology given to "
                       "judge it against; pass `nvidia-smi topo -m` output too)")
    peak, how = link_peak_gbps(link, capability, pcie_gen, pcie_width)
    if not peak:
        return Finding("info", "busbw", f"{peak_seen:g} GB/s bus bandwidth; link peak unknown: {how}")
    share = peak_seen / peak
    text = f"{peak_seen:g} GB/s bus bandwidth at large sizes = {share:.0%} of {how}"
    if share >= compat.BUSBW_SHARE["good"]:
        return Finding("pass", "busbw", text)
    fix = ("check `nvidia-smi topo -p2p r` (P2P OK?), NCCL_P2P_DISABLE/NCCL_SHM_DISABLE, the PCIe link "
           "running below its max generation/width (nvidia-smi -q, GPU Link Info), and other jobs on the GPUs")
    level = "fail" if share < compat.BUSBW_SHARE["poor"] else "warn"
    return Finding(level, "busbw", text + f" (expected >= {compat.BUSBW_SHARE['good']:.0%})", fix)


def diagnose_nccl_tests(run: NcclTestsRun, ctx: Context | None = None) -> list[Finding]:
    ctx = ctx or Context()
    findings: list[Finding] = []
    who = f"{run.runner}: {run.ranks or '?'} rank(s)"
    names = sorted({d.name for d in run.devices})
    if names:
        who += f" on {', '.join(names)}"
    if run.failures:
        hit = _first_match("|".join(s.pattern for s in SIGNATURES), run.failures)
        sig = next((s for s in SIGNATURES if hit and re.search(s.pattern, hit, re.IGNORECASE)), None)
        if sig and sig.id == "unhandled-cuda-error" and run.ranks > 1 and any(
                (compat.lookup_gpu(n) or compat.GpuModel("", "")).capability.startswith("12.") for n in names):
            message = (f"{who}: {run.failures[0]}. On RTX 50xx this is the signature of NCCL older than "
                       f"{BLACKWELL_NCCL_FIX} (one GPU passes, two fail); the NCCL_DEBUG=INFO log shows "
                       "`Cuda failure 1 'invalid argument'`")
            findings.append(Finding("fail", "nccl-tests-failed", message, VLLM_NCCL_HINT.format(v=BLACKWELL_NCCL_FIX),
                                    SIGNATURES[0].source, run.failures[:6]))
        else:
            findings.append(Finding("fail", "nccl-tests-failed", f"{who}: {run.failures[0]}",
                                    sig.fix if sig else "rerun with NCCL_DEBUG=INFO and diagnose the NCCL log",
                                    sig.source if sig else "", run.failures[:6]))
        return findings
    if not run.rows:
        findings.append(Finding("fail", "nccl-tests-empty", f"{who}: no result rows (the run stopped early)",
                                "read the output's last lines; rerun with NCCL_DEBUG=INFO"))
        return findings
    findings.append(Finding("pass", "nccl-tests-ran",
                            f"{who}: {len(run.rows)} sizes {run.rows[0].size}..{run.rows[-1].size} B, no wrong "
                            f"elements" + (f", avg busbw {run.avg_busbw:g} GB/s" if run.avg_busbw is not None else "")))
    capability = ctx.gpu_caps[0] if ctx.gpu_caps else None
    if capability is None:
        for name in names:
            if model := compat.lookup_gpu(name):
                capability = model.capability
                break
    link = _slowest_link(ctx.links)
    findings.append(judge_busbw(run, link, capability, ctx.pcie_gen, ctx.pcie_width))
    return findings


def _slowest_link(links: list[str]) -> str | None:
    if not links:
        return None
    order = ["SYS", "NODE", "PHB", "PXB", "PIX"]
    for name in order:
        if name in links:
            return name
    nv = sorted((lk for lk in links if lk.startswith("NV")), key=lambda lk: int(lk[2:] or 0))
    return nv[0] if nv else links[0]


def diagnose_topo(matrix: TopoMatrix) -> list[Finding]:
    findings = []
    pairs = matrix.gpu_pairs()
    if not pairs:
        return [Finding("info", "topo", f"{len(matrix.gpus())} GPU: nothing to connect")]
    if matrix.kind == "p2p":
        bad = [(a, b, s) for a, b, s in pairs if s != "OK"]
        if not bad:
            return [Finding("pass", "p2p", f"P2P OK between all {len(pairs)} GPU pair(s)")]
        text = ", ".join(f"{a}-{b} {s} ({P2P_CODES.get(s, s)})" for a, b, s in bad)
        return [Finding("warn", "p2p", f"P2P unavailable: {text}; NCCL moves data through host memory (SHM)",
                        "expected on GeForce cards and across host bridges; for full speed use GPUs under one "
                        "PCIe switch (PIX/PXB) or NVLink; check BIOS ACS/IOMMU settings when P2P should work")]
    by_link: dict[str, list[str]] = {}
    for a, b, link in pairs:
        by_link.setdefault(link, []).append(f"{a}-{b}")
    for link, names in sorted(by_link.items()):
        text = f"{', '.join(names)}: {link} ({describe_link(link)})"
        if link.startswith("NV"):
            findings.append(Finding("pass", "topo", text))
        elif link in ("PIX", "PXB"):
            findings.append(Finding("pass", "topo", text + "; PCIe P2P normally works here"))
        elif link in ("PHB", "NODE"):
            findings.append(Finding(
                "warn", "topo", text + "; P2P crosses the CPU's host bridge: consumer GPUs usually get no P2P "
                "here and NCCL falls back to SHM through host memory (slow, but it works)",
                "for tensor parallelism prefer GPUs behind one PCIe switch or NVLink; otherwise expect "
                "PCIe-bound all-reduce"))
        elif link == "SYS":
            findings.append(Finding(
                "warn", "topo", text + "; traffic crosses the CPU interconnect between sockets",
                "keep tensor-parallel groups on GPUs of one NUMA node (CUDA_VISIBLE_DEVICES)"))
        else:
            findings.append(Finding("info", "topo", text))
    return findings


# ---------------------------------------------------------------------------------------------------
# Recognising files, and diagnosing several together
# ---------------------------------------------------------------------------------------------------
def split_sections(text: str) -> list[tuple[str, str]]:
    """``== name`` blocks (the recorded host bundles); one unnamed section when there are none."""
    parts: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if m := re.match(r"^== (.+?)\s*$", line):
            parts.append((m.group(1), []))
        elif parts:
            parts[-1][1].append(line)
        else:
            parts.append(("", [line]))
    if len([p for p in parts if p[0]]) < 2:
        return [("", text)]
    sections = [(name, "\n".join(lines)) for name, lines in parts if "\n".join(lines).strip()]
    return sections or [("", text)]


def detect_kind(text: str) -> str:
    clean = strip_ansi(text)
    if not clean.strip():
        return "empty"
    if re.search(r"^== .+$", clean, re.M) and len(split_sections(clean)) > 1:
        return "bundle"
    if re.search(r"#\s*nThread \d+ nGpus|#\s+size\s+count\s+type|Test NCCL failure|#\s*Avg bus bandwidth", clean):
        return "nccl-tests"
    if _KV_ROW_RE.search(clean):
        return "allreduce-kv"
    if re.search(r"NVSMI LOG|^\s*Product Name\s+:", clean, re.M):
        return "smi-query"
    matrix = parse_topo_matrix(clean)
    if matrix is not None:
        return "p2p" if matrix.kind == "p2p" else "topo"
    if re.search(r"NCCL (INFO|WARN|TRACE|ABORT)|nccl==|NCCL error|ncclUnhandled|unhandled cuda error|"
                 r"error while loading shared libraries", clean):
        return "nccl-log"
    if re.search(r"^index, name, compute_cap", clean, re.M):
        return "smi-csv"
    if "NVIDIA-SMI" in clean:
        return "smi"
    return "unknown"


def parse_smi_csv(text: str) -> list[dict]:
    """``nvidia-smi --query-gpu=index,name,compute_cap,... --format=csv`` (with its header line)."""
    lines = [line for line in strip_ansi(text).splitlines() if line.strip()]
    if not lines:
        return []
    header = [h.strip().split(" [")[0] for h in lines[0].split(",")]
    rows = []
    for line in lines[1:]:
        values = [v.strip() for v in line.split(",")]
        if len(values) == len(header):
            rows.append(dict(zip(header, values, strict=True)))
    return rows


@dataclass
class FileReport:
    path: str
    kind: str
    findings: list[Finding] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    @property
    def level(self) -> str:
        return worst_level(self.findings)

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "level": self.level, "facts": self.facts,
                "findings": [f.to_dict() for f in self.findings]}


def _parsed_sections(text: str) -> list[tuple[str, str, object]]:
    out = []
    for name, body in split_sections(text):
        kind = detect_kind(body)
        parsed: object = None
        if kind == "nccl-tests":
            parsed = parse_nccl_tests(body)
        elif kind == "allreduce-kv":
            parsed = parse_allreduce_kv(body)
        elif kind in ("topo", "p2p"):
            parsed = parse_topo_matrix(body)
        elif kind == "smi-query":
            parsed = parse_smi_query(body)
        elif kind == "smi-csv":
            parsed = parse_smi_csv(body)
        elif kind == "nccl-log":
            parsed = parse_nccl_log(body)
        out.append((name, kind, parsed))
    return out


def _learn(ctx: Context, kind: str, parsed: object) -> None:
    if kind == "topo" and isinstance(parsed, TopoMatrix):
        ctx.links.extend(link for _, _, link in parsed.gpu_pairs())
    elif kind == "p2p" and isinstance(parsed, TopoMatrix):
        ctx.p2p.extend(status for _, _, status in parsed.gpu_pairs())
    elif kind == "smi-csv" and isinstance(parsed, list):
        for row in parsed:
            cap = row.get("compute_cap", "")
            if re.match(r"^\d+\.\d+$", cap) and cap not in ctx.gpu_caps:
                ctx.gpu_caps.append(cap)
            gen, width = row.get("pcie.link.gen.max", ""), row.get("pcie.link.width.max", "")
            if gen.isdigit() and ctx.pcie_gen is None:
                ctx.pcie_gen, ctx.pcie_width = int(gen), int(width) if width.isdigit() else 16
    elif kind == "smi-query" and isinstance(parsed, dict):
        for gpu in parsed.get("gpus", []):
            model = compat.lookup_gpu(gpu.get("name", ""))
            if model and model.capability not in ctx.gpu_caps:
                ctx.gpu_caps.append(model.capability)
            if gpu.get("pcie_gen_max") and ctx.pcie_gen is None:
                ctx.pcie_gen = gpu["pcie_gen_max"]
                ctx.pcie_width = gpu.get("pcie_width_max") or 16
    elif kind in ("nccl-tests", "allreduce-kv") and isinstance(parsed, NcclTestsRun):
        for device in parsed.devices:
            model = compat.lookup_gpu(device.name)
            if model and model.capability not in ctx.gpu_caps:
                ctx.gpu_caps.append(model.capability)


def _judge(kind: str, parsed: object, ctx: Context) -> tuple[list[Finding], dict]:
    if kind in ("nccl-tests", "allreduce-kv") and isinstance(parsed, NcclTestsRun):
        return diagnose_nccl_tests(parsed, ctx), parsed.to_dict()
    if kind in ("topo", "p2p") and isinstance(parsed, TopoMatrix):
        return diagnose_topo(parsed), parsed.to_dict()
    if kind == "nccl-log" and isinstance(parsed, NcclLog):
        return diagnose_nccl_log(parsed, ctx), parsed.to_dict()
    if kind == "smi-query" and isinstance(parsed, dict):
        gpus = parsed.get("gpus", [])
        text = f"{len(gpus)} GPU(s), driver {parsed.get('driver') or '?'}, CUDA {parsed.get('cuda') or '?'}"
        findings = [Finding("info", "smi", text)]
        for gpu in gpus:
            cur, top = gpu.get("pcie_gen_current"), gpu.get("pcie_gen_max")
            wcur, wtop = gpu.get("pcie_width_current"), gpu.get("pcie_width_max")
            if wcur and wtop and wcur < wtop:
                findings.append(Finding("warn", "pcie-width", f"{gpu['name']} {gpu['bus_id']}: PCIe link x{wcur} of "
                                        f"x{wtop}", "reseat the card or move it to a full-width slot"))
            elif cur and top and cur < top:
                findings.append(Finding("info", "pcie-gen", f"{gpu['name']} {gpu['bus_id']}: PCIe gen{cur} now, "
                                        f"gen{top} max (idle GPUs drop their link speed; check under load)"))
        return findings, parsed
    if kind == "smi-csv" and isinstance(parsed, list):
        names = ", ".join(f"{r.get('name', '?')} ({r.get('compute_cap', '?')})" for r in parsed)
        return [Finding("info", "gpus", f"{len(parsed)} GPU(s): {names}")], {"gpus": parsed}
    if kind == "smi":
        return [Finding("info", "smi", "nvidia-smi summary table (nothing to judge)")], {}
    if kind == "empty":
        return [Finding("info", "empty", "empty file (NCCL writes its debug file only when NCCL_DEBUG is set and "
                        "a communicator starts)")], {}
    return [Finding("warn", "unrecognised-file", "not an NCCL log, nccl-tests output or nvidia-smi topology",
                    "pass NCCL_DEBUG=INFO logs (NCCL_DEBUG_FILE), all_reduce_perf output, or "
                    "`nvidia-smi topo -m` / `topo -p2p r` output")], {}


def diagnose_texts(named_texts: list[tuple[str, str]], ctx: Context | None = None) -> list[FileReport]:
    """Diagnose several files together: a topology in one informs the verdicts on the others."""
    ctx = ctx or Context()
    parsed_files = []
    for path, text in named_texts:
        sections = _parsed_sections(text)
        for _, kind, parsed in sections:
            _learn(ctx, kind, parsed)
        parsed_files.append((path, sections))
    reports = []
    for path, sections in parsed_files:
        kinds = [kind for _, kind, _ in sections]
        report = FileReport(path, "bundle" if len(sections) > 1 else kinds[0])
        for name, kind, parsed in sections:
            findings, facts = _judge(kind, parsed, ctx)
            if len(sections) > 1:
                for f in findings:
                    f.message = f"[{name}] {f.message}"
                report.facts[name] = {"kind": kind, **(facts if isinstance(facts, dict) else {"data": facts})}
            else:
                report.facts = facts if isinstance(facts, dict) else {"data": facts}
            if len(sections) > 1 and kind in ("unknown", "smi"):
                continue  # a bundle's nvcc/pip sections are context, not verdicts
            report.findings.extend(findings)
        if not report.findings:
            report.findings.append(Finding("info", "no-verdict", "nothing to judge in this file"))
        reports.append(report)
    return reports


def diagnose_files(paths: list[Path | str], ctx: Context | None = None) -> list[FileReport]:
    named = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise ForgeError(f"{p} is not a file", "pass NCCL logs, nccl-tests outputs or nvidia-smi topo outputs")
        named.append((str(p), p.read_text(errors="replace")))
    return diagnose_texts(named, ctx)


def render_text(reports: list[FileReport]) -> str:
    lines = []
    for report in reports:
        lines.append(f"{report.path} [{report.kind}]: {report.level.upper()}")
        for f in report.findings:
            lines.append(f"  {f.level.upper():4} {f.check}: {f.message}")
            if f.fix and f.level in ("warn", "fail"):
                lines.append(f"       fix: {f.fix}")
            if f.source and f.level in ("warn", "fail"):
                lines.append(f"       see: {f.source}")
            for ev in f.evidence[:2]:
                lines.append(f"       > {ev[:200]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nccl_logs.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    diag = sub.add_parser("diagnose", help="report on NCCL logs, nccl-tests outputs and topology files")
    diag.add_argument("files", nargs="+")
    diag.add_argument("--json", action="store_true", help="machine-readable report")
    diag.add_argument("--gpu-cap", default="", help="compute capability of the GPUs, e.g. 12.0 (when the logs "
                      "do not say)")
    args = parser.parse_args(argv)
    ctx = Context(gpu_caps=[args.gpu_cap] if args.gpu_cap else [])
    reports = diagnose_files(args.files, ctx)
    if args.json:
        print(json.dumps({"level": worst_level([f for r in reports for f in r.findings]),
                          "files": [r.to_dict() for r in reports]}, indent=2, default=str))
    else:
        print(render_text(reports))
    return 1 if any(r.level == "fail" for r in reports) else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
