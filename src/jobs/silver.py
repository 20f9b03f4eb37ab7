"""Silver task: stream bronze_<entity> through the quality gate into silver_<entity>."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import SparkSession

from order_pipeline.common.io import Lakehouse, bronze_schema, bronze_table
from order_pipeline.common.job import (
    TaskContext,
    TaskResult,
    context_from_args,
    run_task,
    task_parser,
)
from order_pipeline.quality.rules import load_rules
from order_pipeline.quality.silver import Silver, no_fault


def build_silver(
    spark: SparkSession,
    ctx: TaskContext,
    progress: Callable[[str], None] = print,
    fault_hook: Callable[[str, int], None] = no_fault,
) -> Silver:
    entity = ctx.entity_spec()
    return Silver(
        lake=Lakehouse(spark, ctx.profile),
        entity=entity,
        entities=ctx.entities,
        rules=load_rules(entity, ctx.entities),
        run_id=ctx.run_id,
        progress=progress,
        fault_hook=fault_hook,
    )


def run(
    spark: SparkSession,
    ctx: TaskContext,
    progress: Callable[[str], None] = print,
    fault_hook: Callable[[str, int], None] = no_fault,
) -> TaskResult:
    silver = build_silver(spark, ctx, progress, fault_hook)
    lake, name = silver.lake, silver.entity.name
    checkpoint = f"silver_{name}"
    if ctx.full_refresh:
        for table in (silver.silver, silver.quarantine, silver.deferred):
            lake.drop(table)
        lake.reset_checkpoint(checkpoint)
    lake.ensure(bronze_table(name), bronze_schema(silver.entity))
    silver.ensure_tables()
    batch = silver.batch_function(lake.stream_app_id(checkpoint))
    lake.run_stream(
        lake.read_stream(bronze_table(name)), checkpoint, batch, silver.silver, progress
    )
    # The batches may have run in another process (Spark Connect): what they did is read
    # back from the metrics rows they wrote, not from Python state.
    counts, batches = silver.stream_counts()
    promoted, expired = silver.resolve_deferred()
    progress(
        f"  {silver.silver}: checked {counts.checked}, passed {counts.passed}, quarantined "
        f"{counts.quarantined}, deferred {counts.deferred}; earlier deferred rows promoted "
        f"{promoted}, expired {expired}"
    )
    alert = silver.check_quarantine_ratio(counts)
    return TaskResult(
        rows_in=counts.checked,
        rows_out=counts.passed + promoted,
        details={
            "quarantined": counts.quarantined,
            "deferred": counts.deferred,
            "promoted": promoted,
            "expired": expired,
            "batches": batches,
            "ratio_warning": alert,
        },
    )


def main(argv: list[str] | None = None) -> int:
    args = task_parser(
        "Quality-gate bronze rows of one entity and MERGE them into silver.", True
    ).parse_args(argv)
    ctx = context_from_args(args)
    run_task(f"silver_{ctx.entity}", ctx, run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
