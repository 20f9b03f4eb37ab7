"""Replay task: re-check quarantined rows of one entity and MERGE those that now pass."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import SparkSession

from order_pipeline.common.contract import OPEN, STATUSES
from order_pipeline.jobs.silver import build_silver
from order_pipeline.jobs.task import (
    FaultHook,
    TaskContext,
    TaskResult,
    context_from_args,
    no_fault,
    run_entry_point,
    task_parser,
)


def run(
    spark: SparkSession,
    ctx: TaskContext,
    rule: str | None = None,
    statuses: tuple[str, ...] = (OPEN,),
    progress: Callable[[str], None] = print,
    fault_hook: FaultHook = no_fault,
) -> TaskResult:
    silver = build_silver(spark, ctx, progress, fault_hook)
    silver.ensure_tables()
    checked, replayed, unfaithful = silver.replay(rule, statuses)
    progress(
        f"  {silver.quarantine}: re-checked {checked} row(s) with status {'/'.join(statuses)}"
        f"{f' failing {rule}' if rule else ''}; {replayed} now pass and were merged into "
        f"{silver.silver} and marked replayed; {checked - replayed} stay"
        + (
            f" ({unfaithful} of them landed as bytes that are not valid UTF-8: they cannot be "
            "parsed again faithfully and are never replayed; fix them at the source)"
            if unfaithful
            else ""
        )
    )
    return TaskResult(
        rows_in=checked,
        rows_out=replayed,
        details={"rule": rule, "statuses": statuses, "not_utf8": unfaithful},
    )


def add_replay_arguments(parser) -> None:
    parser.add_argument("--rule", help="only rows that failed this rule")
    parser.add_argument(
        "--status",
        action="append",
        choices=STATUSES,
        help="statuses to re-check (default: open; repeatable)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = task_parser("Re-check quarantined rows and merge those that now pass.", True)
    add_replay_arguments(parser)
    args = parser.parse_args(argv)
    ctx = context_from_args(args)
    statuses = tuple(args.status or (OPEN,))
    return run_entry_point(f"replay_{ctx.entity}", ctx, lambda s, c: run(s, c, args.rule, statuses))
