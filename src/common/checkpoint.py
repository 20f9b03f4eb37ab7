"""A stream's checkpoint, read before the stream starts: would resuming it lose or double data?

Spark resumes a micro-batch stream from two logs in its checkpoint folder: ``offsets/N``,
written before batch N runs (what it reads), and ``commits/N``, written after it ran. A
restart re-runs the newest batch when it has offsets but no commit (the normal recovery
after a crash: the pipeline's writes carry Delta's (txnAppId, txnVersion) identity, so the
re-run writes nothing twice), and otherwise plans a new batch from the newest offsets on.
Spark 4.1 only reads the newest commit and the two newest offsets files.

Damage to what a checkpoint holds is not always loud. What Spark does (tests/test_damaged_state.py):

- newest ``commits/N`` gone: batch N re-runs, exactly once (its writes are skipped);
- an older ``commits/K`` gone: nothing (``offsets/K+1`` proves batch K ran);
- newest ``offsets/N`` gone: fails with CONCURRENT_STREAM_LOG_UPDATE, which says nothing
  of the missing file; an older ``offsets/K`` gone: fails with "batch K doesn't exist";
- newest offsets *and* commits gone (or every one of them): silent loss. Spark plans those
  batch ids again over everything that arrived since, and Delta skips each write whose
  identity it already holds, so the new rows never arrive;
- ``_txn_app_id`` gone: a re-run batch gets a new txnAppId and its appends land twice;
- a table the stream writes deleted and created empty again: silent loss, the stream goes on
  from its checkpoint and the table only gets what arrives from then on;
- the checkpoint folder deleted while its tables remain: everything is read and appended again.

Each is stopped here, before Spark starts, with a message naming the checkpoint, what is
missing and the way out; a lost id file is recovered from the tables' Delta logs where
exactly one identity fits.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

APP_ID_FILE = "_txn_app_id"  # the stream's txnAppId, as long as the checkpoint lives
TABLES_FILE = "_tables.json"  # the Delta table id of every table the stream writes


class CheckpointDamaged(RuntimeError):
    """Resuming this checkpoint would lose or double data; the message says why and what to do."""

    def __init__(self, folder: Path, problem: str, way_out: str) -> None:
        super().__init__(f"checkpoint {folder}: {problem}. Way out: {way_out}")
        self.folder = folder


@dataclass(frozen=True)
class StreamLog:
    """The batch ids of a checkpoint's offsets and commits logs."""

    folder: Path
    offsets: tuple[int, ...]
    commits: tuple[int, ...]

    @classmethod
    def read(cls, folder: Path) -> StreamLog:
        return cls(folder, _batch_ids(folder / "offsets"), _batch_ids(folder / "commits"))

    @property
    def last_offset(self) -> int | None:
        return self.offsets[-1] if self.offsets else None

    @property
    def last_commit(self) -> int | None:
        return self.commits[-1] if self.commits else None

    @property
    def started(self) -> bool:
        return bool(self.offsets or self.commits)


def _batch_ids(log: Path) -> tuple[int, ...]:
    if not log.is_dir():
        return ()
    return tuple(sorted(int(p.name) for p in log.iterdir() if p.name.isdigit()))


@dataclass(frozen=True)
class StreamWrites:
    """The highest batch id (Delta txnVersion) each identity of this checkpoint's name has
    written, in the tables the stream owns (dropped with its checkpoint by a full refresh)
    and in all the tables it writes (shared ones, such as ops_quality_metrics, included)."""

    own: dict[str, int]
    all: dict[str, int]


def check_logs(log: StreamLog, way_out: str) -> None:
    """Stop where Spark cannot resume the logs, or would fail saying something else."""
    done = log.last_commit
    if done is not None and (log.last_offset is None or done > log.last_offset):
        raise CheckpointDamaged(
            log.folder,
            f"offsets/{done} is missing while commits/{done} says batch {done} ran (offsets "
            f"{_span(log.offsets)}): where the next batch starts is lost, and a batch planned "
            "again under an id already written would be skipped by Delta, its rows lost",
            way_out,
        )
    holes = (
        [b for b in range(log.offsets[0], log.offsets[-1]) if b not in log.offsets]
        if log.offsets
        else []
    )
    if holes:
        raise CheckpointDamaged(
            log.folder,
            f"{', '.join(f'offsets/{b}' for b in holes)} {'is' if len(holes) == 1 else 'are'} "
            f"missing between offsets/"
            f"{log.offsets[0]} and offsets/{log.offsets[-1]}: the offsets log has a gap, so what "
            "those batches read cannot be told",
            way_out,
        )


