"""Gold task: rebuild the gold tables from silver."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from pyspark.sql import SparkSession

from order_pipeline.common import gold
from order_pipeline.common.io import Lakehouse, silver_table
from order_pipeline.common.job import (
    TaskContext,
    TaskResult,
    context_from_args,
    run_task,
    task_parser,
)
from order_pipeline.common.upsert import silver_ddl


def write_gold(lake: Lakehouse, as_of: datetime) -> None:
    """Overwrite the four gold tables from the current silver tables."""
    silver = {
        name: lake.read(silver_table(name))
        for name in ("customers", "products", "orders", "line_items")
    }
    details = gold.order_details(
        silver["line_items"], silver["orders"], silver["customers"], silver["products"]
    )
    lake.overwrite(details, gold.ORDER_DETAILS)
    lake.overwrite(
        gold.product_sales_monthly(lake.read(gold.ORDER_DETAILS)), gold.PRODUCT_SALES_MONTHLY
    )
    lake.overwrite(
        gold.order_completion_status(silver["orders"], silver["line_items"]),
        gold.ORDER_COMPLETION_STATUS,
    )
    lake.overwrite(gold.most_sold_product_last_30d(lake.spark, as_of), gold.MOST_SOLD_LAST_30D)


def run(
    spark: SparkSession, ctx: TaskContext, progress: Callable[[str], None] = print
) -> TaskResult:
    lake = Lakehouse(spark, ctx.profile)
    for name, entity in ctx.entities.items():
        lake.ensure(silver_table(name), silver_ddl(entity))
    as_of = ctx.as_of or datetime.now(UTC)
    write_gold(lake, as_of)
    rows_in = lake.read(silver_table("line_items")).count()
    counts = {table: lake.read(table).count() for table in gold.GOLD_TABLES}
    for table, n in counts.items():
        progress(f"  {table}: {n} rows")
    return TaskResult(
        rows_in=rows_in, rows_out=counts[gold.ORDER_DETAILS], details={"as_of": as_of, **counts}
    )


def main(argv: list[str] | None = None) -> int:
    args = task_parser("Rebuild the gold tables from silver.", False).parse_args(argv)
    ctx = context_from_args(args)
    run_task("gold", ctx, run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
