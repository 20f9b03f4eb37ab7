"""What every task entry point shares: its arguments, its context and its run record.

An entry point is ``main(argv)`` → ``parse_task_args`` → ``run_task(name, ctx, body)``,
where ``body(spark, ctx) -> TaskResult`` is the job itself. The same code path runs as a
Databricks ``python_wheel_task`` and under the local runner.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import SparkSession

from order_pipeline.common.config import (
    DEFAULT_DATA_ROOT,
    Entity,
    Profile,
    load_entities,
    load_profile,
)
from order_pipeline.common.contract import TASK_RUNS, TASK_RUNS_DDL
from order_pipeline.common.io import Lakehouse
from order_pipeline.common.platform import profile_name
from order_pipeline.common.runlock import EXIT_RUN_LOCKED, RunLocked, run_lock
from order_pipeline.common.spark import get_spark


@dataclass(frozen=True)
class TaskContext:
    profile: Profile
    entities: dict[str, Entity]
    run_id: str
    full_refresh: bool = False
    entity: str | None = None
    as_of: datetime | None = None

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


def run_task(
    task: str,
    ctx: TaskContext,
    body: Callable[[SparkSession, TaskContext], TaskResult],
    progress: Callable[[str], None] = print,
) -> TaskResult:
    """Run one task and record it in ops_task_runs, failed or not.

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
        spark = get_spark(ctx.profile, app_name=f"order-pipeline-{task}")
        lake = Lakehouse(spark, ctx.profile)
        started = datetime.now(UTC)
        status, error, result = "SUCCESS", None, TaskResult()
        try:
            result = body(spark, ctx)
            return result
        except BaseException as exc:
            status = "FAILED"
            error = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:4000]
            raise
        finally:
            ended = datetime.now(UTC)
            lake.ensure(TASK_RUNS, TASK_RUNS_DDL)
            row = [(task, ctx.entity, ctx.run_id, started, ended,
                    (ended - started).total_seconds(), result.rows_in, result.rows_out, status,
                    error, _json(result.details))]  # fmt: skip
            lake.append(spark.createDataFrame(row, TASK_RUNS_DDL), TASK_RUNS)
            progress(
                f"{task}: {status.lower()} in {(ended - started).total_seconds():.1f}s, "
                f"rows in {result.rows_in}, rows out {result.rows_out}"
            )


def run_entry_point(
    task: str, ctx: TaskContext, body: Callable[[SparkSession, TaskContext], TaskResult]
) -> int:
    """``run_task`` for a task's console script: 0 when it ran, EXIT_RUN_LOCKED with the
    holder named (no traceback) when another run holds the data root."""
    try:
        run_task(task, ctx, body)
    except RunLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUN_LOCKED
    return 0


def _json(details: dict[str, object]) -> str:
    import json

    return json.dumps(details, default=str, sort_keys=True)