def stream_app_id(
    log: StreamLog, name: str, writes: StreamWrites | None, way_out: str
) -> tuple[str, str | None]:
    """The stream's txnAppId, and a note when it had to be recovered.

    Kept in ``_txn_app_id`` beside the checkpoint, made anew with the checkpoint. When the
    file is gone but the checkpoint is not, the id is taken back from the tables' Delta logs
    if exactly one identity of this checkpoint's name fits the logs (wrote the last
    committed batch and nothing past the last planned one); otherwise the stream stops.
    ``writes`` None: the tables' logs cannot be read here (Databricks)."""
    marker = log.folder / APP_ID_FILE
    if marker.is_file():
        return marker.read_text().strip(), None
    if not log.started:
        if writes and writes.own:
            raise CheckpointDamaged(
                log.folder,
                f"the checkpoint is empty or gone, but its tables hold batches written by "
                f"{_ids(writes.own)}: starting over would read every row again and append it a "
                "second time",
                way_out,
            )
        app_id = f"{name}-{uuid.uuid4()}"
        log.folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(app_id)
        return app_id, None
    assert log.last_offset is not None  # check_logs: commits imply offsets
    fits = {
        a: v
        for a, v in (writes.all if writes else {}).items()
        if v <= log.last_offset and (log.last_commit is None or v >= log.last_commit)
    }
    if len(fits) != 1:
        found = "the tables' Delta logs cannot be read here" if writes is None else (
            f"the tables' Delta logs hold {len(fits)} identities that fit batches "
            f"{_span(log.commits)} committed and {_span(log.offsets)} planned"
            + (f" ({_ids(fits)})" if fits else "")
        )  # fmt: skip
        raise CheckpointDamaged(
            log.folder,
            f"{APP_ID_FILE} is missing (the stream's Delta txnAppId): a new one would make a "
            f"re-run batch append its rows twice, and {found}",
            way_out,
        )
    (app_id,) = fits
    marker.write_text(app_id)
    return app_id, (
        f"{marker} was missing: recovered {app_id} from the tables' Delta logs "
        f"(its last batch {fits[app_id]}, checkpoint offsets {_span(log.offsets)})"
    )


def check_writes(log: StreamLog, app_id: str, writes: StreamWrites | None, way_out: str) -> None:
    """Stop when the tables hold batches the checkpoint has no offsets for: Spark would plan
    those batch ids again over newer data, and Delta skip every write of them as done."""
    written = writes.all.get(app_id) if writes else None
    if written is None or (log.last_offset is not None and written <= log.last_offset):
        return
    planned = f"offsets only up to offsets/{log.last_offset}" if log.offsets else "no offsets"
    raise CheckpointDamaged(
        log.folder,
        f"the tables hold batch {written} of this stream ({app_id}) but the checkpoint has "
        f"{planned}: the batches after it would be planned again under ids already written, and "
        "Delta would skip them, losing every row that arrived since",
        way_out,
    )


def check_tables(log: StreamLog, table_ids: dict[str, str], way_out: str) -> None:
    """Stop when a table this stream wrote was deleted and created again; then record the
    tables' ids. A stream resuming into a new, empty table fills it only with what arrives
    from now on."""
    record = log.folder / TABLES_FILE
    recorded = json.loads(record.read_text()) if record.is_file() else {}
    if log.started:
        replaced = {t: (recorded[t], i) for t, i in table_ids.items() if recorded.get(t, i) != i}
        if replaced:
            raise CheckpointDamaged(
                log.folder,
                "the stream has run, but "
                + "; ".join(
                    f"{t} is not the table it wrote (Delta table id {old}, now {new}: deleted "
                    "and created again)"
                    for t, (old, new) in replaced.items()
                )
                + ": resuming would give it only the rows that arrive from now on",
                way_out,
            )
        table_ids = {**recorded, **table_ids}
    log.folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(table_ids, indent=1, sort_keys=True))


def check_source(log: StreamLog, table: str, table_id: str, way_out: str) -> None:
    """Stop when the Delta table a stream reads is not the one its checkpoint read (deleted
    and created again): Spark would fail with DIFFERENT_DELTA_TABLE_READ_BY_STREAMING_SOURCE."""
    if log.last_offset is None:
        return
    lines = (log.folder / "offsets" / str(log.last_offset)).read_text().splitlines()[2:]
    read = {json.loads(line).get("reservoirId") for line in lines if line.startswith("{")}
    read.discard(None)
    if read and table_id not in read:
        raise CheckpointDamaged(
            log.folder,
            f"the stream read {table} as Delta table id {', '.join(sorted(read))}, and {table} is "
            f"now table id {table_id} (deleted and created again, e.g. by a full refresh of it): "
            "its rows cannot be matched to what this stream has read",
            way_out,
        )


def _span(batches: tuple[int, ...]) -> str:
    if not batches:
        return "none"
    return f"{batches[0]}..{batches[-1]}" if len(batches) > 1 else str(batches[0])


def _ids(writes: dict[str, int]) -> str:
    return ", ".join(f"{a} (up to batch {v})" for a, v in sorted(writes.items()))
