"""Read what multi-GPU start-up failures leave behind and say what went wrong and how to fix it.

Understands, and tells apart by content: NCCL debug logs (``NCCL_DEBUG=INFO``/``TRACE``, also
application logs that quote NCCL errors), nccl-tests outputs (``all_reduce_perf`` tables and their
failure lines; the torch.distributed stand-in prints the same table), ``nvidia-smi topo -m``,
``nvidia-smi topo -p2p r``, ``nvidia-smi -q`` and bundles of ``== section`` blocks holding several.

    python -m vllm_forge.nccl.nccl_logs diagnose FILE... [--json] [--gpu-cap 12.0]

exits 1 when any file shows a failure. Stdlib only (reads ``vllm_forge.gpu.compat`` for the tables).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_arch import ComputeCapability

LEVELS = ("pass", "info", "warn", "fail")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Every per-line pattern sees at most this much of a line: the parsers stay linear in the input
# however hostile a pasted log is (NCCL, nccl-tests and nvidia-smi lines that matter are far shorter).
MAX_LINE = 2048


def _lines(text: str) -> list[str]:
    return [line[:MAX_LINE] for line in strip_ansi(text).splitlines()]


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
    runner: str = "nccl-tests"  # or "torch.distributed" (vllm_forge/nccl/nccl_allreduce.py)
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
        for row, out in zip(self.rows, data["rows"], strict=True):
            out["busbw"] = row.best_busbw()  # what the verdict reads, per size: the figures plot it
        return data


_HEADER_RE = re.compile(
    r"#\s*nThread\s+(?P<nthreads>\d+)\s+nGpus\s+(?P<ngpus>\d+)\s+minBytes\s+(?P<min>\d+)\s+maxBytes\s+(?P<max>\d+)")
_DEVICE_RE = re.compile(
    r"#\s+Rank\s+(?P<rank>\d+)\s+Group\s+\d+\s+Pid\s+(?P<pid>\d+)\s+on\s+(?P<host>\S+)\s+device\s+(?P<dev>\d+)\s+"
    r"\[(?P<bus>[^\]]*)\]\s+(?P<name>.*)$")
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


def _is_table_header(line: str) -> bool:
    """``#  size  count  type ...``: the column header of an nccl-tests table (token test, linear)."""
    tokens = line.lstrip("#").split()
    try:
        return tokens.index("size") < tokens.index("count") < tokens.index("type")
    except ValueError:
        return False


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
    header, copy = "", False  # a table printed twice (stdout, then its file in a bundle) counts once
    for raw in _lines(text):
        line = raw.rstrip()
        if m := _HEADER_RE.search(line):
            copy = line == header and bool(run.rows)  # only the repeat of the table just read is a copy
            header = line
            run.nthreads, run.ngpus = int(m["nthreads"]), int(m["ngpus"])
            run.min_bytes, run.max_bytes = int(m["min"]), int(m["max"])
        elif (m := _DEVICE_RE.match(line)) and not any(
                (d.rank, d.pid, d.host) == (int(m["rank"]), int(m["pid"]), m["host"]) for d in run.devices):
            run.devices.append(TestDevice(int(m["rank"]), int(m["pid"]), m["host"], int(m["dev"]), m["bus"],
                                          m["name"].strip()))
        elif line.startswith("#") and _is_table_header(line):
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
            if row is not None and not copy:
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
    for line in _lines(text):
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
    lines = [line.rstrip() for line in _lines(text)]
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
    for line in _lines(text):
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
_NCCL_MARK_RE = re.compile(r"NCCL (INFO|WARN|TRACE|ABORT)\b ?")
# what may stand before the mark: "host:pid:tid [dev] " and "src/file.cc:123 " (anchored on a bounded tail)
_NCCL_PREFIX_RE = re.compile(
    r"(?:(?P<host>[\w.\-]+):(?P<pid>\d+):(?P<tid>\d+) \[(?P<dev>\d+)\] )?"
    r"(?:(?P<src>[\w/.\-]+\.(?:cc|cu|h|c|cpp):\d+) )?$")
_TRANSPORT_RE = re.compile(r"Channel (\d+)(?:/\d+)? : (\d+)\[(\d+)\] -> (\d+)\[(\d+)\] (?:\[\w+\] )?via (\S+)")
_ENV_RE = re.compile(r"(NCCL_[A-Z0-9_]{1,64}) set by environment to ([^\s.]*(?:\.[^\s.]+)*)\.?")
_INIT_RE = re.compile(r"ncclCommInitRank\w* comm (\S+) rank (\d+) nranks (\d+) cudaDev (\d+)(?: nvmlDev \d+)? "
                      r"busId (\w+)")
_LOCAL_RE = re.compile(r"nRanks (\d+) nNodes (\d+) localRanks (\d+)")


@dataclass
class NcclLine:
    host: str
    pid: str
    src: str
    level: str
    msg: str


def split_nccl_line(line: str) -> NcclLine | None:
    """``host:pid:tid [dev] src.cc:12 NCCL WARN msg`` (any part before NCCL optional), or None."""
    mark = _NCCL_MARK_RE.search(line)
    if not mark:
        return None
    prefix = _NCCL_PREFIX_RE.search(line[max(0, mark.start() - 200):mark.start()])
    groups = prefix.groupdict() if prefix else {}
    return NcclLine(groups.get("host") or "", groups.get("pid") or "", groups.get("src") or "", mark.group(1),
                    line[mark.end():].strip())


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
    init_started: int = 0
    init_complete: int = 0
    transports: dict[str, int] = field(default_factory=dict)  # "P2P/CUMEM" -> channel count
    env: dict[str, str] = field(default_factory=dict)
    no_ib: bool = False
    net: str = ""  # "Socket", "IB"
    nnodes: int | None = None
    local_ranks: int | None = None
    nranks: int | None = None
    coll_channels: int | None = None
    smem: tuple[int, int] | None = None  # ncclMaxSharedMem N exceeds device/fn maxSharedMem M
    warns: list[LogLine] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # error lines outside NCCL's own prefix
    notes: list[LogLine] = field(default_factory=list)  # INFO lines that a signature reads (harmless notices)
    gpu_names: list[str] = field(default_factory=list)
    where: dict[str, int] = field(default_factory=dict)  # "env:NCCL_X" / "transport:NET/Socket/0" -> first line
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
        data["notes"] = [asdict(w) for w in self.notes[:20]]
        data["version"] = version_str(self.version) if self.version else ""
        return data


_APP_ERROR_RE = re.compile(
    r"(unhandled cuda error[^\n]*|ncclUnhandledCudaError[^\n]*|NCCL error[^\n]*|DistBackendError[^\n]*|"
    r"no kernel image is available for execution on the device|"
    r"with CUDA capability sm_\d+ is not compatible with the current PyTorch installation|"
    r"CUDA driver version is insufficient for CUDA runtime version|"
    r"Mul\w*procExecutor got fatal signal[^\n]*|Got fatal signal from worker processes[^\n]*|Cuda failure \d+ '[^']*'|"
    r"Test (?:NCCL|CUDA) failure[^\n]*|error while loading shared libraries: [^\n]*|"
    r"custom_all_reduce\.cuh:\d+ '[^']*'|peer access is not supported between these two devices|"
    r"Insufficient space in /dev/shm[^\n]*|Fatal Python error: Bus error|\bBus error\b[^\n]*|"
    r"ncclSystemError[^\n]*|Bootstrap : no socket interface found|Test timeout[^\n]*|"
    r"Watchdog caught collective operation timeout[^\n]*|IO_PAGE_FAULT[^\n]*|DMAR: \[DMA \w+\][^\n]*)",
    re.IGNORECASE)
_NOTE_RE = re.compile(r"P2P is disabled between (?:NVLINK )?connected GPUs")


