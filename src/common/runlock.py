"""One run at a time per local data root.

Two local runs over the same tables and checkpoints (a scheduled run overlapping a manual
one, two terminals) would both fail in Delta's conflict checks and leave the tables half
built. So a run holds an exclusive ``flock`` on ``<data root>/.order-pipeline.lock`` for its
whole life. The lock belongs to an open file descriptor, so the operating system releases it
when the process ends, however it ends: a killed run never leaves a stuck lock. The file's
text names the holder (pid, host, command, run id, start), written once the lock is taken,
so a refused run can say who it waited for.

The lock is reentrant within one process: ``order-pipeline run`` takes it and runs each task
in a thread of the same process, where the task's own ``run_task`` enters it again.

Only the local profile locks. On Databricks the job's ``max_concurrent_runs: 1`` (with
queueing) serializes runs, and tables live in Unity Catalog, not on this machine's disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from order_pipeline.common.config import Profile

LOCK_FILE = ".order-pipeline.lock"
POLL_SECONDS = 0.2
WAIT_HINT = "wait for it or pass --wait SECONDS"


@dataclass(frozen=True)
class Holder:
    """Who holds a data root: what the lock file says."""

    pid: int
    host: str
    command: str
    run_id: str
    started: str  # ISO 8601, UTC

    def describe(self) -> str:
        started = datetime.fromisoformat(self.started).astimezone(UTC)
        today = datetime.now(UTC).date()
        since = f"{started:%H:%M:%S} UTC"
        if started.date() != today:
            since = f"{started:%Y-%m-%d} {since}"
        run = f", run {self.run_id}" if self.run_id else ""
        return f"pid {self.pid} on {self.host}, `{self.command}`{run}, since {since}"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The holder a lock file names; None when it is empty (released) or unreadable
        (the holder took the lock a moment ago and is writing its name)."""
        try:
            data = json.loads(text)
            holder = cls(**{k: data[k] for k in ("pid", "host", "command", "run_id", "started")})
            holder.describe()
        except (ValueError, TypeError, KeyError):
            return None
        return holder


# A command refused because another run holds the data root: sysexits.h's EX_TEMPFAIL ("try
# again later"), apart from a failed task (1) and a configuration error (2).
EXIT_RUN_LOCKED = 75


class RunLocked(RuntimeError):
    """Another process holds the data root's run lock."""

    def __init__(self, root: Path, holder: Holder | None, hint: str, waited: float = 0.0) -> None:
        self.root = root
        self.holder = holder
        who = holder.describe() if holder else "holder not recorded yet"
        gave_up = f" and still did after waiting {waited:.0f}s" if waited else ""
        super().__init__(f"another order-pipeline run holds {root} ({who}){gave_up}; {hint}")


@dataclass
class _Held:
    fd: int
    depth: int


# lock file (resolved) -> this process's hold on it; flock cannot be taken twice by one
# process through two descriptors, so re-entry counts here instead
_held: dict[str, _Held] = {}
_held_guard = threading.Lock()
_acquire_guard = threading.Lock()


def local_data_root(profile: Profile) -> Path:
    """The data root of a local profile: the folder holding its warehouse (conf/local.yml
    puts the warehouse at ``${data_root}/warehouse``)."""
    assert profile.warehouse_root, "only a local profile has a data root"
    return Path(profile.warehouse_root).parent


def run_lock(
    profile: Profile,
    *,
    command: str,
    run_id: str = "",
    wait_seconds: float = 0,
    progress: Callable[[str], None] = print,
    hint: str = WAIT_HINT,
) -> contextlib.AbstractContextManager[object]:
    """The lock a run of this profile holds: the data root's on the local profile, none on
    Databricks (the job's ``max_concurrent_runs: 1`` serializes runs there)."""
    if not profile.is_local:
        return contextlib.nullcontext()
    return data_root_lock(
        local_data_root(profile),
        command=command,
        run_id=run_id,
        wait_seconds=wait_seconds,
        progress=progress,
        hint=hint,
    )


@contextlib.contextmanager
def data_root_lock(
    root: str | Path,
    *,
    command: str,
    run_id: str = "",
    wait_seconds: float = 0,
    progress: Callable[[str], None] = print,
    hint: str = WAIT_HINT,
) -> Iterator[Path]:
    """Hold ``root``'s run lock for the block. Raises ``RunLocked`` at once when another
    process holds it, or, with ``wait_seconds`` > 0, when it still does after that long
    (saying once that it waits, and for whom). Yields the lock file."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    key = str(path)
    if not _reenter(key):
        # one thread of this process acquires at a time: two tasks starting together must
        # not refuse each other (the second re-enters once the first holds the lock)
        with _acquire_guard:
            if not _reenter(key):
                fd = _acquire(path, root, command, run_id, wait_seconds, progress, hint)
                with _held_guard:
                    _held[key] = _Held(fd, 1)
    try:
        yield path
    finally:
        with _held_guard:
            held = _held[key]
            held.depth -= 1
            if held.depth == 0:
                del _held[key]
                os.ftruncate(held.fd, 0)  # released cleanly: the file names nobody
                os.close(held.fd)  # closing the descriptor releases the flock


def _reenter(key: str) -> bool:
    with _held_guard:
        if key in _held:
            _held[key].depth += 1
            return True
    return False


def _acquire(
    path: Path,
    root: Path,
    command: str,
    run_id: str,
    wait_seconds: float,
    progress: Callable[[str], None],
    hint: str,
) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
    try:
        started = time.monotonic()
        waiting = False
        while not _try_flock(fd):
            waited = time.monotonic() - started
            holder = Holder.parse(_read(fd))
            if waited >= wait_seconds:
                raise RunLocked(root, holder, hint, waited if waiting else 0.0)
            if not waiting:
                who = holder.describe() if holder else "a run that has not recorded itself yet"
                progress(
                    f"another order-pipeline run holds {root} ({who}); "
                    f"waiting up to {wait_seconds:g}s for it to finish"
                )
                waiting = True
            time.sleep(min(POLL_SECONDS, max(0.0, wait_seconds - waited)))
        if waiting:
            progress(f"{root} is free after {time.monotonic() - started:.1f}s; starting")
        previous = Holder.parse(_read(fd))
        if previous is not None:
            # a clean release empties the file: a name left in it is a run that died holding it
            progress(
                f"note: the previous run on {root} ({previous.describe()}) ended without "
                "releasing its lock (killed?); the operating system released it"
            )
        me = Holder(
            pid=os.getpid(),
            host=socket.gethostname(),
            command=command,
            run_id=run_id,
            started=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(asdict(me)) + "\n").encode(), 0)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
