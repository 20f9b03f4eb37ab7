"""Bronze: land every line of ``<landing>/<entity>/`` in ``bronze_<entity>``, exactly once.

Malformed lines are kept with their raw text in ``_corrupt_record``; silver decides what
to do with them. Each micro-batch is appended with Delta's idempotent-write identity, so a
batch replayed after a crash (written, but not yet committed to the checkpoint) is skipped.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from order_pipeline.common.io import (
    BATCH_ID,
    INGESTED_AT,
    RUN_ID,
    Lakehouse,
    Txn,
    bronze_schema,
    bronze_table,
)
from order_pipeline.common.job import (
    TaskContext,
    TaskResult,
    context_from_args,
    run_task,
    task_parser,
)


def with_ingest_metadata(batch_id: int, run_id: str) -> Callable[[DataFrame], DataFrame]:
    def transform(df: DataFrame) -> DataFrame:
        return df.withColumns(
            {
                INGESTED_AT: F.current_timestamp(),
                BATCH_ID: F.lit(batch_id).cast("bigint"),
                RUN_ID: F.lit(run_id),
            }
        )

    return transform


def run(
    spark: SparkSession, ctx: TaskContext, progress: Callable[[str], None] = print
) -> TaskResult:
    entity = ctx.entity_spec()
    lake = Lakehouse(spark, ctx.profile)
    table = bronze_table(entity.name)
    checkpoint = f"bronze_{entity.name}"
    if ctx.full_refresh:
        lake.drop(table)
        lake.reset_checkpoint(checkpoint)
    lake.ensure(table, bronze_schema(entity))
    columns = bronze_schema(entity).fieldNames()
    app_id = lake.stream_app_id(checkpoint)

    def write_batch(batch: DataFrame, batch_id: int) -> None:
        rows = batch.transform(with_ingest_metadata(batch_id, ctx.run_id)).select(*columns)
        lake.append(rows, table, Txn(app_id, batch_id))

    query = lake.run_stream(lake.landing_stream(entity), checkpoint, write_batch, table, progress)
    rows = sum(p["numInputRows"] for p in query.recentProgress)
    return TaskResult(rows_in=rows, rows_out=rows, details={"batches": len(query.recentProgress)})


def main(argv: list[str] | None = None) -> int:
    args = task_parser("Ingest landed JSON files of one entity into bronze.", True).parse_args(argv)
    ctx = context_from_args(args)
    run_task(f"bronze_{ctx.entity}", ctx, run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
