"""What a task is about to consume, read before any Spark session where it can be, so that a
task whose inputs did not move since it last succeeded is skipped (``skip_unchanged``).

A task's inputs are a small JSON document: the fingerprint of its landing folder's listing
(bronze), the Delta versions of the tables it reads (silver: its bronze table and, while
rows wait for them, its parents; gold: the silver tables), plus what makes a task due
whatever its inputs (a deferral expiring, the most-sold window taking in or letting go of
an order). ``Consumed`` keeps the document of the task's last success beside the
checkpoints, written only after the task succeeded, so a failed or killed task is simply
run again.

Locally everything is read from the file system: a Delta table's version is the number of
the newest commit file in its ``_delta_log`` (under a millisecond; a Spark session takes
seconds to start). On Databricks the tables are Unity Catalog names, so their versions come
from ``DESCRIBE HISTORY ... LIMIT 1`` on the task's session, and the landing and checkpoint
folders are Volumes, read through their POSIX paths.

Besides the inputs, a task is never skipped when one of its outputs is missing, or when a
stream checkpoint of it holds a batch that was planned but not committed (``offsets/N``
without ``commits/N``): Spark must finish that batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from order_pipeline.common.checkpoint import (
    APP_ID_FILE,
    CheckpointDamaged,
    StreamLog,
    check_logs,
)
from order_pipeline.common.config import Profile
from order_pipeline.common.delta_log import delta_log_version

CONSUMED_FOLDER = "_consumed"  # under the checkpoint root: one <task>.json per task


# -- reading the state of tables, folders and checkpoints -----------------------------------
class Versions:
    """The current Delta version of a table by name (None when it does not exist)."""

    def __init__(self, version_of: Callable[[str], int | None]) -> None:
        self._version_of = version_of

    def __call__(self, table: str) -> int | None:
        return self._version_of(table)

    @classmethod
    def local(cls, profile: Profile) -> Versions:
        assert profile.warehouse_root, "local versions need the warehouse folder"
        root = Path(profile.warehouse_root)

        def version(table: str) -> int | None:
            schema, _, name = table.rpartition(".")
            return delta_log_version(root / (schema or profile.schema) / name)

        return cls(version)

    @classmethod
    def of(cls, profile: Profile, spark: Any | None) -> Versions:
        """From the file system locally (no session needed), else through ``spark``."""
        if profile.is_local:
            return cls.local(profile)
        assert spark is not None, "table versions on Databricks are read through Spark"
        return cls.from_spark(spark)

    @classmethod
    def from_spark(cls, spark: Any) -> Versions:
        def version(table: str) -> int | None:
            if not spark.catalog.tableExists(table):
                return None
            return int(spark.sql(f"DESCRIBE HISTORY {table} LIMIT 1").first()["version"])

        return cls(version)


def checkpoint_due(checkpoint: Path, ran_before: bool) -> str | None:
    """Why a stream's checkpoint makes its task run whatever its inputs: a batch in flight,
    or damage the task's start-up checks name with the way out (common/checkpoint.py): a
    log with a missing file or a gap, a lost stream id, a checkpoint emptied after the task
    had run. None when it is whole and settled."""
    log = StreamLog.read(checkpoint)
    try:
        check_logs(log, "")
    except CheckpointDamaged as exc:
        return f"damaged checkpoint ({exc})"
    if log.last_offset is not None and log.last_offset not in log.commits:
        return f"batch {log.last_offset} of {checkpoint} was planned but not committed"
    if ran_before and not log.started:
        return f"{checkpoint} is empty or gone though the task ran before"
    if log.started and not (checkpoint / APP_ID_FILE).is_file():
        return f"{checkpoint / APP_ID_FILE} is missing"
    return None


def listing_fingerprint(folder: Path) -> str:
    """A digest of every entry under ``folder`` (relative path, size, modification time),
    so that any file landed, changed, renamed or removed changes it. The sub-folders are
    walked whatever the landing settings say: a change the bronze task then leaves out
    still makes it run, and report it."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder, onerror=_unreadable(folder)):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            try:
                stat = path.stat()
                entry = f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
            except OSError as exc:  # a dangling link, a file removed while listing
                entry = f"{path.relative_to(folder)}\0{type(exc).__name__}\n"
            digest.update(entry.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _unreadable(folder: Path) -> Callable[[OSError], None]:
    def raise_it(exc: OSError) -> None:
        if Path(exc.filename or "") == folder and isinstance(exc, FileNotFoundError):
            return  # nothing landed yet: an empty listing
        raise exc

    return raise_it


# -- what a task consumed ---------------------------------------------------------------------
@dataclass(frozen=True)
class Inputs:
    """What a task is about to consume; ``due`` says why it must run whatever they are."""

    values: dict[str, Any]
    due: str | None = None
    # what a skipped task still judges without Spark (silver: freshness from the newest
    # values its last run recorded), saying each warning through the task's progress: details
    # for its run record; raises to fail the task
    when_skipped: Callable[[Callable[[str], None]], dict[str, object]] | None = field(
        default=None, compare=False
    )

    def unchanged_since(self, previous: dict[str, Any] | None) -> bool:
        return self.due is None and previous is not None and previous == _plain(self.values)

    def change_from(self, previous: dict[str, Any] | None) -> str:
        """Why the task must run, in words: what is due, or which inputs moved."""
        if self.due is not None:
            return self.due
        if previous is None:
            return "has not succeeded before"
        now = _plain(self.values)
        moved = sorted(k for k in now.keys() | previous.keys() if now.get(k) != previous.get(k))
        return f"moved: {', '.join(moved)}" if moved else "skip_unchanged is off"


@dataclass(frozen=True)
class Consumed:
    """The inputs of a task's last success, with what the task itself added (e.g. when its
    oldest deferred row expires), in ``<checkpoint_root>/_consumed/<task>.json``."""

    inputs: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""

    @staticmethod
    def path(profile: Profile, task: str) -> Path:
        return Path(profile.checkpoint_root) / CONSUMED_FOLDER / f"{task}.json"

    @classmethod
    def load(cls, profile: Profile, task: str) -> Consumed | None:
        """The last record, or None (never ran, or a record that cannot be read: the task
        then runs, which is always safe)."""
        try:
            data = json.loads(cls.path(profile, task).read_text(encoding="utf-8"))
            return cls(inputs=data["inputs"], state=data.get("state", {}), run_id=data["run_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, profile: Profile, task: str) -> None:
        path = self.path(profile, task)
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.{os.getpid()}")
        staged.write_text(
            json.dumps(
                {"inputs": _plain(self.inputs), "state": _plain(self.state), "run_id": self.run_id,
                 "recorded_at": datetime.now(UTC).isoformat()},
                sort_keys=True,
            ),
            encoding="utf-8",
        )  # fmt: skip
        os.replace(staged, path)

    @classmethod
    def forget(cls, profile: Profile, tasks: Iterable[str]) -> None:
        for task in tasks:
            cls.path(profile, task).unlink(missing_ok=True)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """The JSON form, so that a fresh document compares equal to a loaded one."""
    return json.loads(json.dumps(values, default=str, sort_keys=True))