def parse_nccl_log(text: str) -> NcclLog:
    log = NcclLog()
    for number, raw in enumerate(_lines(text), 1):
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
        parsed = split_nccl_line(line)
        if parsed is None:
            if e := _APP_ERROR_RE.search(line):
                log.errors.append(e.group(1).strip())
                log.where.setdefault("error:" + e.group(1).strip(), number)
            continue
        if parsed.host:
            log.hosts.add(parsed.host)
            log.pids.add(parsed.pid)
        msg, level = parsed.msg, parsed.level
        if level in ("WARN", "ABORT"):
            log.warns.append(LogLine(number, level, parsed.src, msg, line))
        elif _NOTE_RE.search(msg):
            log.notes.append(LogLine(number, level, parsed.src, msg, line))
        if d := re.match(r"cudaDriverVersion (\d+)", msg):
            code = int(d.group(1))
            log.driver_cuda = f"{code // 1000}.{code % 1000 // 10}"
        elif t := _TRANSPORT_RE.search(msg):
            log.transports[t.group(6)] = log.transports.get(t.group(6), 0) + 1
            log.where.setdefault("transport:" + t.group(6), number)
        elif e := _ENV_RE.search(msg):
            log.env[e.group(1)] = e.group(2)
            log.where.setdefault("env:" + e.group(1), number)
        elif i := _INIT_RE.search(msg):
            rank = int(i.group(2))
            log.ranks.setdefault(rank, {"nranks": int(i.group(3)), "cudaDev": int(i.group(4)),
                                        "busId": i.group(5)})
            log.nranks = int(i.group(3))
            if msg.endswith("Init COMPLETE"):
                log.init_complete += 1
            elif msg.endswith("Init START"):
                log.init_started += 1
                log.where.setdefault(f"init:{rank}", number)
        elif s := re.search(r"ncclMaxSharedMem (\d+) exceeds device/fn maxSharedMem (\d+)", msg):
            log.smem = (int(s.group(1)), int(s.group(2)))
        elif "NET/IB : No device found" in msg:
            log.no_ib = True
        elif n := re.match(r"Using network (\w+)", msg):
            log.net = n.group(1)
        elif n := _LOCAL_RE.search(msg):
            log.nranks, log.nnodes, log.local_ranks = int(n.group(1)), int(n.group(2)), int(n.group(3))
        elif n := re.search(r"nNodes (\d+)", msg):
            log.nnodes = int(n.group(1))
        elif c := re.match(r"(\d+) coll channels", msg):
            log.coll_channels = int(c.group(1))
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


def nccl_floor(capability: str) -> tuple[str, str] | None:
    """compat's (oldest NCCL, why) for a GPU as a log, nvidia-smi or --gpu-cap names it ("12.0"); None when
    no row applies or the text is no compute capability."""
    try:
        gpu = ComputeCapability.parse(".".join(str(capability).split(".")[:2]))  # a "12.0.1" some tools print
    except ForgeError:
        return None
    return compat.nccl_min_for_capability(gpu)
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
        "nvls-invalid-argument", "fail", r"nvls\.cc:\d+[^\n]*Cuda failure (?:1 )?'invalid argument'|"
        r"Cuda failure (?:1 )?'invalid argument'[^\n]*nvls",
        "NVLink SHARP (NVLS, multicast) set-up failed in transport/nvls.cc: typically nv-fabricmanager was "
        "restarted without resetting the GPUs, or the container/driver does not expose multicast",
        "set NCCL_NVLS_ENABLE=0 to run without NVLS now (a little all-reduce bandwidth on NVSwitch systems); "
        "to fix the host, stop GPU processes, reset the GPUs (or reboot) and start nv-fabricmanager after",
        "NVIDIA/nccl#976, NVIDIA/nccl#1338, NVIDIA/nccl#1672"),
    Signature(
        "shm-segment", "fail", r"Error while (?:creating|attaching to) shared memory segment /dev/shm/nccl-|"
        r"failed to extend /dev/shm/nccl-",
        "NCCL could not create its shared-memory segment in /dev/shm: the container's /dev/shm is too small "
        "(Docker gives 64 MB) or is not shared between the ranks",
        "run the container with --ipc=host, or give it --shm-size=16g (or more); outside containers free "
        "/dev/shm (df -h /dev/shm)",
        "NVIDIA/nccl#1518; NCCL troubleshooting guide, 'Shared memory'"),
    Signature(
        "vllm-shm-space", "fail", r"Insufficient space in /dev/shm",
        "vLLM's shared-memory message queue (tensor parallelism >= 2) does not fit in /dev/shm",
        "run the container with --ipc=host, or --shm-size at least what the message asks for",
        "vllm-project/vllm#48879"),
    Signature(
        "bus-error", "fail", r"\bBus error\b",
        "a process was killed by SIGBUS: it touched shared memory past what /dev/shm (tmpfs) holds; "
        "shared-memory allocations succeed lazily and fail only when written",
        "run the container with --ipc=host or --shm-size=16g; check df -h /dev/shm",
        "vllm-project/vllm#1771, pytorch/pytorch#5247"),
    Signature(
        "vllm-custom-allreduce-peer", "fail",
        r"custom_all_reduce\.cuh:\d+ 'peer access is not supported between these two devices'|"
        r"peer access is not supported between these two devices",
        "vLLM's custom all-reduce needs CUDA peer access between every GPU pair and these GPUs have none "
        "(consumer GPUs, PHB/SYS paths, P2P blocked by ACS/IOMMU or a VM)",
        "start vLLM with --disable-custom-all-reduce (NCCL then does the all-reduce)",
        "vllm-project/vllm#5613, NVIDIA/TensorRT-LLM#1499"),
    Signature(
        "vllm-custom-allreduce-invalid", "fail", r"custom_all_reduce\.cuh:\d+ 'invalid argument'",
        "vLLM's custom all-reduce could not open the other GPUs' IPC buffers (no P2P between the pair, a "
        "container without --ipc=host, or a driver that refuses the IPC handle)",
        "start vLLM with --disable-custom-all-reduce (or --enforce-eager); run containers with --ipc=host",
        "vllm-project/vllm#5613, vllm-project/vllm#9046"),
    Signature(
        "p2p-disabled-nvlink", "fail", r"P2P is disabled between NVLINK connected GPUs",
        "NCCL sees NVLink between these GPUs but the driver reports P2P unavailable: a hardware or driver "
        "fault (an NVLink down, nv-fabricmanager not running on an NVSwitch host, a GPU that needs a reset), "
        "unlike the harmless 'P2P is disabled between connected GPUs' notice on PCIe",
        "check `nvidia-smi nvlink -s` and `nvidia-smi topo -p2p r`; reset the GPUs or reboot, start "
        "nv-fabricmanager on NVSwitch hosts; NCCL_IGNORE_DISABLED_P2P=1 only lets the job run, slowly",
        "NCCL src/graph/paths.cc (this WARN); NVIDIA/nccl#2329"),
    Signature(
        "ib-completion-error-12", "fail",
        r"NET/IB : Got completion (?:from peer [^\n]*? )?with (?:error |status=)12\b",
        "InfiniBand/RoCE transport retry timeout (IBV_WC_RETRY_EXC_ERR = 12): the two NICs cannot reach each "
        "other (port down, wrong RoCE GID or routing) or the fabric drops packets long enough to time out",
        "check both ports (ibstat: State Active), the RoCE GID index (NCCL_IB_GID_INDEX) and routing; run "
        "ib_write_bw between the nodes; raise NCCL_IB_TIMEOUT only when the link is merely congested",
        "NVIDIA/nccl#902"),
    Signature(
        "socket-system-error", "fail",
        r"no socket interface found|NET/Socket : no interface found|ncclSystemError[^\n]*socket|"
        r"Call to connect failed",
        "NCCL's socket bootstrap failed: NCCL_SOCKET_IFNAME names an interface this host lacks, or NCCL picked "
        "one (docker0, a VPN, IPv6 link-local) the other ranks cannot reach",
        "set NCCL_SOCKET_IFNAME to the interface that connects the ranks (`ip -br addr`; e.g. eth0, or "
        "^docker,lo to exclude some) and check the value for typos",
        "NVIDIA/nccl#697, NVIDIA/nccl#1837"),
    Signature(
        "iommu-fault", "fail", r"IO_PAGE_FAULT|DMAR: \[DMA (?:Read|Write)\]",
        "the IOMMU blocked a GPU's peer-to-peer DMA: with ACS or the IOMMU on, PCIe P2P is redirected "
        "through the root complex and hangs or crawls",
        "disable ACS on the PCIe switches (setpci) or run the IOMMU in passthrough (iommu=pt, or VT-d/AMD-Vi "
        "off in the BIOS); confirm with `nvidia-smi topo -p2p r` and cuda-samples p2pBandwidthLatencyTest; "
        "NCCL_P2P_DISABLE=1 is the slow workaround",
        "NCCL troubleshooting guide, 'PCI Access Control Services (ACS)'; NVIDIA/nccl#631"),
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
    Signature(
        "torch-missing", "fail", r"PyTorch is not installed|No module named 'torch'",
        "the torch.distributed runner found no PyTorch in this Python (or image)",
        "install torch there, or use NCCL's own benchmark: --runner nccl-tests --binary PATH/TO/all_reduce_perf "
        "(build it with --build-nccl-tests PATH/TO/nccl-tests)"),
    Signature(
        "no-gpu-visible", "fail", r"no CUDA GPU is visible|no CUDA-capable device is detected|cudaErrorNoDevice|"
        r"Found no NVIDIA driver|CUDA driver initialization failed",
        "no NVIDIA GPU is visible to this run (no driver on the host, an empty CUDA_VISIBLE_DEVICES, or a "
        "container started without --gpus)",
        "run it where `nvidia-smi` lists the GPUs; in a container pass --gpus all (`invoke nccl-test --image` "
        "does); check CUDA_VISIBLE_DEVICES"),
    Signature(
        "collective-timeout", "fail", r"Test timeout|Watchdog caught collective operation timeout",
        "a collective never finished: a rank never joined or hung (its log is missing or stops before "
        "Init COMPLETE), or P2P over PCIe hangs behind ACS/IOMMU",
        "read the logs of the ranks that never reached Init COMPLETE; check every rank started (same world "
        "size, reachable MASTER_ADDR/MASTER_PORT, all GPUs visible); `nvidia-smi topo -p2p r` for PCIe hosts"),
]
_SHM_FAILURES = {"shm-segment", "bus-error", "vllm-shm-space"}


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
    hosts: set[str] = field(default_factory=set)  # host names the NCCL logs and nccl-tests devices show
    ranks_seen: set[int] = field(default_factory=set)  # ranks whose NCCL logs are among the files
    nranks: int | None = None  # the communicator's size, as the logs say
    env: dict[str, str] = field(default_factory=dict)  # NCCL_* of the run (the caller's environment)
    debug_logs: str = ""  # where the run being judged wrote its NCCL_DEBUG=INFO logs (`invoke nccl-test` sets it)


