"""All-reduce through torch.distributed + NCCL, printed in nccl-tests' ``all_reduce_perf`` table format.

For hosts without an nccl-tests build: it exercises the NCCL that PyTorch (and so vLLM) loads.

    python -m vllm_forge.nccl.nccl_allreduce --nproc 2 -b 8 -e 128M -f 2      # spawns one process per GPU
    torchrun --nproc-per-node 2 -m vllm_forge.nccl.nccl_allreduce -b 8 -e 128M

Self-contained on purpose (stdlib + torch, no ``scripts`` imports): it runs inside images too.
torch.distributed's all-reduce works in place only, so the out-of-place columns print N/A; the
in-place columns are measured with CUDA events (warm-up, then ``-n`` timed iterations), and the
time is the slowest rank's. busbw = algbw * 2(n-1)/n, as nccl-tests computes it. Failures print
as ``<host>: Test NCCL failure <where> '<message>'`` lines, like nccl-tests, and exit 1.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import socket
import sys
import time
import traceback

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_DTYPES = {"float": ("float32", 4), "half": ("float16", 2), "bfloat16": ("bfloat16", 2), "double": ("float64", 8)}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (use 8, 64K, 128M, 1G)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def sizes_between(min_bytes: int, max_bytes: int, factor: int, elem: int) -> list[int]:
    out, size = [], max(min_bytes, elem)
    while size <= max_bytes:
        out.append(size - size % elem)
        size *= factor
    return out


def _fmt(value, width: int) -> str:
    if value is None:
        return "N/A".rjust(width)
    return f"{value:{width}.2f}" if value < 10 ** (width - 3) else f"{value:{width}.0f}"


def _row(size: int, count: int, dtype: str, time_us: float, algbw: float, busbw: float, wrong: int) -> str:
    oop = f"  {'N/A':>7}  {'N/A':>6}  {'N/A':>6}  {'N/A':>6}"
    ip = f"  {_fmt(time_us, 7)}  {_fmt(algbw, 6)}  {_fmt(busbw, 6)}  {wrong:6d}"
    return f"  {size:10d}  {count:12d}  {dtype:>8}  {'sum':>6}  {-1:6d}{oop}{ip}"


def _header(args, nranks: int) -> list[str]:
    return [
        "# runner: torch.distributed",
        f"# nThread 1 nGpus {nranks} minBytes {args.minbytes} maxBytes {args.maxbytes} step: {args.stepfactor}(factor) "
        f"warmup iters: {args.warmup_iters} iters: {args.iters} agg iters: 1 validation: 1 graph: 0",
        "#",
        "# Using devices",
    ]


_COLS = [("time", 7), ("algbw", 6), ("busbw", 6), ("#wrong", 6)] * 2
_UNITS_ROW = [("(us)", 7), ("(GB/s)", 6), ("(GB/s)", 6), ("", 6)] * 2


def _table_head() -> list[str]:
    lead = f"# {'':>10}  {'':>12}  {'':>8}  {'':>6}  {'':>6}"
    return [
        "#",
        lead + "           out-of-place                       in-place          ",
        f"# {'size':>10}  {'count':>12}  {'type':>8}  {'redop':>6}  {'root':>6}"
        + "".join(f"  {w:>{n}}" for w, n in _COLS),
        f"# {'(B)':>10}  {'(elements)':>12}  {'':>8}  {'':>6}  {'':>6}"
        + "".join(f"  {u:>{n}}" for u, n in _UNITS_ROW),
    ]


def _device_line(torch, rank: int, local: int) -> str:
    props = torch.cuda.get_device_properties(local)
    bus = "{:04x}:{:02x}:{:02x}".format(getattr(props, "pci_domain_id", 0), getattr(props, "pci_bus_id", 0),
                                        getattr(props, "pci_device_id", 0))
    return (f"#  Rank {rank:2d} Group  0 Pid {os.getpid():6d} on {socket.gethostname():>10} device {local:2d} "
            f"[{bus}] {props.name}")


def worker(rank: int, nranks: int, args, init_method: str) -> int:
    import torch
    import torch.distributed as dist

    host = socket.gethostname()
    local = int(os.environ.get("LOCAL_RANK", rank))
    try:
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", init_method=init_method, rank=rank, world_size=nranks,
                                timeout=datetime.timedelta(seconds=args.timeout))
        lines = [_device_line(torch, rank, local)]
        gathered = [None] * nranks
        dist.all_gather_object(gathered, lines[0])
        name, elem = _DTYPES[args.datatype]
        dtype = getattr(torch, name)
        if rank == 0:
            print("\n".join(_header(args, nranks) + gathered + _table_head()), flush=True)
        bw_sum, bw_n, wrong_total = 0.0, 0, 0
        for size in sizes_between(args.minbytes, args.maxbytes, args.stepfactor, elem):
            count = size // elem
            buf = torch.full((count,), float(rank + 1), dtype=dtype, device="cuda")
            dist.all_reduce(buf)  # validation pass: every element must be 1+2+...+n
            expected = nranks * (nranks + 1) / 2
            wrong = int((buf != expected).sum().item()) if count else 0
            for _ in range(args.warmup_iters):
                dist.all_reduce(buf)
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(args.iters):
                dist.all_reduce(buf)
            end.record()
            torch.cuda.synchronize()
            elapsed = torch.tensor([start.elapsed_time(end) * 1000.0 / args.iters], device="cuda")
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            wrong_t = torch.tensor([wrong], device="cuda")
            dist.all_reduce(wrong_t)
            time_us = float(elapsed.item())
            algbw = size / time_us / 1e3 if time_us > 0 else 0.0
            busbw = algbw * 2 * (nranks - 1) / nranks
            wrong_total += int(wrong_t.item())
            bw_sum, bw_n = bw_sum + busbw, bw_n + 1
            if rank == 0:
                print(_row(size, count, args.datatype, time_us, algbw, busbw, int(wrong_t.item())), flush=True)
            del buf
        if rank == 0:
            print(f"# Out of bounds values : {wrong_total} {'FAILED' if wrong_total else 'OK'}")
            print(f"# Avg bus bandwidth    : {bw_sum / max(bw_n, 1):g} ")
            nccl = ".".join(str(p) for p in torch.cuda.nccl.version()) if hasattr(torch.cuda, "nccl") else "?"
            print(f"# NCCL version : {nccl}")
            print("#", flush=True)
        dist.barrier()
        dist.destroy_process_group()
        return 1 if wrong_total else 0
    except Exception as err:  # report like nccl-tests does, then fail
        message = " ".join(str(err).split())[:500]
        where = next((f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(traceback.extract_tb(
            err.__traceback__)) if f.filename == __file__), "nccl_allreduce.py")
        print(f"{host}: Test NCCL failure {where} '{message}'", flush=True)
        print(f" .. {host} pid {os.getpid()}: Test failure rank {rank}", flush=True)
        return 1


def _spawned(rank: int, nranks: int, args, init_method: str) -> None:
    code = worker(rank, nranks, args, init_method)
    if code:
        sys.exit(code)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nccl_allreduce.py", description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=0, help="processes (GPUs) to spawn; 0: all visible GPUs "
                        "(ignored under torchrun)")
    parser.add_argument("-b", "--minbytes", type=parse_size, default=parse_size("8"))
    parser.add_argument("-e", "--maxbytes", type=parse_size, default=parse_size("128M"))
    parser.add_argument("-f", "--stepfactor", type=int, default=2)
    parser.add_argument("-n", "--iters", type=int, default=20)
    parser.add_argument("-w", "--warmup-iters", type=int, default=5)
    parser.add_argument("-d", "--datatype", choices=sorted(_DTYPES), default="float")
    parser.add_argument("--timeout", type=int, default=300, help="seconds before a collective is declared hung")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.stepfactor < 2 or args.minbytes > args.maxbytes:
        print("error: need -f >= 2 and -b <= -e", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print(f"{socket.gethostname()}: Test NCCL failure import 'PyTorch is not installed'", flush=True)
        return 1
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under torchrun
        return worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args, "env://")
    if not torch.cuda.is_available():
        print(f"{socket.gethostname()}: Test CUDA failure torch.cuda 'no CUDA GPU is visible'", flush=True)
        return 1
    nranks = args.nproc or torch.cuda.device_count()
    if nranks > torch.cuda.device_count():
        print(f"Invalid number of GPUs: {nranks} requested but only {torch.cuda.device_count()} were found.",
              flush=True)
        return 1
    init = f"tcp://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    if nranks == 1:
        code = worker(0, 1, args, init)
    else:
        import torch.multiprocessing as mp

        try:
            mp.spawn(_spawned, args=(nranks, args, init), nprocs=nranks, join=True)
            code = 0
        except Exception as err:  # a rank exited non-zero; its own failure line is already printed
            print(f"# a rank failed: {' '.join(str(err).split())[:300]}", flush=True)
            code = 1
    print(f"# wall time: {time.monotonic() - started:.1f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
