"""Progress of the long commands (``run``, ``generate``, ``replay``, ``bench``).

In a terminal: a bar (rich) with the steps done, the elapsed time and what runs now, with
every message printed above it. Anywhere else (a pipe, a log file, CI, a Databricks task):
plain lines, one per message and one per finished step, ``[done 3/9] bronze_orders: SUCCESS
in 4.2s``, so logs stay greppable and nothing draws control characters into them.

rich is imported only when a bar is drawn: the task entry points that Databricks runs never
import this module, and piped output needs no terminal library.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TextIO


class Progress(Protocol):
    def log(self, message: str) -> None:
        """A message, printed whole (above the bar in a terminal)."""

    def advance(self, step: str) -> None:
        """One step done: ``step`` says which, and how it ended."""

    def doing(self, what: str) -> None:
        """What runs now (the bar's description; plain output says it with log())."""


class PlainProgress:
    """One line per message and per finished step: for pipes, files and CI logs."""

    def __init__(self, title: str, total: int | None, out: TextIO) -> None:
        self.title, self.total, self.out, self.done = title, total, out, 0

    def log(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def advance(self, step: str) -> None:
        self.done += 1
        of = f"/{self.total}" if self.total else ""
        self.log(f"[done {self.done}{of}] {step}")

    def doing(self, what: str) -> None:
        pass


class BarProgress:
    """A rich progress bar; messages print above it (the task's own prints too: rich
    redirects stdout while the bar is live)."""

    def __init__(self, bar: Any, task: Any, title: str) -> None:
        self.bar, self.task, self.title = bar, task, title

    def log(self, message: str) -> None:
        self.bar.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def advance(self, step: str) -> None:
        self.log(f"  done: {step}")
        self.bar.advance(self.task)

    def doing(self, what: str) -> None:
        self.bar.update(self.task, description=f"{self.title}: {what}")


def is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty
        return False


@contextmanager
def progress(
    title: str, total: int | None, *, console: Any = None, out: TextIO | None = None
) -> Iterator[Progress]:
    """Progress of ``total`` steps (None: unknown, the bar pulses). A bar when ``console``
    (a rich Console) is given or ``out`` (default stdout) is a terminal; plain lines else."""
    out = out or sys.stdout
    if console is None and not is_terminal(out):
        yield PlainProgress(title, total, out)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.progress import Progress as RichProgress

    console = console or Console(file=out)
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        *([MofNCompleteColumn()] if total else []),
        TimeElapsedColumn(),
    ]
    with RichProgress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(title, total=total)
        yield BarProgress(bar, task, title)
        if total is None:  # a pulsing bar: full once the work is done
            bar.update(task, total=1, completed=1)
