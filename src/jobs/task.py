"""What every task entry point shares: its arguments, its context and its run record.

An entry point is ``main(argv)`` → ``parse_task_args`` → ``run_task(name, ctx, body)``,
where ``body(spark, ctx) -> TaskResult`` is the job itself. The same code path runs as a
Databricks ``python_wheel_task`` and under the local runner.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import SparkSession

from order_pipeline.common.config import (
    DEFAULT_DATA_ROOT,
    Entity,
    Profile,
    load_entities,
    load_profile,
)
from order_pipeline.common.contract import (
    METRICS_DDL,
    OPS_TABLE_PROPERTIES,
    QUALITY_METRICS,
    TASK_RUNS,
    TASK_RUNS_DDL,
)
from order_pipeline.common.frames import local_frame
from order_pipeline.common.inputs import Consumed, Inputs, Versions
from order_pipeline.common.io import Lakehouse, Txn
from order_pipeline.common.platform import profile_name
from order_pipeline.common.runlock import EXIT_RUN_LOCKED, RunLocked, run_lock
from order_pipeline.common.spark import get_spark, running_spark


@dataclass(frozen=True)
class TaskContext:
    profile: Profile
    entities: dict[str, Entity]
    run_id: str
    full_refresh: bool = False
    entity: str | None = None
    as_of: datetime | None = None
    previous: Consumed | None = None  # what this task consumed when it last succeeded

    def entity_spec(self) -> Entity:
        if self.entity is None:
            raise ValueError("this task needs --entity")
        try:
            return self.entities[self.entity]
        except KeyError:
            raise ValueError(
                f"--entity {self.entity!r} is not in conf/pipeline.yml; known: {sorted(self.entities)}"
            ) from None


@dataclass
class TaskResult:
    rows_in: int = 0
    rows_out: int = 0
    details: dict[str, object] = field(default_factory=dict)
    # kept with what the task consumed, for its next run (e.g. when a deferral expires)
    state: dict[str, object] = field(default_factory=dict)


# A job's fault hook: called with a named step (and the micro-batch id, where there is one)
FaultHook = Callable[[str, int | None], None]


def no_fault(step: str, batch_id: int | None = None) -> None:
    """The default fault hook of a job: tests replace it to crash at a named step. Silver
    calls it at checked, merged, quarantined and batch_done of each micro-batch, at
    deferred_promoted and deferred_removed of the deferred pass, and at replay_merged and
    replay_marked of a replay."""


def full_refresh_way_out(*tasks: str) -> str:
    """How to rebuild tasks' tables and checkpoints from what they read, in this order."""
    runs = ", then ".join(f"`order-pipeline run --task {t} --full-refresh --yes`" for t in tasks)
    return (
        f"rebuild from what is upstream: {runs} (on Databricks: run the job with "
        "full_refresh=true). Gold rebuilds in full on its next run; quarantined rows replayed "
        "before are open again: replay them again"
    )


def new_run_id() -> str:
    return f"local-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def truthy(text: str | None) -> bool:
    return str(text or "").strip().lower() in {"1", "true", "yes", "y"}