def _blackwell_consumer(ctx: Context, log: NcclLog) -> bool:
    if any(cap.startswith("12.") for cap in ctx.gpu_caps):
        return True
    for name in log.gpu_names:
        model = compat.lookup_gpu(name)
        if model and model.cc.major == 12:
            return True
    return log.smem is not None


def _version_findings(log: NcclLog) -> list[Finding]:
    """Which NCCL this is, for which CUDA, and whether the driver can run it."""
    findings = []
    if log.version:
        info = f"NCCL {version_str(log.version)}" + (f" built for CUDA {log.built_cuda}" if log.built_cuda else "")
        if log.driver_cuda:
            info += f"; the driver supports CUDA {log.driver_cuda}"
        findings.append(Finding("info", "nccl-version", info, evidence=log.versions[:2]))
    if log.built_cuda and log.driver_cuda and parse_version(log.built_cuda) > parse_version(log.driver_cuda):
        findings.append(Finding(
            "fail", "driver-older-than-nccl-cuda",
            f"NCCL was built for CUDA {log.built_cuda} but the driver only supports CUDA {log.driver_cuda}",
            "upgrade the NVIDIA driver, or use an image whose CUDA is not newer than the driver's"))
    return findings


def _floor_finding(log: NcclLog, ctx: Context) -> Finding | None:
    """An NCCL older than the first release that works on one of the GPUs (compat's floor per arch)."""
    for cap in ctx.gpu_caps:
        row = nccl_floor(cap)
        if log.version and row and log.version < parse_version(row[0]):
            return Finding(
                "fail", "nccl-too-old", f"NCCL {version_str(log.version)} is older than {row[0]}, the first release "
                f"that works on compute capability {cap}: {row[1]}", VLLM_NCCL_HINT.format(v=row[0]),
                evidence=log.versions[:1])
    return None


def _shadowed(sig_id: str, hit: str, matched: set[str], too_old_blackwell: bool) -> bool:
    """Whether a signature that matched says less than one matched before it (or does not apply)."""
    if sig_id == "nccl-too-old-for-blackwell":
        return not (too_old_blackwell and not re.search(r"nvls", hit, re.IGNORECASE))
    if sig_id == "cuda-invalid-argument" and {"nccl-too-old-for-blackwell", "nvls-invalid-argument"} & matched:
        return True
    if sig_id == "nvls-invalid-argument" and "nccl-too-old-for-blackwell" in matched:
        return True
    if sig_id in ("unhandled-cuda-error", "vllm-worker-died", "collective-timeout") and matched - {"nccl-too-old"}:
        return True  # the specific cause is already named
    # ncclSystemError's text names sockets, but /dev/shm was the call that failed
    return sig_id == "socket-system-error" and bool(matched & _SHM_FAILURES)


def _signature_findings(log: NcclLog, texts: list[str], matched: set[str], too_old_blackwell: bool) -> list[Finding]:
    """The known signatures in the log's WARN/error lines, most specific first; adds their ids to ``matched``."""
    findings = []
    for sig in SIGNATURES:
        hit = _first_match(sig.pattern, texts)
        if not hit or _shadowed(sig.id, hit, matched, too_old_blackwell):
            continue
        matched.add(sig.id)
        message = sig.cause
        if sig.id == "vllm-worker-died" and too_old_blackwell:
            message += (f"; with NCCL {version_str(log.version)} on RTX 50xx the likely cause is NCCL older than "
                        f"{BLACKWELL_NCCL_FIX}")
        if sig.id == "nccl-too-old-for-blackwell":
            message = f"NCCL {version_str(log.version)} is too old for these GPUs: {sig.cause}"
        findings.append(Finding(sig.level, sig.id, message, sig.fix, sig.source, [hit]))
    return findings


def _host_findings(log: NcclLog, ctx: Context, matched: set[str]) -> list[Finding]:
    """What the log says about the host's interconnect: InfiniBand, PCIe P2P, the graph search."""
    findings = []
    if log.no_ib:
        if is_single_node(log, ctx):
            findings.append(Finding("info", "no-ib", "no InfiniBand/RoCE device (one node: nothing needs it)"))
        else:
            findings.append(Finding(
                "warn", "no-ib", "no InfiniBand/RoCE device: NCCL uses TCP sockets between nodes",
                "install the RDMA stack (rdma-core, the HCA driver) or pass the devices into the container "
                "(--device /dev/infiniband, --cap-add IPC_LOCK)"))
    pcie_notes = [n for n in log.notes if "NVLINK" not in n.message]
    if pcie_notes:
        findings.append(Finding(
            "info", "p2p-disabled-notice", "NCCL notes 'P2P is disabled between connected GPUs': the driver "
            "offers no P2P on this PCIe path, so NCCL uses SHM (expected on consumer GPUs; harmless)",
            evidence=[pcie_notes[0].text]))
    if any("falling back to simple order" in w.message for w in log.warns) and not matched:
        findings.append(Finding(
            "info", "graph-search-fallback",
            "NCCL found no fast ring/tree path and fell back to a simple order (normal on PCIe-only hosts)",
            evidence=[w.text for w in log.warns if "falling back" in w.message][:1]))
    return findings


