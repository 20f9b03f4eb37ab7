"""`order-pipeline run --watch`: one process that keeps serving new data.

Every ``--interval`` seconds it asks each task of the job graph whether a run started now
would skip it (``runner.pending_tasks``: the task's own skip decision, read from the file
system, no Spark). When one would not, it runs the graph once, as `order-pipeline run`
does, in this process: the Spark session started by the first run stays warm for the next
ones, and tasks with nothing new are skipped as usual. A poll that finds nothing writes
nothing: no run record, no commit.

A run that failed is not repeated for the same pending inputs (a failing rule would fail
every poll): the next run starts when what is pending changes, e.g. a file is landed or
the rules are edited. The data root's run lock is held by each poll and each run, not in
between, so `replay`, `erase` or a single `run --task` may take their turn; a poll that
finds the lock held just waits for the next one.

SIGINT (Ctrl-C) or SIGTERM stops the watch after the run in progress; a second Ctrl-C
interrupts that run (its tasks' checkpoints make the next run finish their work).
"""

from __future__ import annotations

import signal
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the task module imports pyspark: not at `--help` time
    from order_pipeline.jobs.task import PendingTask


@dataclass
class WatchStats:
    runs: int = 0
    failed_runs: int = 0
    polls: int = 0
    busy_polls: int = 0  # another process held the data root
    # the last hour's at the default interval: a watch runs for days
    poll_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=720))

    def summary(self) -> str:
        text = f"{self.runs} run(s), {self.failed_runs} failed; {self.polls} poll(s)"
        if self.poll_seconds:
            text += (
                f", a poll took {statistics.median(self.poll_seconds) * 1000:.0f} ms median, "
                f"{max(self.poll_seconds) * 1000:.0f} ms max"
            )
        if self.busy_polls:
            text += f"; {self.busy_polls} found the data root held by another run"
        return text


class StopRequest:
    """Set by SIGINT/SIGTERM (first one: stop after the current run; a second SIGINT
    interrupts it). Signal handlers can only be installed from the main thread; elsewhere
    (a test driving the watch from a thread) ``set()`` is the way to stop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]

    def _on_signal(self, number: int, frame: object) -> None:
        if self._event.is_set() and number == signal.SIGINT:
            raise KeyboardInterrupt
        print("\nstopping after the current run (Ctrl-C again interrupts it)", flush=True)
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)

    def is_set(self) -> bool:
        return self._event.is_set()


def describe(pending: list[PendingTask]) -> str:
    return "; ".join(f"{p.task} ({p.reason})" for p in pending)


def watch(
    poll: Callable[[], list[PendingTask]],
    run_once: Callable[[], int],
    interval: float,
    max_runs: int | None = None,
    stop: StopRequest | None = None,
    say: Callable[[str], None] = print,
) -> tuple[int, WatchStats]:
    """Poll, run when something is pending, wait ``interval``; until stopped or after
    ``max_runs`` runs. Returns the last run's exit status (0 if none ran) and the figures.
    ``poll`` raises ``RunLocked`` when another process holds the data root."""
    from order_pipeline.common.runlock import RunLocked

    stats, status = WatchStats(), 0
    failed_with: list[tuple[str, str]] | None = None  # what was pending when a run failed
    stop = StopRequest() if stop is None else stop
    with stop:
        while not stop.is_set():
            started = time.monotonic()
            try:
                pending = poll()
            except RunLocked as exc:
                stats.busy_polls += 1
                if stats.busy_polls == 1:
                    say(f"{_now()} waiting: {exc}")
                pending = []
            stats.polls += 1
            stats.poll_seconds.append(time.monotonic() - started)
            wanted = sorted((p.task, repr(p.inputs)) for p in pending)
            if pending and wanted != failed_with:
                say(f"{_now()} run #{stats.runs + 1}: {describe(pending)}")
                status = run_once()
                stats.runs += 1
                if status == 0:
                    failed_with = None
                else:
                    stats.failed_runs += 1
                    failed_with = wanted
                    say(
                        f"{_now()} the run failed (exit {status}); it starts again when the "
                        "pending inputs change"
                    )
                if max_runs is not None and stats.runs >= max_runs:
                    break
                say(f"{_now()} watching for new data every {interval:g}s (Ctrl-C stops)")
            stop.wait(interval)
    say(f"{_now()} watch ended: {stats.summary()}")
    return status, stats


def _now() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")