def parse_as_of(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"--as-of: expected an ISO date or timestamp, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def task_parser(description: str, with_entity: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    if with_entity:
        parser.add_argument("--entity", required=True, help="entity from conf/pipeline.yml")
    parser.add_argument("--catalog", help="Unity Catalog catalog (local: ignored)")
    parser.add_argument("--schema", help="schema (database) of the tables")
    parser.add_argument("--landing-root", help="folder with one subfolder per entity")
    parser.add_argument("--checkpoint-root", help="folder for streaming checkpoints")
    parser.add_argument("--full-refresh", default="false", help="true: rebuild from scratch")
    parser.add_argument("--run-id", default="", help="the workflow run this task belongs to")
    parser.add_argument("--as-of", default="", help="as-of date for gold (default: now)")
    parser.add_argument(
        "--data-root",
        default=DEFAULT_DATA_ROOT,
        help="local profile: root of landing, checkpoints and warehouse (default .local)",
    )
    return parser


def context_from_args(args: argparse.Namespace) -> TaskContext:
    overrides = {
        "catalog": args.catalog,
        "schema": args.schema,
        "landing_root": args.landing_root,
        "checkpoint_root": args.checkpoint_root,
    }
    run_id = args.run_id if args.run_id and "{{" not in args.run_id else new_run_id()
    return TaskContext(
        profile=load_profile(profile_name(), args.data_root, overrides),
        entities=load_entities(),
        run_id=run_id,
        full_refresh=truthy(args.full_refresh),
        entity=getattr(args, "entity", None),
        as_of=parse_as_of(args.as_of),
    )


InputsOf = Callable[["TaskContext", Versions, Consumed | None], Inputs]


@dataclass(frozen=True)
class PendingTask:
    """A task that would run now, and why (``pending_work``)."""

    task: str
    reason: str
    inputs: dict[str, object]


_probe: ContextVar[list[PendingTask] | None] = ContextVar("task_probe", default=None)


@contextmanager
def pending_work() -> Iterator[list[PendingTask]]:
    """Inside, ``run_task`` only decides: a task that would run is noted in the yielded
    list with its reason, a task that would be skipped is not, and neither runs nor writes
    a run record. The decision is run_task's own (inputs, due, ``skip_unchanged``), read
    without Spark on the local profile: ``order-pipeline run --watch`` polls with it."""
    found: list[PendingTask] = []
    token = _probe.set(found)
    try:
        yield found
    finally:
        _probe.reset(token)


def run_task(
    task: str,
    ctx: TaskContext,
    body: Callable[[SparkSession, TaskContext], TaskResult],
    progress: Callable[[str], None] = print,
    inputs_of: InputsOf | None = None,
) -> TaskResult:
    """Run one task and record it in ops_task_runs, failed, skipped or not.

    With ``inputs_of`` and the profile's ``skip_unchanged``, a task whose inputs are those
    of its last success (common/inputs.py) is skipped: locally before a Spark session is
    started, on Databricks after a ``DESCRIBE HISTORY`` per input table. ``--full-refresh``
    never skips. What the task consumed is kept once it succeeded; the body sees the
    previous record as ``ctx.previous``.

    On the local profile the task holds its data root's run lock: taken here when the task
    runs on its own (raising ``RunLocked`` when another process holds it), re-entered when
    ``order-pipeline run`` in this process already holds it."""
    with run_lock(
        ctx.profile,
        command=f"task {task}",
        run_id=ctx.run_id,
        progress=progress,
        hint="wait for it to finish, then start this task again",
    ):
        started = datetime.now(UTC)
        spark = None if ctx.profile.is_local else get_spark(ctx.profile, f"order-pipeline-{task}")
        previous = inputs = None
        if inputs_of is not None:
            versions = Versions.of(ctx.profile, spark)
            if ctx.full_refresh:
                Consumed.forget(ctx.profile, [task])
            previous = Consumed.load(ctx.profile, task)
            inputs = inputs_of(ctx, versions, previous)
            skip = (
                ctx.profile.skip_unchanged
                and not ctx.full_refresh
                and previous is not None
                and inputs.unchanged_since(previous.inputs)
            )
            if (probe := _probe.get()) is not None:
                if not skip:
                    reason = inputs.change_from(previous.inputs if previous else None)
                    probe.append(PendingTask(task, reason, inputs.values))
                return TaskResult()
            if skip:
                result = TaskResult(details={"skipped": f"nothing new since run {previous.run_id}"})
                status, error = "SKIPPED", None
                try:
                    if inputs.when_skipped is not None:
                        result.details.update(inputs.when_skipped(progress))
                except BaseException as exc:
                    status = "FAILED"
                    error = failure_text(exc)
                    raise
                finally:
                    _record(ctx, task, started, status, error, result, spark, progress)
                return result
        if (probe := _probe.get()) is not None:
            probe.append(PendingTask(task, "has no inputs to compare: always runs", {}))
            return TaskResult()
        spark = spark or get_spark(ctx.profile, app_name=f"order-pipeline-{task}")
        status, error, result = "SUCCESS", None, TaskResult()
        try:
            result = body(spark, replace(ctx, previous=previous))
            if inputs is not None:
                try:
                    Consumed(inputs.values, result.state, ctx.run_id).save(ctx.profile, task)
                except OSError as exc:  # the work is done; the next run just will not skip
                    progress(f"WARNING: {task}: could not record what it consumed: {exc}")
            return result
        except BaseException as exc:
            status = "FAILED"
            error = failure_text(exc)
            raise
        finally:
            _record(ctx, task, started, status, error, result, spark, progress)


def failure_text(exc: BaseException) -> str:
    """The run record's error: the exception's own line(s), at most 4,000 characters."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:4000]


def _record(
    ctx: TaskContext,
    task: str,
    started: datetime,
    status: str,
    error: str | None,
    result: TaskResult,
    spark: SparkSession | None,
    progress: Callable[[str], None],
) -> None:
    ended = datetime.now(UTC)
    seconds = (ended - started).total_seconds()
    record_task_run(
        ctx.profile,
        spark,
        {"task": task, "entity": ctx.entity, "run_id": ctx.run_id, "started_at": started,
         "ended_at": ended, "seconds": seconds, "rows_in": result.rows_in,
         "rows_out": result.rows_out, "status": status, "error": error,
         "details": _json(result.details)},
    )  # fmt: skip
    if status == "SKIPPED":
        progress(f"{task}: skipped in {seconds:.2f}s, {result.details['skipped']}")
    else:
        progress(
            f"{task}: {status.lower()} in {seconds:.1f}s, "
            f"rows in {result.rows_in}, rows out {result.rows_out}"
        )
    with _RECORDS_LOCK:
        _STATUSES[(ctx.run_id, task)] = status


# -- run records and dataset-check results --------------------------------------------------
# Locally a task's ops_task_runs row and its dataset checks' ops_quality_metrics rows go to a
# pending file per table first, and the rows of a whole `order-pipeline run` reach each table
# in one commit at its end (a commit costs seconds here, a run has a dozen tasks); a run that
# started no Spark session leaves them pending for the next one that does. On Databricks each
# task is its own process: it appends its rows.
_RECORDS_LOCK = threading.RLock()
_collecting = 0  # > 0 while `order-pipeline run` collects the rows of its tasks
_STATUSES: dict[tuple[str, str], str] = {}
SCHEMA_KEY = "_schema"  # of a pending row: the schema whose table it belongs to


@dataclass(frozen=True)
class OpsRows:
    """An ops table whose rows a local run collects and appends in one commit at its end."""

    table: str
    ddl: str
    pending: str  # the pending file, under the checkpoint root
    identity: str  # prefix of the commit's idempotent-write identity
    timestamps: tuple[str, ...]  # columns kept as ISO text in the pending file
    # columns left out of the identity: a task rerun in the same run that finds the same
    # (checks measured again, other times) appends nothing, as on Databricks
    volatile: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        return [c.split()[0] for c in self.ddl.split(", ")]


TASK_RUN_ROWS = OpsRows(TASK_RUNS, TASK_RUNS_DDL, "_task_runs/pending.jsonl", "task-runs",
                        ("started_at", "ended_at"))  # fmt: skip
CHECK_ROWS = OpsRows(QUALITY_METRICS, METRICS_DDL, "_quality_metrics/pending.jsonl",
                     "dataset-checks", ("measured_at",), volatile=("measured_at",))  # fmt: skip
COLLECTED = (TASK_RUN_ROWS, CHECK_ROWS)
PENDING_RUNS = TASK_RUN_ROWS.pending


def task_status(run_id: str, task: str) -> str | None:
    """SUCCESS, FAILED or SKIPPED for a task of a run in this process, if it ran here."""
    with _RECORDS_LOCK:
        return _STATUSES.get((run_id, task))


def record_task_run(profile: Profile, spark: SparkSession | None, row: dict[str, object]) -> None:
    record_rows(TASK_RUN_ROWS, profile, spark, [row])


def record_rows(
    ops: OpsRows,
    profile: Profile,
    spark: SparkSession | None,
    rows: list[dict[str, object]],
    identity: str | None = None,
) -> None:
    """Append ``rows`` to ``ops.table``: on Databricks at once (with ``identity``, else the
    rows' digest, as the commit's identity); locally through the pending file, written at
    the end of the `order-pipeline run` collecting them, or at once by a task run alone."""
    if not profile.is_local:
        assert spark is not None
        _append_rows(ops, spark, profile, rows, identity)
        return
    path = Path(profile.checkpoint_root) / ops.pending
    with _RECORDS_LOCK:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as pending:
            for row in rows:
                # the schema goes with the row: a run's tasks may write another schema than
                # the runner's profile (`--param schema=...`)
                pending.write(json.dumps({**row, SCHEMA_KEY: profile.schema}, default=_iso) + "\n")
            pending.flush()
            os.fsync(pending.fileno())
        if not _collecting and spark is not None:
            flush_ops_rows(spark, profile)


@contextmanager
def collected_task_runs(profile: Profile) -> Iterator[None]:
    """Collect the run records and dataset-check rows of the tasks run inside, and write
    them in one commit per table at the end if a Spark session is running (else they wait
    for the next run)."""
    global _collecting
    with _RECORDS_LOCK:
        _collecting += 1
    try:
        yield
    finally:
        with _RECORDS_LOCK:
            _collecting -= 1
            spark = running_spark()
            if not _collecting and spark is not None and profile.is_local:
                flush_ops_rows(spark, profile)


def flush_ops_rows(spark: SparkSession, profile: Profile) -> int:
    """Append the pending rows of each collected ops table in one commit per table (and
    schema); returns how many rows. Safe to repeat after a crash: a commit's identity is
    its rows' digest, so rows already appended are skipped by Delta."""
    flushed = 0
    with _RECORDS_LOCK:
        for ops in COLLECTED:
            path = Path(profile.checkpoint_root) / ops.pending
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            by_schema: dict[str, list[dict[str, object]]] = {}
            for row in rows:
                by_schema.setdefault(str(row.pop(SCHEMA_KEY, profile.schema)), []).append(row)
            for schema, schema_rows in by_schema.items():
                _append_rows(ops, spark, replace(profile, schema=schema), schema_rows)
            path.unlink()
            flushed += len(rows)
    return flushed


def _append_rows(
    ops: OpsRows,
    spark: SparkSession,
    profile: Profile,
    rows: list[dict[str, object]],
    identity: str | None = None,
) -> None:
    lake = Lakehouse(spark, profile)
    lake.ensure(ops.table, ops.ddl, properties=OPS_TABLE_PROPERTIES)
    if identity is None:
        content = [{k: v for k, v in r.items() if k not in ops.volatile} for r in rows]
        digest = json.dumps(content, default=_iso, sort_keys=True).encode()
        identity = f"{ops.identity}-{hashlib.sha256(digest).hexdigest()}"
    values = [
        [_from_iso(r.get(c)) if c in ops.timestamps else r.get(c) for c in ops.columns]
        for r in rows
    ]
    lake.append(local_frame(spark, values, ops.ddl), ops.table, Txn(identity, 0))


def _iso(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _from_iso(value: object) -> object:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def run_entry_point(
    task: str,
    ctx: TaskContext,
    body: Callable[[SparkSession, TaskContext], TaskResult],
    inputs_of: InputsOf | None = None,
) -> int:
    """``run_task`` for a task's console script: 0 when it ran or was skipped,
    EXIT_RUN_LOCKED with the holder named (no traceback) when another run holds the data
    root."""
    try:
        run_task(task, ctx, body, inputs_of=inputs_of)
    except RunLocked as exc:
        if _probe.get() is not None:
            raise  # the poller says it is busy its own way
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUN_LOCKED
    return 0


def _json(details: dict[str, object]) -> str:
    import json

    return json.dumps(details, default=str, sort_keys=True)