def _unexplained_finding(log: NcclLog, matched: set[str]) -> Finding | None:
    """WARN lines, or an error, that no signature explains."""
    known = {"Could not find a path for pattern"}
    unknown = [w for w in log.warns if not any(k in w.message for k in known)
               and not any(re.search(s.pattern, w.message, re.IGNORECASE) for s in SIGNATURES)]
    if unknown:
        fatal = bool(log.errors) or any(w.level == "ABORT" for w in unknown)
        return Finding(
            "fail" if fatal else "warn", "unrecognised-warn",
            f"{len(unknown)} WARN line(s) no signature explains; the first: {unknown[0].message}",
            "read these lines (they name the source file and the failing call); rerun with NCCL_DEBUG=INFO "
            "NCCL_DEBUG_SUBSYS=INIT,ENV,GRAPH for more",
            evidence=[w.text for w in unknown[:5]])
    if log.errors and not matched:
        return Finding(
            "fail", "unrecognised-error", f"the log reports an error no signature explains: {log.errors[0]}",
            "rerun with NCCL_DEBUG=INFO NCCL_DEBUG_FILE=... and diagnose those files", evidence=log.errors[:5])
    return None


def diagnose_nccl_log(log: NcclLog, ctx: Context | None = None) -> list[Finding]:
    ctx = ctx or Context()
    findings = _version_findings(log)
    texts = [w.message if not w.source else f"{w.source} {w.message}" for w in log.warns] + log.errors
    texts += [n.message for n in log.notes if "NVLINK" in n.message]
    matched: set[str] = set()
    floor = _floor_finding(log, ctx)
    if floor is not None:
        findings.append(floor)
        matched.add("nccl-too-old")
    too_old = log.version is not None and log.version < parse_version(BLACKWELL_NCCL_FIX)
    findings += _signature_findings(log, texts, matched, too_old and _blackwell_consumer(ctx, log))
    if log.smem and too_old and "nccl-too-old-for-blackwell" not in matched:
        findings.append(Finding(
            "warn", "nccl-shared-memory",
            f"NCCL {version_str(log.version)} wants {log.smem[0]} bytes of shared memory but this GPU allows "
            f"{log.smem[1]}: its first collective will fail with `Cuda failure 1 'invalid argument'`",
            VLLM_NCCL_HINT.format(v=BLACKWELL_NCCL_FIX), SIGNATURES[0].source))
    findings.extend(_env_findings(log.env))
    findings.extend(_transport_findings(log, ctx))
    findings += _host_findings(log, ctx, matched)
    unexplained = _unexplained_finding(log, matched)
    if unexplained is not None:
        findings.append(unexplained)
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
        setting = SETTINGS.get(name)
        if name == "NCCL_P2P_DISABLE" and _truthy(value):
            out.append(Finding(
                "warn", "env-p2p-disable", "NCCL_P2P_DISABLE=1 is set: GPUs exchange data through host memory "
                "(SHM) even where NVLink or PCIe P2P works",
                "unset NCCL_P2P_DISABLE unless P2P is known broken on this host (ACS/IOMMU on PCIe switches)"))
        elif name == "NCCL_CUMEM_ENABLE" and value == "0":
            out.append(Finding(
                "info", "env-cumem", "NCCL_CUMEM_ENABLE=0 set by environment (vLLM sets it itself); NCCL "
                "uses legacy cudaMalloc buffers and IPC handles instead of cuMem", ""))
        elif name == "NCCL_SHM_DISABLE" and _truthy(value):
            out.append(Finding("warn", "env-shm-disable", "NCCL_SHM_DISABLE=1: without P2P, traffic goes through "
                               "sockets", "unset NCCL_SHM_DISABLE"))
        elif setting is not None:
            out.append(Finding("info", "env", f"{name}={value} set by environment: {setting.effect}"))
    return out


def _truthy(value: str) -> bool:
    return value.strip() not in ("0", "", "false", "False")


# --- NCCL settings that can change the transport or the bandwidth, weighed when busbw falls short ---
# Source: NCCL user guide, "Environment Variables" (docs.nvidia.com/deeplearning/nccl/user-guide/docs/env.html).
@dataclass(frozen=True)
class Setting:
    name: str
    effect: str  # what it does to the transport or bandwidth
    harmful: object  # value -> why it lowers bandwidth here, or "" when this value does not
    weight: int  # how much it can take away: 3 transport, 2 a large share, 1 a little


def _p2p_level_harm(value: str) -> str:
    if value.upper() in ("LOC", "0"):
        return "NCCL_P2P_LEVEL=LOC forbids P2P between any two GPUs"
    return ""


def _proto_harm(value: str) -> str:
    protos = {p.strip().lstrip("^").lower() for p in value.split(",")}
    if value.startswith("^") and "simple" in protos or not value.startswith("^") and "simple" not in protos:
        return (f"NCCL_PROTO={value} leaves out the Simple protocol, the only one that reaches full bandwidth "
                "on large messages (LL moves 4 data bytes per 8, LL128 120 per 128)")
    return ""


def _algo_harm(value: str) -> str:
    return f"NCCL_ALGO={value} forces the algorithm NCCL's tuner would otherwise choose per size"


def _small_int_harm(name: str, default: int, what: str):
    def harm(value: str) -> str:
        try:
            number = int(value)
        except ValueError:
            return ""
        return f"{name}={value} is below the default {default}: {what}" if number < default else ""
    return harm


SETTINGS: dict[str, Setting] = {s.name: s for s in [
    Setting("NCCL_P2P_DISABLE", "no P2P (NVLink/PCIe) between GPUs: SHM or sockets instead",
            lambda v: "NCCL_P2P_DISABLE=1 turns off P2P, so NVLink/PCIe peer copies are not used" if _truthy(v)
            else "", 3),
    Setting("NCCL_SHM_DISABLE", "no shared-memory transport: without P2P, TCP sockets carry the traffic",
            lambda v: "NCCL_SHM_DISABLE=1 turns off SHM, so without P2P the traffic goes through TCP sockets"
            if _truthy(v) else "", 3),
    Setting("NCCL_P2P_LEVEL", "the farthest path on which P2P is used (LOC: never)", _p2p_level_harm, 3),
    Setting("NCCL_PROTO", "the protocols allowed (LL, LL128, Simple)", _proto_harm, 2),
    Setting("NCCL_ALGO", "the algorithms allowed (Ring, Tree, NVLS, CollNet)", _algo_harm, 1),
    Setting("NCCL_MAX_NCHANNELS", "caps the channels (each drives one SM's share of the link)",
            _small_int_harm("NCCL_MAX_NCHANNELS", 16, "fewer channels than the link needs"), 2),
    Setting("NCCL_MAX_CTAS", "caps the CTAs (channels) per collective",
            _small_int_harm("NCCL_MAX_CTAS", 16, "fewer channels than the link needs"), 2),
    Setting("NCCL_MIN_NCHANNELS", "the least channels NCCL uses", lambda v: "", 0),
    Setting("NCCL_BUFFSIZE", "the staging buffer per channel and peer (default 4 MiB)",
            _small_int_harm("NCCL_BUFFSIZE", 4 << 20, "fewer bytes in flight per step"), 2),
    Setting("NCCL_NTHREADS", "threads per CTA (default 512)",
            _small_int_harm("NCCL_NTHREADS", 256, "fewer threads move the data"), 1),
    Setting("NCCL_NVLS_ENABLE", "NVLink SHARP (multicast) on NVSwitch systems",
            lambda v: "", 0),  # 0 costs a little only on NVSwitch hosts; never the cause of a large shortfall
    Setting("NCCL_CUMEM_ENABLE", "cuMem buffers instead of cudaMalloc + IPC (no bandwidth effect)",
            lambda v: "", 0),
    Setting("NCCL_NET_GDR_LEVEL", "GPUDirect RDMA distance between NIC and GPU (multi-node)", lambda v: "", 0),
    Setting("NCCL_IB_DISABLE", "no InfiniBand/RoCE: sockets between nodes", lambda v: "", 0),
    Setting("NCCL_SOCKET_IFNAME", "the interface sockets use (bootstrap; traffic when NET is the transport)",
            lambda v: "", 0),
    Setting("NCCL_SOCKET_NTHREADS", "socket threads per connection (NET/Socket only)", lambda v: "", 0),
    Setting("NCCL_NSOCKS_PERTHREAD", "sockets per thread (NET/Socket only)", lambda v: "", 0),
    Setting("NCCL_NET", "the network plugin (IB, Socket)", lambda v: "", 0),
]}


