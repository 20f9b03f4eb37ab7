"""What users look at: the quarantine and the gold answers, as DataFrames to print."""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from order_pipeline.cli.display import show
from order_pipeline.common import contract
from order_pipeline.common.config import Entity
from order_pipeline.common.contract import bronze_table, deferred_table, silver_table
from order_pipeline.common.io import Lakehouse
from order_pipeline.transforms.personal import MaskKey, mask_raw_json, mask_record


def quarantine_summary(
    lake: Lakehouse, entities: list[str], status: str | None = None
) -> DataFrame:
    """Per entity, rule and status: rows, oldest and newest quarantine time."""
    parts = [
        lake.read(lake.quarantine(e)).select(
            F.lit(e).alias("entity"), F.explode("reasons").alias("rule"), "status", "quarantined_at"
        )
        for e in entities
        if lake.exists(lake.quarantine(e))
    ]
    if not parts:
        return lake.spark.createDataFrame(
            [],
            "entity string, rule string, status string, rows bigint, oldest timestamp, newest timestamp",
        )
    rows = reduce(DataFrame.unionByName, parts)
    if status:
        rows = rows.where(F.col("status") == status)
    return (
        rows.groupBy("entity", "rule", "status")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.min("quarantined_at").alias("oldest"),
            F.max("quarantined_at").alias("newest"),
        )
        .orderBy("entity", "rule", "status")
    )


def quarantine_rows(
    lake: Lakehouse,
    entity: Entity,
    rule: str | None,
    status: str | None,
    *,
    mask: MaskKey | None,
) -> DataFrame:
    """The quarantined rows of an entity with their record: the raw text where there is one,
    else the parsed record as JSON. With a ``mask`` key, the contract's personal fields are
    masked in both (transforms/personal.py); ``mask=None`` shows them in clear."""
    rows = lake.read(lake.quarantine(entity.name))
    if rule:
        rows = rows.where(F.array_contains("reasons", rule))
    if status:
        rows = rows.where(F.col("status") == status)
    return rows.select(
        "status",
        "reasons",
        shown_record(entity, mask).alias("record"),
        F.regexp_extract("source_file", r"[^/]+$", 0).alias("file"),
        "batch_id",
        "quarantined_at",
    ).orderBy("quarantined_at", "file")


def shown_record(entity: Entity, mask: MaskKey | None) -> Column:
    """A quarantine row's record as people see it: the raw text where there is one, else the
    parsed record as JSON; with a ``mask`` key the personal fields are masked in both
    (transforms/personal.py), with ``None`` they show in clear."""
    raw, record = F.col("raw_record"), F.col("record")
    if mask is None:
        # raw text that is not valid UTF-8 is shown as its bytes, not as a lossy decoding
        return F.when(
            raw.isNotNull() & ~F.is_valid_utf8(raw),
            F.concat(F.lit("(not UTF-8) hex:"), F.hex(raw.cast("binary"))),
        ).otherwise(F.coalesce(raw, F.to_json(record)))
    return F.coalesce(
        mask_raw_json(entity, mask, raw), F.to_json(mask_record(entity, mask, record))
    )


def table_counts(lake: Lakehouse, entities: list[str]) -> DataFrame:
    rows = []
    for e in entities:
        counts = []
        for table in (bronze_table(e), silver_table(e), lake.quarantine(e), deferred_table(e)):
            counts.append(lake.read(table).count() if lake.exists(table) else None)
        rows.append((e, *counts))
    return lake.spark.createDataFrame(
        rows, "entity string, bronze bigint, silver bigint, quarantine bigint, deferred bigint"
    )


def gold_report(lake: Lakehouse, entities: list[str]) -> str:
    sections = ["Tables", show(table_counts(lake, entities))]
    if not lake.exists(contract.ORDER_DETAILS):
        sections.append("\nNo gold tables yet: run `order-pipeline run` first.")
        return "\n".join(sections)
    sections += [
        "\nMost sold product, last 30 days (gold_most_sold_product_last_30d)",
        show(lake.read(contract.MOST_SOLD_LAST_30D)),
        "\nOrder completion (gold_order_completion_status)",
        show(
            lake.read(contract.ORDER_COMPLETION_STATUS)
            .groupBy("completion_status")
            .agg(
                F.count(F.lit(1)).alias("orders"),
                F.sum("total_items").alias("items"),
                F.sum("delivered_items").alias("delivered_items"),
            )
            .orderBy("completion_status")
        ),
        "\nMonthly sales, delivered items (gold_product_sales_monthly)",
        show(
            lake.read(contract.PRODUCT_SALES_MONTHLY)
            .groupBy("month")
            .agg(
                F.sum("units").alias("units"),
                F.sum("revenue").alias("revenue"),
                F.sum("orders").alias("product_orders"),
                F.count(F.lit(1)).alias("products"),
            )
            .orderBy(F.col("month").desc()),
            limit=24,
        ),
        "\nQuarantine (open rows by rule; `order-pipeline quarantine` for details)",
        show(quarantine_summary(lake, entities, status=None)),
    ]
    return "\n".join(sections)
