"""Run pipeline tasks in-process against a test context."""

from __future__ import annotations

import json
from dataclasses import replace

from chispa import assert_df_equality
from expectations import (
    KEYS,
    TYPES,
    gold_completion,
    gold_order_details,
    gold_product_sales_monthly,
    most_sold_last_30d,
    parse_value,
)
from pyspark.sql import functions as F

from order_pipeline.common import contract
from order_pipeline.common.config import dependency_order, load_entities
from order_pipeline.common.contract import QUALITY_WARNINGS, SOURCE_FILE, silver_ddl, silver_table
from order_pipeline.common.io import Lakehouse
from order_pipeline.jobs import bronze, silver
from order_pipeline.jobs.silver import merge_latest


def quiet(_: str) -> None:
    pass


def run_entity(spark, ctx, entity: str, fault_hook=None):
    ctx = replace(ctx, entity=entity)
    bronze.run(spark, ctx, progress=quiet)
    if fault_hook is None:
        return silver.run(spark, ctx, progress=quiet)
    return silver.run(spark, ctx, progress=quiet, fault_hook=fault_hook)


def run_all(spark, ctx, entities=None):
    """Bronze and silver of the given entities (default: all, parents first)."""
    entities = entities or dependency_order(ctx.entities)
    return {e: run_entity(spark, ctx, e) for e in entities}


def versions(spark, ctx, tables) -> dict[str, int]:
    lake = Lakehouse(spark, ctx.profile)
    return {t: lake.version(t) for t in tables}


def silver_rows(spark, entity: str) -> set[tuple]:
    columns = load_entities()[entity].columns
    return {tuple(r) for r in spark.table(f"silver_{entity}").select(*columns).collect()}


def quarantine_rows(spark, entity: str) -> list[tuple]:
    key = load_entities()[entity].key
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
    lake.ensure(silver_table(entity_name), silver_ddl(entity), properties=contract.CHANGE_DATA_FEED)
    raw = spark.createDataFrame([(json.dumps(r),) for r in records], "value string")
    rows = raw.select(F.from_json("value", entity.ddl()).alias("r")).select(
        "r.*",
        F.lit(None).cast("array<string>").alias(QUALITY_WARNINGS),
        F.lit("test.json").alias(SOURCE_FILE),
    )
    merge_latest(lake, silver_table(entity_name), rows, entity, ctx.run_id)


def assert_gold_equals(spark, read, silver: dict, as_of) -> None:
    """Every gold table, as ``read(table)`` returns it, equals the plain-Python gold
    (tests/expectations.py) of the expected ``silver`` (entity -> key -> typed record)."""
    details = gold_order_details(silver)
    actual = read(contract.ORDER_DETAILS)
    expected = spark.createDataFrame(
        [tuple(d[c] for c in actual.columns) for d in details], actual.schema
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    monthly = {
        (r.month, r.product_id): (r.units, r.revenue, r.orders)
        for r in read(contract.PRODUCT_SALES_MONTHLY).collect()
    }
    assert monthly == gold_product_sales_monthly(details)
    completion = {
        r.order_id: (r.total_items, r.delivered_items, r.cancelled_items, r.completion_status,
                     r.completed_at)
        for r in read(contract.ORDER_COMPLETION_STATUS).collect()
    }  # fmt: skip
    assert completion == gold_completion(silver)
    top = read(contract.MOST_SOLD_LAST_30D).collect()
    expected_top = most_sold_last_30d(details, as_of)
    if expected_top is None:
        assert top == []
    else:
        (row,) = top
        assert (row.product_id, row.units, row.orders, row.sales_days, row.share_of_units) == (
            expected_top
        )
        assert row.as_of == as_of


def typed_silver(records: dict[str, list[dict]]) -> dict[str, dict[str, dict]]:
    """The silver a list of valid contract records per entity gives: each typed as the
    contract says, the latest ``updated_at`` per key."""
    silver: dict[str, dict[str, dict]] = {}
    for entity, rows in records.items():
        latest: dict[str, dict] = {}
        for row in rows:
            typed = {c: parse_value(kind, row[c]) for c, kind in TYPES[entity].items()}
            key = typed[KEYS[entity]]
            if key not in latest or typed["updated_at"] > latest[key]["updated_at"]:
                latest[key] = typed
        silver[entity] = latest
    return silver