def weigh_settings(env: dict[str, str]) -> list[tuple[int, str, str]]:
    """(weight, name=value, why it lowers bandwidth) for every NCCL_* setting that can explain a shortfall,
    heaviest first; settings that cannot (or not with this value) are left out."""
    out = []
    for name, value in env.items():
        setting = SETTINGS.get(name)
        if setting is None or setting.weight == 0:
            continue
        why = setting.harmful(value)
        if why:
            out.append((setting.weight, f"{name}={value}", why))
    return sorted(out, key=lambda item: -item[0])


def is_single_node(log: NcclLog | None, ctx: Context) -> bool:
    """One host: every log and nccl-tests device line names the same host. NCCL's own ``nNodes`` is not
    trusted alone: with P2P and SHM disabled it counts two ranks of one host as two nodes (the live H200
    fault run). It decides only when some ranks' logs are missing (one node's logs of a multi-node job)."""
    hosts = set(ctx.hosts) | (log.hosts if log else set())
    if len(hosts) > 1:
        return False
    if log and log.nnodes and log.nnodes > 1:
        every_rank = bool(ctx.nranks) and len(ctx.ranks_seen | set(log.ranks)) >= ctx.nranks
        return bool(hosts) and every_rank
    return True


def p2p_expected(ctx: Context) -> list[str]:
    """The links (NV#, PIX, PXB) or P2P statuses (OK) on which NCCL should use P2P."""
    links = sorted({lk for lk in ctx.links if lk.startswith("NV") or lk in ("PIX", "PXB")})
    if ctx.p2p and all(status == "OK" for status in ctx.p2p) and not links:
        links = ["P2P OK"]
    return links


def transport_reasons(env: dict[str, str], ctx: Context, uses_net: bool) -> list[tuple[str, str]]:
    """Why P2P (and, for sockets, SHM) was not used where the topology allows it: (reason, fix) pairs."""
    reasons = []
    if _truthy(env.get("NCCL_P2P_DISABLE", "0")):
        reasons.append(("NCCL_P2P_DISABLE=1 is set", "unset NCCL_P2P_DISABLE"))
    if harm := _p2p_level_harm(env.get("NCCL_P2P_LEVEL", "")):
        reasons.append((harm, "unset NCCL_P2P_LEVEL (or set it to SYS)"))
    if uses_net and _truthy(env.get("NCCL_SHM_DISABLE", "0")):
        reasons.append(("NCCL_SHM_DISABLE=1 is set", "unset NCCL_SHM_DISABLE"))
    bad = sorted({status for status in ctx.p2p if status != "OK"})
    if not reasons and bad:
        reasons.append((f"the driver reports P2P {', '.join(f'{b} ({P2P_CODES.get(b, b)})' for b in bad)} "
                        "(`nvidia-smi topo -p2p r`): P2P unsupported by the driver/chipset, or blocked by "
                        "ACS/IOMMU", "disable ACS on the PCIe switches or run the IOMMU in passthrough "
                        "(iommu=pt); check with cuda-samples p2pBandwidthLatencyTest"))
    if not reasons:
        reasons.append(("no NCCL setting disables P2P: typically the ranks run in a container without "
                        "--ipc=host (CUDA IPC and /dev/shm not shared), or ACS/IOMMU blocks peer access, or the "
                        "driver does not support P2P here",
                        "run the container with --ipc=host (one container for all ranks); check "
                        "`nvidia-smi topo -p2p r` and cuda-samples p2pBandwidthLatencyTest"))
    return reasons


def _transport_findings(log: NcclLog, ctx: Context) -> list[Finding]:
    if not log.transports:
        return []
    kinds = {name.split("/")[0] for name in log.transports}
    summary = ", ".join(f"{k} ({v} channels)" for k, v in sorted(log.transports.items()))
    env = {**ctx.env, **log.env}
    expected = p2p_expected(ctx)
    single = is_single_node(log, ctx)
    # On one host sockets are never right, whatever the topology: SHM at least should carry the traffic.
    if "P2P" not in kinds and kinds & {"SHM", "NET"} and single and (expected or not ctx.links or "NET" in kinds):
        uses_net = "NET" in kinds
        reasons = transport_reasons(env, ctx, uses_net)
        via = "TCP sockets (NET)" if uses_net else "host memory (SHM)"
        if expected:
            topology = f"the topology shows {', '.join(expected)} between the GPUs, so P2P should carry it"
            level = "fail"
        elif uses_net:
            topology = "all ranks are on one host, so P2P or at least SHM should carry it"
            level = "fail" if any("DISABLE" in r for r, _ in reasons) else "warn"
        else:
            return [Finding("info", "transport", f"transport via SHM (host memory): {summary}; no topology given "
                            "to judge it against (pass `nvidia-smi topo -m` output too)")]
        return [Finding(level, "transport", f"transport {summary}: traffic goes through {via} on one host, "
                        f"though {topology}; why: {'; '.join(r for r, _ in reasons)}",
                        "; ".join(f for _, f in reasons), evidence=[summary])]
    if kinds == {"SHM"}:
        return [Finding(
            "info", "transport", f"transport via SHM (host memory): {summary}; expected when P2P is not "
            "supported (consumer GPUs, PHB/SYS paths); bandwidth is bounded by PCIe and host memory")]
    return [Finding("pass", "transport", f"transport: {summary}")]


