"""Where a running build is, read from its output: the phase, ninja's ``[k/N]``, the time left, and the slowest
compile units so far (from the build dir's growing ``.ninja_log``), and the units compiling now (from /proc, see
inflight.py). Pure logic; vllm_forge/cli/render.py draws it.

ninja prints ``[k/N] <description>`` when an edge *finishes* (when its output is not a terminal), so ``k`` counts
finished steps and a unit is known only once it is done: the slowest units are "slowest so far", never the one
compiling now. ``N`` counts ninja's steps (compiles, links, generated files) for this run only: a resumed build
starts again at ``[1/N]`` with a smaller ``N``. What runs meanwhile is read from the compiler processes themselves,
so a unit that compiles for ten minutes is named while it does, and the plain lines say so instead of going silent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vllm_forge.build import inflight, ninja_log

POLL_SECONDS = 2.0  # how often the .ninja_log is read again (a display refreshes several times a second)
PLAIN_EVERY_SECONDS = 60.0  # without a terminal: a line at least this often while something changes ...
PLAIN_FRACTION = 0.1  # ... and whenever another tenth of the steps finished; never one per object
QUIET_GAP_MAX_SECONDS = 600.0  # nothing new: a line after 1 min, then 2, 4, 8, then every 10 min (a CI log stays short)
INFLIGHT_SECONDS = 5.0  # how often /proc is read for the units compiling now
RUNNING_SHOWN = 3  # in-flight units named in a plain line


def eta_settled(done: int, total: int) -> bool:
    """Whether enough steps finished for the rate so far to mean something: a tenth of them, at least 5
    (the first steps are the quick C++ files; vLLM's heavy CUTLASS kernels come later). Before that the
    ETA is shown as ``~``."""
    return done >= min(total, max(5, total // 10))


@dataclass(frozen=True)
class ProgressView:
    """What to show now."""

    phase: str  # "starting", "setup.py", "CMake configure", "compiling", "packaging"
    detail: str  # the latest output line that says what the phase is doing ('' while compiling)
    elapsed: float  # seconds since the build started
    done: int = 0  # ninja steps finished (this ninja run)
    total: int = 0  # ninja steps of this run
    eta: float | None = None  # seconds left, from the rate so far; None: not enough steps finished
    eta_settled: bool = False  # False: a rough ETA ("ETA ~")
    slowest: list[ninja_log.NinjaEntry] = field(default_factory=list)  # slowest units so far, this build
    running: list[inflight.RunningUnit] = field(default_factory=list)  # compiling now, longest-running first
    quiet: float = 0.0  # while compiling: seconds since a step last finished (or since ninja started)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


def duration(seconds: float) -> str:
    """``45s``, ``8m05s``, ``1h02m``: short, and the same width for a running clock."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_text(view: ProgressView) -> str:
    if view.eta is None:
        return "ETA ~"
    return ("ETA " if view.eta_settled else "ETA ~") + duration(view.eta)


def shorten_path(path: str, width: int) -> str:
    """``path`` in at most ``width`` characters, cut only between its components (``…/cutlass_w4a8/x.cu``); a
    last component longer than ``width`` loses its start."""
    if len(path) <= width:
        return path
    parts = path.split("/")
    kept = parts[-1]
    for part in reversed(parts[:-1]):
        if len("…/" + part + "/" + kept) > width:
            break
        kept = part + "/" + kept
    shown = "…/" + kept
    return shown if len(shown) <= width else "…" + parts[-1][-(width - 1):]


class BuildProgress:
    """Fed each output line of a build (``feed``, from the thread that reads it); ``view()`` from any thread."""

    def __init__(self, tree: Path | str, *, clock: Callable[[], float] = time.monotonic,
                 proc_root: Path | str = "/proc"):
        self.tree = Path(tree).expanduser()
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._phase, self._detail = "starting", ""
        self._done = self._total = 0
        self._ninja_start: float | None = None  # when this ninja run began (the line before its first [k/N])
        self._last_progress: float | None = None
        self._last_line_at = self._started
        self._step_at = self._started  # when a step last finished, or compiling began
        build_dir = ninja_log.find_build_dir(self.tree)
        self._tail = ninja_log.LogTail(build_dir / ".ninja_log" if build_dir else None)
        self._build_dir_named: Path | None = None  # from CMake's "Build files have been written to: DIR"
        self._polled = -POLL_SECONDS
        self._slowest: list[ninja_log.NinjaEntry] = []
        self._proc_root = proc_root
        self._inflight_at = -INFLIGHT_SECONDS
        self._running: list[inflight.RunningUnit] = []
        self._plain_lock = threading.Lock()  # plain_line is called per output line and by a timer between them
        self._plain_at: float | None = None  # when the last plain line was due
        self._plain_phase = self._plain_detail = ""
        self._plain_done = 0
        self._quiet_gap = PLAIN_EVERY_SECONDS

    # --- input --------------------------------------------------------------------------------------------

    def feed(self, line: str) -> None:
        now = self._clock()
        with self._lock:
            self._feed(line.rstrip("\n"), now)

    def _feed(self, line: str, now: float) -> None:
        progress = ninja_log.parse_progress(line)
        if progress:
            done, total, _ = progress
            if self._ninja_start is None or total != self._total or done < self._done:  # a new ninja run
                self._ninja_start = self._last_line_at
            self._phase, self._detail = "compiling", ""
            self._done, self._total, self._last_progress = done, total, now
            self._step_at = now
            self._last_line_at = now
            return
        self._last_line_at = now
        text = line.strip()
        if not text:
            return
        if text.startswith("-- Build files have been written to:"):
            self._build_dir_named = Path(text.split(":", 1)[1].strip())
            self._phase, self._detail = "compiling", "ninja starts"
            self._step_at = now
            return
        if text.startswith(("-- ", "CMake ")) and self._phase in ("starting", "setup.py", "CMake configure"):
            self._phase, self._detail = "CMake configure", text[3:] if text.startswith("-- ") else text
        elif self._phase == "compiling" and self._done >= self._total > 0:
            self._phase, self._detail = "packaging", text
        elif self._phase in ("starting", "setup.py"):
            self._phase, self._detail = "setup.py", text
        elif self._phase == "packaging":
            self._detail = text

    # --- output -------------------------------------------------------------------------------------------

    def view(self) -> ProgressView:
        now = self._clock()
        with self._lock:
            self._poll(now)
            eta = None
            if self._done >= 2 and self._ninja_start is not None and self._last_progress is not None:
                per_step = (self._last_progress - self._ninja_start) / self._done
                eta = max(0.0, per_step * (self._total - self._done) - (now - self._last_progress))
            compiling = self._phase == "compiling"
            return ProgressView(self._phase, self._detail, now - self._started, self._done, self._total, eta,
                                eta_settled(self._done, self._total), list(self._slowest),
                                list(self._running) if compiling else [], now - self._step_at if compiling else 0.0)

    def _poll(self, now: float) -> None:
        """Read what ninja appended to .ninja_log, at most every POLL_SECONDS."""
        if self._phase not in ("compiling", "packaging") or now - self._polled < POLL_SECONDS:
            return
        self._polled = now
        if self._tail.path is None:  # a first build: the build dir exists now
            found = self._build_dir_named or ninja_log.find_build_dir(self.tree)
            if found is None:
                return
            self._tail.attach(found / ".ninja_log")
        entries = self._tail.read()
        self._slowest = ninja_log.slowest([e for e in entries if e.target], 3)
        if self._phase == "compiling" and now - self._inflight_at >= INFLIGHT_SECONDS:
            self._inflight_at = now
            self._running = inflight.running_units(self._tail.path.parent, self._proc_root)

    def plain_line(self) -> str | None:
        """Without a terminal (CI, a pipe): a line to print now, or None. One when the phase changes, then while
        compiling when another tenth of the steps finished or a minute passed since the last one and something
        changed. When nothing did (a long unit, a slow configure), a line anyway after 1 minute, then 2, 4, 8,
        then every 10: call this between output lines too (a timer), since a silent build feeds none."""
        view = self.view()
        now = self._clock()
        with self._plain_lock:
            due = view.phase != self._plain_phase
            if not due and view.phase == "compiling":
                step = max(1, int(view.total * PLAIN_FRACTION))
                due = view.done >= self._plain_done + step or view.done == view.total > self._plain_done
            since = now - self._plain_at if self._plain_at is not None else 0.0
            if not due and since >= PLAIN_EVERY_SECONDS:
                due = (view.done != self._plain_done if view.phase == "compiling"
                       else view.detail != self._plain_detail)
            quiet_line = not due and self._plain_at is not None and since >= self._quiet_gap
            if not (due or quiet_line):
                return None
            self._quiet_gap = (min(2 * self._quiet_gap, QUIET_GAP_MAX_SECONDS) if quiet_line
                               else PLAIN_EVERY_SECONDS)
            self._plain_at, self._plain_phase, self._plain_done = now, view.phase, view.done
            self._plain_detail = view.detail
        return render_plain(view)


def running_text(units: list[inflight.RunningUnit], shown: int = RUNNING_SHOWN) -> str:
    """``scaled_mm_c2x.cu (_C_stable_libtorch) 4m12s, x.cu (_C) 40s, and 3 more``."""
    text = ", ".join(f"{u.source.rsplit('/', 1)[-1]} ({u.target}) {duration(u.seconds)}" for u in units[:shown])
    return text + (f", and {len(units) - shown} more" if len(units) > shown else "")


def _quiet_text(view: ProgressView) -> str:
    """``, nothing finished for 4m10s; running: ...``: what a line adds while compiling (nothing when there is
    no news: quiet for under a minute, nothing seen running)."""
    text = f", nothing finished for {duration(view.quiet)}" if view.quiet >= PLAIN_EVERY_SECONDS else ""
    return text + (f"; running: {running_text(view.running)}" if view.running else "")


def render_plain(view: ProgressView) -> str:
    """One line for a log: ``compiling [96/417] 23%, 8m00s elapsed, ETA ~27m05s; slowest so far: 225s x.cu``;
    while a unit takes long, ``compiling [77/79] 97%, 9m00s elapsed, nothing finished for 4m10s; running: x.cu (_C)
    4m12s``."""
    if view.phase != "compiling" or not view.total:
        detail = f": {view.detail}" if view.detail else ""
        quiet = _quiet_text(view) if view.phase == "compiling" else ""
        return f"{view.phase}, {duration(view.elapsed)} elapsed{detail}{quiet}"
    line = f"compiling [{view.done}/{view.total}] {view.fraction:.0%}, {duration(view.elapsed)} elapsed"
    if not (view.eta == 0 and view.quiet >= PLAIN_EVERY_SECONDS):  # an ETA run down to 0s says nothing true
        line += f", {eta_text(view)}"
    line += _quiet_text(view)
    if view.slowest:
        line += "; slowest so far: " + ", ".join(
            f"{e.seconds:.0f}s {e.source.rsplit('/', 1)[-1]} ({e.target})" for e in view.slowest)
    return line
