"""What the tasks print, drawn with rich: the consoles, a step and what it says, the live build display, copyable
lines, one-line errors. The words come from below (pipeline.py's ``Said``/``Grid``, the reports); this module
only draws them."""

from __future__ import annotations

import errno
import os
import threading
import time

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from vllm_forge.core.plan import mask_urls


class CopyableConsole(Console):
    """Output a user copies from: rich never breaks a line (soft_wrap: the terminal wraps what is too long for
    it, and a copy gets the line whole), and a table is laid out at least as wide as its longest word, so a
    path, command or image name in a cell is never folded or cut (the terminal wraps the wider lines)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, **kwargs)

    def print(self, *objects, **kwargs) -> None:
        for table in (item for item in objects if isinstance(item, Table)):
            self._keep_words_whole(table)
        super().print(*objects, **kwargs)

    def _keep_words_whole(self, table: Table) -> None:
        """No column (and no title) narrower than its longest word: rich then wraps cells at spaces only, and a
        table that cannot fit the terminal that way is printed wider than it (rich's own layout would fold a
        path or end it in "…")."""
        unbounded = self.options.update(max_width=1 << 16)

        def longest_word(renderable) -> int:
            return Measurement.get(self, unbounded, renderable).minimum if renderable else 0

        for column in table.columns:
            word = max(longest_word(cell) for cell in [column.header, *column.cells])
            column.min_width = max(column.min_width or 0, word)
        if table.title:
            table.min_width = max(table.min_width or 0, longest_word(table.title))

    def on_broken_pipe(self) -> None:
        """rich's own answer (exit 1) would say a closed pipe failed the task: the task wrapper ends it as
        a shell reports a program SIGPIPE stopped (``forge_task``)."""
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


console = CopyableConsole(highlight=False)
err_console = CopyableConsole(stderr=True, highlight=False)


def print_copyable(line: str) -> None:
    """A line to copy and run (a command, a path, an image name): printed as is, never wrapped or styled."""
    console.print(escape(line))


def print_error(message: str) -> None:
    """One line on stderr, always: a multi-line message (a log tail) is folded into it; a repo URL with a token
    in it never reaches the terminal."""
    line = mask_urls(" | ".join(part.strip() for part in message.splitlines() if part.strip()))
    err_console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)


def markup(parts) -> str:
    """``Said`` parts as rich markup, each text escaped."""
    return "".join(escape(part) if isinstance(part, str) else f"[{part[1]}]{escape(part[0])}[/]" for part in parts)


def print_said(items, out: Console | None = None) -> None:
    """Lines and tables from below (pipeline.py ``Said`` and ``Grid``)."""
    out = out or console
    for item in items:
        if hasattr(item, "parts"):
            out.print(markup(item.parts), soft_wrap=True)
        else:
            table = Table(*item.columns, title=escape(item.title))
            for row in item.rows:
                table.add_row(*(escape(cell) for cell in row))
            out.print(table)


def print_lines(lines, indent: str = "  ") -> None:
    """A step's or a daemon's lines as planned: ``# `` comments dim, commands as they run."""
    for line in lines:
        console.print(f"{indent}[dim]{escape(line)}[/]" if line.startswith("#") else f"{indent}{escape(line)}",
                      soft_wrap=True)


def print_step(step) -> None:
    console.rule(f"[bold]{escape(step.title)}[/]", align="left")
    print_lines(step.lines())
    if step.error is not None:
        console.print(f"  [yellow]not ready:[/] {escape(mask_urls(str(step.error)))}", soft_wrap=True)


def print_note(note: str, out: Console | None = None) -> None:
    (out or console).print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)