# ---------------------------------------------------------------------------------------------------
# Bus bandwidth against the link
# ---------------------------------------------------------------------------------------------------
def link_peak_gbps(link: str, capability: str | None = None, pcie_gen: int | None = None,
                   pcie_width: int | None = 16) -> tuple[float | None, str, str]:
    """Peak one-direction GB/s of a GPU pair's path, how it was worked out, and the link model row's source."""
    if m := re.match(r"NV(\d+)$", link or ""):
        count = int(m.group(1))
        row = None
        if capability:
            sm = "sm_" + capability.replace(".", "")
            row = compat.link_model("nvlink", sm)
            if row is None:  # the closest row of the same major (sm_89 has no NVLink; sm_87 uses sm_80's)
                major = capability.split(".")[0]
                row = next((r for r in compat.LINK_MODEL if r.kind == "nvlink"
                            and r.generation[3:-1] == major), None)
        if row is None:
            return None, f"{count} NVLinks of an unknown generation (no capability known)", ""
        return count * row.gbps, f"{count} NVLinks x {row.gbps:g} GB/s (compute capability {capability})", row.source
    if link in LINK_WORDS or link == "PCIe":
        row = compat.link_model("pcie", f"gen{pcie_gen}") if pcie_gen else None
        if row is None:
            return None, f"PCIe ({link}) of unknown generation", ""
        width = pcie_width or 16
        peak = row.gbps * width / 16
        if link in ("PHB", "NODE", "SYS"):
            shm = compat.link_model("shm", "PHB")
            peak *= shm.gbps
            return peak, f"SHM through host memory over PCIe gen{pcie_gen} x{width} ({link}): {peak:g} GB/s", \
                f"{shm.source}; {row.source}"
        return peak, f"PCIe gen{pcie_gen} x{width} ({link}): {peak:g} GB/s", row.source
    return None, f"unknown link {link!r}", ""


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
    peak, how, source = link_peak_gbps(link, capability, pcie_gen, pcie_width)
    if not peak:
        return Finding("info", "busbw", f"{peak_seen:g} GB/s bus bandwidth; link peak unknown: {how}")
    share = peak_seen / peak
    text = f"{peak_seen:g} GB/s bus bandwidth at large sizes = {share:.0%} of {how}"
    if share >= compat.BUSBW_SHARE["good"]:
        return Finding("pass", "busbw", text, source=source)
    fix = ("check `nvidia-smi topo -p2p r` (P2P OK?), NCCL_P2P_DISABLE/NCCL_SHM_DISABLE, the PCIe link "
           "running below its max generation/width (nvidia-smi -q, GPU Link Info), and other jobs on the GPUs")
    level = "fail" if share < compat.BUSBW_SHARE["poor"] else "warn"
    return Finding(level, "busbw", text + f" (expected >= {compat.BUSBW_SHARE['good']:.0%})", fix, source)


def _debug_log_fix(ctx: Context) -> str:
    """Where the NCCL log that explains a failed run is: the one this run wrote (``invoke nccl-test`` sets
    NCCL_DEBUG=INFO itself), else the one a rerun with it would write."""
    if ctx.debug_logs:
        return (f"read the NCCL_DEBUG=INFO logs this run wrote ({ctx.debug_logs}; the findings below include "
                "them); none there means NCCL never started")
    return "rerun with NCCL_DEBUG=INFO and diagnose the NCCL log"


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
                (model := compat.lookup_gpu(n)) is not None and model.cc.major == 12 for n in names):
            message = (f"{who}: {run.failures[0]}. On RTX 50xx this is the signature of NCCL older than "
                       f"{BLACKWELL_NCCL_FIX} (one GPU passes, two fail); the NCCL_DEBUG=INFO log shows "
                       "`Cuda failure 1 'invalid argument'`")
            findings.append(Finding("fail", "nccl-tests-failed", message, VLLM_NCCL_HINT.format(v=BLACKWELL_NCCL_FIX),
                                    SIGNATURES[0].source, run.failures[:6]))
        else:
            findings.append(Finding("fail", "nccl-tests-failed", f"{who}: {run.failures[0]}",
                                    sig.fix if sig else _debug_log_fix(ctx),
                                    sig.source if sig else "", run.failures[:6]))
        return findings
    if not run.rows:
        findings.append(Finding("fail", "nccl-tests-empty", f"{who}: no result rows (the run stopped early)",
                                "read the output's last lines; " + _debug_log_fix(ctx)))
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
        if line.startswith("== ") and line[3:MAX_LINE].strip():
            parts.append((line[3:MAX_LINE].strip(), []))
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
    # [ \t], not \s: with re.M, \s* would run across every blank line from each line start (quadratic).
    if re.search(r"NVSMI LOG|^[ \t]*Product Name[ \t]+:", clean, re.M):
        return "smi-query"
    matrix = parse_topo_matrix(clean)
    if matrix is not None:
        return "p2p" if matrix.kind == "p2p" else "topo"
    if re.search(r"NCCL (INFO|WARN|TRACE|ABORT)|nccl==|NCCL error|ncclUnhandled|unhandled cuda error|"
                 r"error while loading shared libraries", clean) or _APP_ERROR_RE.search(clean):
        return "nccl-log"
    if re.search(r"^index, name, compute_cap", clean, re.M):
        return "smi-csv"
    if "NVIDIA-SMI" in clean:
        return "smi"
    return "unknown"


def parse_smi_csv(text: str) -> list[dict]:
    """``nvidia-smi --query-gpu=index,name,compute_cap,... --format=csv`` (with its header line)."""
    lines = [line for line in _lines(text) if line.strip()]
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
    sections: list = field(default_factory=list, repr=False)  # (name, kind, parsed) for the root cause
    lines: list[str] = field(default_factory=list, repr=False)  # the file's lines, for evidence

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
    elif kind == "nccl-log" and isinstance(parsed, NcclLog):
        ctx.hosts |= parsed.hosts
        ctx.ranks_seen |= set(parsed.ranks)
        ctx.nranks = max(ctx.nranks or 0, parsed.nranks or 0) or None
    elif kind in ("nccl-tests", "allreduce-kv") and isinstance(parsed, NcclTestsRun):
        ctx.hosts |= {device.host for device in parsed.devices}
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
    return [Finding("fail", "unrecognised-file", "not recognised: not an NCCL log, nccl-tests output or "
                    "nvidia-smi output", "pass NCCL_DEBUG=INFO logs (NCCL_DEBUG_FILE), all_reduce_perf output, or "
                    "`nvidia-smi topo -m` / `topo -p2p r` output")], {}


def diagnose_texts(named_texts: list[tuple[str, str]], ctx: Context | None = None,
                   optional: set[str] | frozenset = frozenset()) -> list[FileReport]:
    """Diagnose several files together: a topology in one informs the verdicts on the others. A file in
    ``optional`` (found in a directory rather than named) that is not recognised is skipped, not failed."""
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
        report = FileReport(path, "bundle" if len(sections) > 1 else kinds[0], sections=sections)
        if report.kind == "unknown" and path in optional:
            report.findings.append(Finding("info", "unrecognised-file", "not recognised (found in a directory; "
                                           "skipped)"))
            reports.append(report)
            continue
        for name, kind, parsed in sections:
            findings, facts = _judge(kind, parsed, ctx)
            if len(sections) > 1 and name:  # the text before the first `== name` line has no name to show
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
    texts = dict(named_texts)
    for report in reports:
        report.lines = _lines(texts.get(report.path, ""))
    return reports


def diagnose_files(paths: list[Path | str], ctx: Context | None = None,
                   optional: set[str] | frozenset = frozenset()) -> list[FileReport]:
    named = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise ForgeError(f"{p} is not a file", "pass NCCL logs, nccl-tests outputs or nvidia-smi topo outputs")
        named.append((str(p), p.read_text(errors="replace")))
    return diagnose_texts(named, ctx, {str(o) for o in optional})


# Kinds that say nothing about a run: a diagnosis of files that are all of these has no evidence at all.
NO_EVIDENCE = ("unknown", "empty")


def check_evidence(reports: list[FileReport]) -> None:
    """"No failure found" only means something when some file was evidence: files none of which is an NCCL
    log, an nccl-tests output or an nvidia-smi output (a directory of other files, empty files) fail in one
    line, exit 1. (A named file that is not recognised already fails with its own finding.)"""
    if any(report.kind not in NO_EVIDENCE or report.level == "fail" for report in reports):
        return
    shown = ", ".join(f"{Path(r.path).name} ({'empty' if r.kind == 'empty' else 'not recognised'})"
                      for r in reports[:6]) + (f" and {len(reports) - 6} more" if len(reports) > 6 else "")
    empty = ("; an empty NCCL_DEBUG_FILE means no communicator started"
             if any(r.kind == "empty" for r in reports) else "")
    raise ForgeError(f"none of the {len(reports)} file(s) read is an NCCL log, an nccl-tests output or an "
                     f"nvidia-smi output: {shown}; nothing was diagnosed{empty}",
                     "pass NCCL_DEBUG=INFO logs (NCCL_DEBUG_FILE), all_reduce_perf output, or `nvidia-smi topo -m` "
                     "output (or the directory that holds them)", exit_code=1)


