"""Run pipeline tasks in-process against a test context."""

from __future__ import annotations

import json
from dataclasses import replace

from pyspark.sql import functions as F

from order_pipeline.common import gold
from order_pipeline.common.io import QUALITY_WARNINGS, SOURCE_FILE, Lakehouse, silver_table
from order_pipeline.common.upsert import merge_latest, silver_ddl
from order_pipeline.jobs import bronze, silver

CONTRACT = {
    "customers": ["customer_id", "first_name", "last_name", "email", "phone", "city", "country", "created_at", "updated_at"],
    "products": ["product_id", "name", "category", "price", "updated_at"],
    "orders": ["order_id", "customer_id", "order_ts", "status", "updated_at"],
    "line_items": ["line_item_id", "order_id", "product_id", "quantity", "unit_price", "status", "delivered_at", "updated_at"],
}  # fmt: skip


def quiet(_: str) -> None:
    pass


def run_entity(spark, ctx, entity: str, fault_hook=None):
    ctx = replace(ctx, entity=entity)
    bronze.run(spark, ctx, progress=quiet)
    if fault_hook is None:
        return silver.run(spark, ctx, progress=quiet)
    return silver.run(spark, ctx, progress=quiet, fault_hook=fault_hook)


def run_all(spark, ctx, entities=("customers", "products", "orders", "line_items")):
    return {e: run_entity(spark, ctx, e) for e in entities}


def versions(spark, ctx, tables) -> dict[str, int]:
    lake = Lakehouse(spark, ctx.profile)
    return {t: lake.version(t) for t in tables}


def silver_rows(spark, entity: str) -> set[tuple]:
    return {tuple(r) for r in spark.table(f"silver_{entity}").select(*CONTRACT[entity]).collect()}


def quarantine_rows(spark, entity: str) -> list[tuple]:
    key = CONTRACT[entity][0]
    return sorted(
        (
            (r.key, tuple(r.reasons), r.status, r.raw_record)
            for r in spark.table(f"quarantine_{entity}")
            .selectExpr(f"record.{key} as key", "reasons", "status", "raw_record")
            .collect()
        ),
        key=lambda row: tuple((value is not None, value) for value in row),
    )


def merge_silver(spark, ctx, entity_name: str, records: list[dict]) -> None:
    """Write contract records into a silver table (created if need be) through the silver
    MERGE itself, without the streams: for tests of what comes after silver."""
    entity = ctx.entities[entity_name]
    lake = Lakehouse(spark, ctx.profile)
    lake.ensure(silver_table(entity_name), silver_ddl(entity), properties=gold.CHANGE_DATA_FEED)
    raw = spark.createDataFrame([(json.dumps(r),) for r in records], "value string")
    rows = raw.select(F.from_json("value", entity.ddl()).alias("r")).select(
        "r.*",
        F.lit(None).cast("array<string>").alias(QUALITY_WARNINGS),
        F.lit("test.json").alias(SOURCE_FILE),
    )
    merge_latest(lake, silver_table(entity_name), rows, entity, ctx.run_id)