class StepDisplay:
    """What the terminal shows while a pipeline runs: a spinner with the step's latest output line, or, for
    build-wheel, the build's progress (phase; ninja's objects done/total, a bar, elapsed, ETA; the slowest
    units so far; the units compiling now). Without a terminal (CI, a pipe) a build prints plain lines now and
    then instead, and nothing else is drawn; a timer asks for one between output lines too, so a build whose
    ninja prints nothing for minutes (one long unit) still says what runs. Each line still goes to the step's
    full log as before."""

    TICK_SECONDS = 5.0  # how often the timer asks BuildProgress.plain_line whether a line is due

    def __init__(self, out: Console):
        from rich.live import Live
        from rich.spinner import Spinner

        self.out = out
        self.title, self.last, self.progress = "starting", "", None
        self._ticker: threading.Thread | None = None
        self._stop_ticker = threading.Event()
        self.started = time.monotonic()
        self.spinner = Spinner("dots")
        self.live = (Live(console=out, transient=True, refresh_per_second=4, get_renderable=self._render)
                     if out.is_terminal and not out.is_dumb_terminal else None)

    def __enter__(self):
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self._end_ticker()
        if self.live:
            self.live.stop()  # on Ctrl-C too: the live lines are erased, the terminal left clean

    def start(self, step) -> None:
        from vllm_forge.build.build_progress import BuildProgress

        self._end_ticker()
        self.title, self.last = step.title, ""
        plan = step.plan if step.name == "build-wheel" else None
        self.progress = BuildProgress(plan.request.src) if plan is not None else None
        if self.progress is not None and self.live is None:
            self._stop_ticker = threading.Event()
            self._ticker = threading.Thread(target=self._tick, args=(self.progress, self._stop_ticker),
                                            name="build-progress-lines", daemon=True)
            self._ticker.start()

    def _tick(self, progress, stop: threading.Event) -> None:
        while not stop.wait(self.TICK_SECONDS):
            self._print_plain(progress)

    def _end_ticker(self) -> None:
        self._stop_ticker.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2 * self.TICK_SECONDS)
            self._ticker = None

    def _print_plain(self, progress) -> None:
        plain = progress.plain_line()
        if plain:
            self.out.print(f"{escape(self.title)}: {escape(plain)}", soft_wrap=True)

    def feed(self, line: str) -> None:
        if self.progress is None:
            self.last = line
            return
        self.progress.feed(line)
        if self.live is None:
            self._print_plain(self.progress)

    def _render(self):
        from rich.text import Text

        width = max(40, self.out.width)
        if self.progress is None:
            head = Text.assemble(f" {self.title} ", (f"{time.monotonic() - self.started:5.0f}s ", "dim"),
                                 self.last.strip()[-200:])
            head.truncate(width - 3, overflow="ellipsis")
            return self._spin(head)
        return render_build(self.title, self.progress.view(), width, self._spin)

    def _spin(self, text):
        from rich.table import Table

        grid = Table.grid(padding=0)
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        grid.add_row(self.spinner, text)
        return grid


def render_build(title: str, view, width: int, spin):
    """The live lines of a build: one status line, then the units compiling now and the slowest so far (paths
    cut between their components to fit the width, never wrapped)."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    from vllm_forge.build.build_progress import RUNNING_SHOWN, duration, eta_text, shorten_path

    def unit_line(label: str, seconds: str, target: str, source: str, style: str):
        head = f"{label}{seconds}  {target}  "
        return Text(head + shorten_path(source, max(12, width - len(head) - 1)), style=style, no_wrap=True,
                    overflow="ellipsis")

    running = [unit_line("  running:        " if index == 0 else " " * 18, f"{duration(unit.seconds):>6}",
                         unit.target, unit.source, "")
               for index, unit in enumerate(view.running[:RUNNING_SHOWN])]
    if len(view.running) > RUNNING_SHOWN:
        running.append(Text(" " * 18 + f"and {len(view.running) - RUNNING_SHOWN} more", no_wrap=True))
    if view.phase != "compiling" or not view.total:
        text = Text.assemble(f" {title} ", (view.phase, "bold"), (f" {duration(view.elapsed)} ", "dim"),
                             view.detail.strip())
        text.truncate(width - 3, overflow="ellipsis")
        return Group(spin(text), *running) if running else spin(text)
    grid = Table.grid(padding=(0, 1))
    for _ in range(4):
        grid.add_column(no_wrap=True)
    figures = (f"{view.done}/{view.total} {view.fraction:4.0%}  {duration(view.elapsed)} elapsed  "
               f"{eta_text(view)}")
    bar_width = max(10, min(40, width - len(title) - len(figures) - 16))
    grid.add_row(spin(Text(f" {title}")), Text("compiling", style="bold"),
                 ProgressBar(total=view.total, completed=view.done, width=bar_width), Text(figures))
    lines = [grid, *running]
    for index, entry in enumerate(view.slowest):
        label = "  slowest so far: " if index == 0 else " " * 18
        lines.append(unit_line(label, f"{entry.seconds:5.0f}s", entry.target, entry.source, "dim"))
    return Group(*lines)




def run_streaming(label: str, fn, *args, **kwargs):
    """Run ``fn`` with a live spinner showing its latest output line and the elapsed time."""
    start = time.monotonic()
    with console.status(f"{label}...") as status:
        def on_line(line: str) -> None:
            elapsed = time.monotonic() - start
            status.update(f"{label} [dim]{elapsed:5.0f}s[/] {escape(line[-100:])}")

        result = fn(*args, on_line=on_line, **kwargs)
    return result, time.monotonic() - start


def print_rows(title: str, rows) -> None:
    """(what, value) rows as a two-column table without a header (a summary)."""
    table = Table("", "", title=title, show_header=False)
    for what, value in rows:
        table.add_row(what, escape(value))
    console.print(table)