# ---------------------------------------------------------------------------------------------------
# One root cause from all the evidence
# ---------------------------------------------------------------------------------------------------
@dataclass
class RootCause:
    level: str  # pass / warn / fail
    cause: str
    fix: str = ""
    evidence: list[str] = field(default_factory=list)  # "file:line: text"
    measured: float | None = None  # busbw at large sizes, GB/s
    expected: float | None = None  # the link model's figure, GB/s
    expected_how: str = ""
    expected_source: str = ""
    weighed: list[str] = field(default_factory=list)  # every NCCL_* setting considered, and what it does

    @property
    def share(self) -> float | None:
        return self.measured / self.expected if self.measured is not None and self.expected else None

    def bandwidth_line(self) -> str:
        if self.measured is None:
            return ""
        if not self.expected:
            return f"measured {self.measured:g} GB/s busbw (no link model figure to compare with)"
        return (f"measured {self.measured:g} GB/s busbw = {self.share:.0%} of expected {self.expected:g} GB/s "
                f"({self.expected_how}; source: {self.expected_source})")

    def detail_rows(self) -> list[tuple[str, str]]:
        """What stands under the headline, (label, text) in order: the plain report and the console both read it."""
        rows = [("bandwidth", self.bandwidth_line())] if self.bandwidth_line() else []
        rows += [("evidence", line) for line in self.evidence]
        return rows + ([("fix", self.fix)] if self.fix else [])

    def to_dict(self) -> dict:
        data = asdict(self)
        data["share"] = self.share
        return data


def _evidence(report: FileReport, needle: str | re.Pattern, limit: int = 1) -> list[str]:
    """``file:line: text`` for the first lines of a report's file that contain ``needle``."""
    out = []
    for number, line in enumerate(report.lines, 1):
        hit = needle.search(line) if isinstance(needle, re.Pattern) else needle in line
        if hit:
            out.append(f"{report.path}:{number}: {line.strip()[:240]}")
            if len(out) >= limit:
                break
    return out


def _parsed(reports: list[FileReport], kinds: tuple[str, ...]) -> list[tuple[FileReport, object]]:
    return [(r, parsed) for r in reports for _, kind, parsed in r.sections if kind in kinds and parsed is not None]


_NOT_CAUSES = {"busbw", "transport", "nccl-tests-failed", "exit-status", "unrecognised-file", "nccl-tests-empty",
               "unrecognised-warn", "unrecognised-error"}


@dataclass
class _Gathered:
    """Every file's facts, correlated once: what each candidate cause of ``find_root_cause`` weighs."""

    reports: list[FileReport]
    ctx: Context
    logs: list  # (report, NcclLog) of every rank's NCCL log
    runs: list  # (report, NcclTestsRun) of every benchmark table
    env: dict[str, str]  # the NCCL settings in force: the environment file's, then each log's own
    measured: float | None  # the best bus bandwidth of a multi-rank run, GB/s
    expected: float | None  # what the slowest link between the GPUs carries (compat's link model)
    link: str | None  # that link ("NV18", "PIX", ...)
    base: dict  # the fields every RootCause carries

    @property
    def share(self) -> float | None:
        return self.measured / self.expected if self.measured is not None and self.expected else None


def _gather(reports: list[FileReport], ctx: Context | None) -> _Gathered:
    if ctx is None:
        ctx = Context()
        for report in reports:
            for _, kind, parsed in report.sections:
                _learn(ctx, kind, parsed)
    logs = _parsed(reports, ("nccl-log",))
    runs = [(r, run) for r, run in _parsed(reports, ("nccl-tests", "allreduce-kv")) if isinstance(run, NcclTestsRun)]
    env = dict(ctx.env)
    for _, log in logs:
        env.update(log.env)
    weighed = [f"{name}={value}: {SETTINGS[name].effect}" for name, value in sorted(env.items()) if name in SETTINGS]
    measured = None
    for _, run in runs:
        peak = run.peak_busbw() if run.ranks > 1 else None
        if peak is not None and (measured is None or peak > measured):
            measured = peak
    capability = ctx.gpu_caps[0] if ctx.gpu_caps else None
    link = _slowest_link(ctx.links)
    expected, how, source = link_peak_gbps(link, capability, ctx.pcie_gen, ctx.pcie_width) if link else (None, "", "")
    base = {"measured": measured, "expected": expected, "expected_how": how, "expected_source": source,
            "weighed": weighed}
    return _Gathered(reports, ctx, logs, runs, env, measured, expected, link, base)


def _cause_a_signature_names(g: _Gathered) -> RootCause | None:
    """A failure a signature names: the most specific evidence there is."""
    for report in g.reports:
        for finding in report.findings:
            if finding.level == "fail" and finding.check not in _NOT_CAUSES:
                evidence = []
                for hit in finding.evidence[:1]:  # a WARN's text is "src.cc:N message": find the message
                    evidence = _evidence(report, hit[:120]) or _evidence(report, hit.split(" ", 1)[-1][:120]) \
                        or [f"{report.path}: {hit}"]
                return RootCause("fail", finding.message, finding.fix + (f" (see {finding.source})"
                                                                         if finding.source else ""),
                                 evidence, **g.base)
    return None


def _cause_a_rank_never_joined(g: _Gathered) -> RootCause | None:
    seen: set[int] = set()
    nranks = 0
    for _, log in g.logs:
        seen |= set(log.ranks)
        nranks = max(nranks, log.nranks or 0)
    timed_out = [(r, f) for r in g.reports for f in r.findings if f.level == "fail"
                 and re.search(r"timeout|did not finish", f.message + " ".join(f.evidence), re.IGNORECASE)]
    if not (g.logs and nranks > len(seen) and (timed_out or not any(log.init_complete for _, log in g.logs))):
        return None
    missing = sorted(set(range(nranks)) - seen)
    evidence = [e for r, _ in g.logs for e in _evidence(r, "Init START")][:2]
    evidence += [e for r, _ in timed_out for e in _evidence(r, re.compile("timeout", re.IGNORECASE))][:1]
    return RootCause("fail", f"rank(s) {', '.join(map(str, missing))} of {nranks} never joined the "
                     f"communicator: rank(s) {', '.join(map(str, sorted(seen)))} started it (Init START) and "
                     "waited", "start every rank (same world size, reachable MASTER_ADDR/MASTER_PORT, every "
                     "GPU visible: CUDA_VISIBLE_DEVICES) and read the missing rank's own output", evidence, **g.base)


def _cause_the_transport(g: _Gathered) -> RootCause | None:
    """The transport NCCL picked, judged against the topology."""
    for report, log in g.logs:
        for finding in _transport_findings(log, g.ctx):
            if finding.level not in ("fail", "warn"):
                continue
            evidence = []
            for name in ("NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE", "NCCL_P2P_LEVEL"):
                if name in log.env:
                    evidence += _evidence(report, f"{name} set by environment")
            evidence += _evidence(report, f"via {sorted(log.transports)[0]}")
            for topo_report, matrix in _parsed(g.reports, ("topo", "p2p")):
                pairs = matrix.gpu_pairs() if isinstance(matrix, TopoMatrix) else []
                if pairs:
                    evidence += _evidence(topo_report, re.compile(rf"^\s*{pairs[0][0]}\s+X\b"))
            kinds = {name.split("/")[0] for name in log.transports}
            names = [r for r in ("NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE", "NCCL_P2P_LEVEL") if r in g.env
                     and SETTINGS[r].harmful(g.env[r])]
            via = "TCP sockets" if "NET" in kinds else "host memory (SHM)"
            links = ", ".join(p2p_expected(g.ctx)) or "one host"
            gpus = f"the GPUs are {links}-connected" if p2p_expected(g.ctx) else "the ranks share one host"
            cause = (f"{gpus} but NCCL sent the traffic through {via}"
                     + (f" because {' and '.join(names)} {'are' if len(names) > 1 else 'is'} set"
                        if names else f": {finding.message.split('why: ', 1)[-1]}"))
            return RootCause(finding.level, cause, finding.fix, evidence, **g.base)
    return None


def _cause_short_bandwidth(g: _Gathered) -> RootCause | None:
    """Bandwidth short of the link model: weigh every setting that can explain it."""
    share = g.share
    if share is None or share >= compat.BUSBW_SHARE["good"]:
        return None
    level = "fail" if share < compat.BUSBW_SHARE["poor"] else "warn"
    candidates = weigh_settings(g.env)
    table, cited = next((r, run) for r, run in g.runs if run.peak_busbw() == g.measured)
    evidence = _evidence(table, re.compile(rf"^\s*{cited.large_rows()[-1].size}\s"))  # the cited table's row
    if candidates:
        _, setting, why = candidates[0]
        name = setting.split("=")[0]
        for report, log in g.logs:
            if name in log.env:
                evidence = _evidence(report, f"{name} set by environment") + evidence
                break
        return RootCause(level, f"{why}: bus bandwidth fell short of the link", f"unset {name}", evidence,
                         **g.base)
    if g.link in ("PIX", "PXB"):
        return RootCause(level, "P2P over the PCIe switch runs far below the PCIe model and no NCCL setting "
                         "explains it: ACS or the IOMMU redirects peer traffic through the root complex",
                         "check `nvidia-smi topo -p2p r` and cuda-samples p2pBandwidthLatencyTest; disable ACS "
                         "on the switches (setpci) or run the IOMMU in passthrough (iommu=pt)", evidence, **g.base)
    return RootCause(level, "bus bandwidth fell short of the link and no NCCL setting explains it",
                     "check the PCIe link under load (nvidia-smi -q: GPU Link Info, generation and width), "
                     "other jobs on the GPUs, and `nvidia-smi topo -p2p r`", evidence, **g.base)


def _cause_a_warning(g: _Gathered) -> RootCause | None:
    """A warning, when it is the worst there is."""
    for report in g.reports:
        for finding in report.findings:
            if finding.level in ("warn", "fail"):
                return RootCause(finding.level, f"{report.path}: {finding.message}", finding.fix,
                                 [f"{report.path}: {e}" for e in finding.evidence[:1]], **g.base)
    return None


def _no_cause(g: _Gathered) -> RootCause:
    """Nothing failed: how healthy the run was, as far as the files tell."""
    if g.measured is not None and g.expected:
        transports = sorted({name for _, log in g.logs for name in log.transports})
        carried = f"{g.link} carried {', '.join(transports)}; " if transports else ""
        ranks = max(run.ranks for _, run in g.runs)
        return RootCause("pass", f"healthy: {carried}{ranks} ranks reach {g.share:.0%} of the link model", "", [],
                         **g.base)
    if g.runs and all(run.ranks <= 1 for _, run in g.runs):
        return RootCause("pass", "one rank: NCCL initialised and ran on the GPU; bus bandwidth needs two or more "
                         "GPUs (nothing crosses a link)", "", [], **g.base)
    return RootCause("pass", "no failure found", "", [], **g.base)


# The candidate causes, the most specific evidence first: the first that finds one is the verdict.
_CAUSES = (_cause_a_signature_names, _cause_a_rank_never_joined, _cause_the_transport, _cause_short_bandwidth,
           _cause_a_warning)


def find_root_cause(reports: list[FileReport], ctx: Context | None = None) -> RootCause:
    """Correlate every file (topology, the NCCL logs of every rank, the benchmark tables, the environment)
    into one verdict: the cause, the evidence lines, the fix, and measured against expected bandwidth.
    ``ctx`` is the one the reports were made with; without it, the reports' own files inform it."""
    gathered = _gather(reports, ctx)
    for candidate in _CAUSES:
        cause = candidate(gathered)
        if cause is not None:
            return cause
    return _no_cause(gathered)


def render_root_cause(cause: RootCause) -> list[str]:
    return [f"ROOT CAUSE [{cause.level.upper()}]: {cause.cause}",
            *(f"  {label}: {text}" for label, text in cause.detail_rows())]


def render_text(reports: list[FileReport], cause: RootCause | None = None) -> str:
    lines = render_root_cause(cause) + [""] if cause else []
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


def report_dict(reports: list[FileReport], cause: RootCause) -> dict:
    return {"level": worst_level([f for r in reports for f in r.findings]), "root_cause": cause.to_dict(),
            "files": [r.to_dict() for r in reports]}


def input_paths(spec: str) -> tuple[list[Path], set[str]]:
    """The files to read, and those found inside a named directory (an unrecognised one there is skipped)."""
    paths: list[Path] = []
    in_dirs: set[str] = set()
    if not spec.replace(",", " ").split():
        raise ForgeError("nccl-diagnose needs the files to read",
                         "name them, e.g. invoke nccl-diagnose logs/*.log topo.txt (NCCL_DEBUG=INFO logs, "
                         "nccl-tests output, `nvidia-smi topo -m` output), or a directory that holds them")
    for word in spec.replace(",", " ").split():
        found = sorted(Path().glob(word)) if any(ch in word for ch in "*?[") else [Path(word)]
        for path in found:
            if path.is_dir():  # every text file in it (binaries beside the logs are skipped)
                inside = [p for p in sorted(path.iterdir()) if p.is_file() and b"\0" not in p.read_bytes()[:4096]]
                paths.extend(inside)
                in_dirs.update(str(p) for p in inside)
            else:
                paths.append(path)
    if not paths:
        raise ForgeError(f"no files in {spec!r}", "name NCCL logs, nccl-tests outputs or topo files (or a directory)")
    return paths, in_dirs


def diagnosis_for(spec: str) -> dict:
    """A diagnosis to lay over another in a figure: a JSON report (``nccl-diagnose --json``, ``nccl-test
    --json``, or either's record under build/reports) or NCCL outputs (files, a directory, a glob) diagnosed
    on their own."""
    path = Path(spec)
    if path.is_file() and path.suffix == ".json":
        try:
            data = json.loads(path.read_text(errors="replace"))
        except ValueError as err:
            raise ForgeError(f"{spec} is not valid JSON ({err})", "pass nccl-diagnose --json output") from None
        if isinstance(data, dict) and isinstance(data.get("data"), dict) and "format" in data:
            data = data["data"]  # a record under build/reports
        if not isinstance(data, dict) or "root_cause" not in data or not (data.get("files") or data.get("reports")):
            raise ForgeError(f"{spec} is not an NCCL diagnosis (no root_cause and files)",
                             "pass the JSON of nccl-diagnose --json or nccl-test --json, or the NCCL outputs")
        return data
    paths, in_dirs = input_paths(spec)
    ctx = Context()
    reports = diagnose_files(paths, ctx, optional=in_dirs)
    return json.loads(json.dumps(report_dict(reports, find_root_cause(reports, ctx)), default=str))


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
    check_evidence(reports)
    cause = find_root_cause(reports, ctx)
    if args.json:
        print(json.dumps(report_dict(reports, cause), indent=2, default=str))
    else:
        print(render_text(reports, cause))
    return 1 if any(r.level == "fail" for r in reports) else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
