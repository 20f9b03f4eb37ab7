"""Silver: the quality gate, newest-wins MERGE, deferred parents, fail rules, alerts."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from itertools import pairwise
from urllib.parse import urlparse

import pytest
from builders import customer, edit_text, land, line_item, order, product
from pipeline_helpers import quarantine_rows, run_all, run_entity, silver_rows, versions
from pyspark.sql import functions as F

from order_pipeline.jobs.silver import QuarantineRatioExceeded

TS = datetime.fromisoformat
PARENTS = ("order_exists", "product_exists")  # no order or product landed in the gate test


def test_gate_quarantines_each_failed_rule_and_defers_the_rest_without_parents(spark, ctx) -> None:
    """No order or product has landed: the valid row waits, and quarantined rows list
    every rule they fail, the missing parents included."""
    land(ctx.profile.landing_root, "line_items", [
        line_item("L1"),
        line_item("L2", quantity=0),
        line_item("L3", unit_price=-1.0),
        line_item("L4", status="lost"),
        line_item(None),
        line_item("L6", updated_at=None),
        line_item("L7", quantity=0, status="lost"),
        '{"line_item_id": "L8", "quantity": ',
    ])  # fmt: skip
    with pytest.raises(QuarantineRatioExceeded, match="7 of 8 rows"):  # written, then alerted
        run_entity(spark, ctx, "line_items")
    assert silver_rows(spark, "line_items") == set()
    assert [r.line_item_id for r in spark.table("deferred_line_items").collect()] == ["L1"]
    assert quarantine_rows(spark, "line_items") == [
        (None, ("line_item_id_not_null", *PARENTS), "open", None),
        (None, ("malformed_record",), "open", '{"line_item_id": "L8", "quantity": '),
        ("L2", ("quantity_positive", *PARENTS), "open", None),
        ("L3", ("unit_price_not_negative", *PARENTS), "open", None),
        ("L4", ("status_allowed", *PARENTS), "open", None),
        ("L6", ("updated_at_not_null", *PARENTS), "open", None),
        ("L7", ("quantity_positive", "status_allowed", *PARENTS), "open", None),
    ]  # fmt: skip


def test_warn_rows_are_kept_and_flagged(spark, ctx) -> None:
    land(ctx.profile.landing_root, "customers", [customer("C1", country="Germany"), customer("C2")])
    run_entity(spark, ctx, "customers")
    flags = {
        r.customer_id: list(r._quality_warnings) for r in spark.table("silver_customers").collect()
    }
    assert flags == {"C1": ["country_iso2"], "C2": []}


def test_newest_snapshot_wins_late_older_ones_never_overwrite_offsets_compare_as_instants(
    spark, ctx
) -> None:
    landing = ctx.profile.landing_root
    land(landing, "customers", [customer("C1", city="Paris", updated_at="2026-05-02T00:00:00Z"),
                                customer("C1", city="Rome", updated_at="2026-05-01T00:00:00Z"),
                                customer("C1", email="broken", updated_at="2026-05-09T00:00:00Z")])  # fmt: skip
    run_entity(spark, ctx, "customers")
    assert [(r.city, r.updated_at) for r in spark.table("silver_customers").collect()] == [
        ("Paris", TS("2026-05-02 00:00:00"))
    ]
    # older, and 01:00+02:00 is 23:00Z of the day before: both lose to Paris
    land(landing, "customers", [customer("C1", city="Oslo", updated_at="2026-04-01T00:00:00Z"),
                                customer("C1", city="Lima", updated_at="2026-05-02T01:00:00+02:00")])  # fmt: skip
    run_entity(spark, ctx, "customers")
    assert [r.city for r in spark.table("silver_customers").collect()] == ["Paris"]
    land(
        landing, "customers", [customer("C1", city="Kyiv", updated_at="2026-05-02T03:00:00+02:00")]
    )  # 01:00Z
    run_entity(spark, ctx, "customers")
    assert [(r.city, r.updated_at) for r in spark.table("silver_customers").collect()] == [
        ("Kyiv", TS("2026-05-02 01:00:00"))
    ]


def test_ties_break_the_same_way_whatever_the_arrival_order(spark, ctx, tmp_path) -> None:
    from conftest import make_context

    a = customer("C1", city="Amsterdam")
    b = customer("C1", city="Berlin")
    land(ctx.profile.landing_root, "customers", [a, b], name="same.json")
    run_entity(spark, ctx, "customers")
    first = silver_rows(spark, "customers")
    other = make_context(tmp_path / "other")
    land(other.profile.landing_root, "customers", [b], name="same.json")
    run_entity(spark, other, "customers")
    land(other.profile.landing_root, "customers", [a], name="same.json.2.json")
    run_entity(spark, other, "customers")
    second = silver_rows(spark, "customers")
    # same updated_at: the tie is broken on the other columns in contract order (city: B > A)
    assert [r[5] for r in first] == ["Berlin"]
    assert second == first


def test_child_before_parent_is_deferred_then_promoted(spark, ctx) -> None:
    landing = ctx.profile.landing_root
    land(landing, "customers", [customer("C1")])
    land(landing, "products", [product("P1")])
    land(landing, "line_items", [line_item("L1", order_id="O1")])
    run_all(spark, ctx, ("customers", "products", "line_items"))
    assert spark.table("silver_line_items").count() == 0
    assert [r.line_item_id for r in spark.table("deferred_line_items").collect()] == ["L1"]
    assert spark.table("quarantine_line_items").count() == 0
    land(landing, "orders", [order("O1")])
    run_all(spark, ctx, ("orders", "line_items"))
    assert [r.line_item_id for r in spark.table("silver_line_items").collect()] == ["L1"]
    assert spark.table("deferred_line_items").count() == 0


def test_orphan_expires_into_quarantine_after_the_limit(spark, ctx) -> None:
    ctx = replace(
        ctx,
        profile=replace(ctx.profile, quality=replace(ctx.profile.quality, defer_max_age_seconds=0)),
    )
    land(ctx.profile.landing_root, "customers", [customer("C1")])
    land(ctx.profile.landing_root, "orders", [order("O1", customer_id="C404"), order("O2")])
    run_all(spark, ctx, ("customers", "orders"))
    assert [r.order_id for r in spark.table("silver_orders").collect()] == ["O2"]
    assert spark.table("deferred_orders").count() == 0
    assert quarantine_rows(spark, "orders") == [("O1", ("customer_exists",), "expired", None)]


def test_fail_rule_stops_the_run_naming_the_rule_and_a_sample(
    spark, ctx, monkeypatch, tmp_path
) -> None:
    import shutil

    from order_pipeline.common.config import conf_dir

    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    rules = conf / "quality" / "products.yml"
    edit_text(rules, (
        "  - name: price_positive\n    kind: range\n    column: price\n    min: 0\n    strict_min: true\n    severity: quarantine",
        "  - name: price_positive\n    kind: range\n    column: price\n    min: 0\n    strict_min: true\n    severity: fail",
    ))  # fmt: skip
    monkeypatch.setenv("ORDER_PIPELINE_CONF", str(conf))
    land(ctx.profile.landing_root, "products", [product("P1"), product("P2", price=-5)])
    with pytest.raises(Exception, match=r"price_positive.*severity fail.*P2"):
        run_entity(spark, ctx, "products")
    assert spark.table("silver_products").count() == 0


def test_quarantine_share_above_the_limit_fails_the_task(spark, ctx) -> None:
    land(
        ctx.profile.landing_root,
        "products",
        [product("P1"), product("P2", price=0), product("P3", price=0)],
    )
    with pytest.raises(QuarantineRatioExceeded, match=r"2 of 3 rows .*66\.7%.*products\.yml"):
        run_entity(spark, ctx, "products")
    assert silver_rows(spark, "products") == {
        ("P1", "Widget", "Tools", Decimal("9.99"), TS("2026-05-01 10:00:00"))
    }


def test_rerun_without_new_data_changes_no_table_version(spark, ctx) -> None:
    land(ctx.profile.landing_root, "customers", [customer("C1"), customer("C2", email="nope")])
    land(ctx.profile.landing_root, "orders", [order("O1"), order("O2", customer_id="C9")])
    run_all(spark, ctx, ("customers", "orders"))
    tables = ["bronze_orders", "silver_orders", "quarantine_orders", "deferred_orders", "silver_customers",
              "quarantine_customers", "ops_quality_metrics"]  # fmt: skip
    before = versions(spark, ctx, tables)
    run_all(spark, ctx, ("customers", "orders"))
    assert versions(spark, ctx, tables) == before


def test_full_refresh_rebuilds_silver_and_quarantine_from_bronze_without_doubling(
    spark, ctx
) -> None:
    land(ctx.profile.landing_root, "customers", [customer("C1"), customer("C2", email="nope")])
    run_entity(spark, ctx, "customers")
    silver_before, quarantine_before = (
        silver_rows(spark, "customers"),
        quarantine_rows(spark, "customers"),
    )
    run_entity(spark, replace(ctx, full_refresh=True), "customers")
    assert silver_rows(spark, "customers") == silver_before
    assert quarantine_rows(spark, "customers") == quarantine_before
    assert spark.table("bronze_customers").count() == 2


def test_gx_validation_result_is_stored_per_batch_when_switched_on(spark, ctx) -> None:
    quality = replace(ctx.profile.quality, gx_validation=True)
    ctx = replace(ctx, profile=replace(ctx.profile, quality=quality))
    land(
        ctx.profile.landing_root,
        "products",
        [product("P1"), product("P2", price=-1), product("P3")],
    )
    run_entity(spark, ctx, "products")
    results = sorted(
        (r.rule, r.severity, r.expectation, r.success, r.element_count, r.unexpected_count)
        for r in spark.table("ops_gx_results").where("entity = 'products'").collect()
    )
    # one batch of three rows, P2's price below the range: every rule of products.yml once
    # (GX reports no element count for its row queries), nothing else
    rows_query = "unexpected_rows_expectation"
    assert results == [
        ("decimal_scale", "quarantine", rows_query, True, None, 0),
        ("duplicate_field", "quarantine", rows_query, True, None, 0),
        ("extra_field", "warn", rows_query, True, None, 0),
        ("malformed_record", "quarantine", "expect_column_values_to_be_null", True, 3, 0),
        ("price_not_null", "quarantine", "expect_column_values_to_not_be_null", True, 3, 0),
        ("price_positive", "quarantine", "expect_column_values_to_be_between", False, 3, 1),
        (
            "product_id_not_blank",
            "quarantine",
            "expect_column_values_to_not_match_regex",
            True,
            3,
            0,
        ),
        ("product_id_not_null", "quarantine", "expect_column_values_to_not_be_null", True, 3, 0),
        ("timestamp_format", "quarantine", rows_query, True, None, 0),
        ("timestamp_range", "quarantine", rows_query, True, None, 0),
        ("updated_at_not_null", "quarantine", "expect_column_values_to_not_be_null", True, 3, 0),
    ]


def test_first_load_is_written_in_key_ranges_and_a_merge_reads_only_its_range(spark, ctx) -> None:
    """silver_file_rows=2: six customers land as key-range files; a later batch for C6 and
    C7 must not read the files of older keys: they are deleted from disk and the MERGE
    still succeeds (reading one of them would fail)."""
    ctx = replace(ctx, profile=replace(ctx.profile, silver_file_rows=2))
    landing = ctx.profile.landing_root
    land(landing, "customers", [customer(f"C{i}") for i in (4, 1, 6, 3, 5, 2)])
    run_entity(spark, ctx, "customers")
    files = sorted(
        (r.low, r.high, r.path)
        for r in spark.table("silver_customers")
        .groupBy(F.input_file_name().alias("path"))
        .agg(F.min("customer_id").alias("low"), F.max("customer_id").alias("high"))
        .collect()
    )
    assert len(files) == 3
    assert all(a[1] < b[0] for a, b in pairwise(files))  # disjoint ranges
    older = [path for low, high, path in files if high < "C6"]
    assert len(older) == 2

    land(landing, "customers", [customer("C6", city="Oslo", updated_at="2026-06-01T00:00:00Z"),
                                customer("C7")])  # fmt: skip
    for path in older:
        os.remove(urlparse(path).path)
    # a run of its own (the dataset checks read the rows a run wrote by its run id)
    run_entity(spark, replace(ctx, run_id=f"{ctx.run_id}-next"), "customers")
    newest = spark.table("silver_customers").where("customer_id >= 'C6'")
    assert sorted((r.customer_id, r.city) for r in newest.collect()) == [
        ("C6", "Oslo"),
        ("C7", "London"),
    ]


def test_quarantine_rows_go_to_the_quarantine_schema_where_the_profile_has_one(spark, ctx) -> None:
    # as on Databricks, where only the data stewards may read <schema>_quarantine
    from order_pipeline.cli.report import quarantine_summary
    from order_pipeline.common.io import Lakehouse

    restricted = f"{ctx.profile.schema}_quarantine"
    ctx = replace(ctx, profile=replace(ctx.profile, quarantine_schema=restricted))
    land(ctx.profile.landing_root, "customers", [customer("C1"), customer("C2", email="nope")])
    run_entity(spark, ctx, "customers")
    lake = Lakehouse(spark, ctx.profile)
    assert lake.quarantine("customers") == f"{restricted}.quarantine_customers"
    assert not lake.exists("quarantine_customers")  # nothing in the main schema
    rows = lake.read(lake.quarantine("customers")).select("record.customer_id", "reasons")
    assert [tuple(r) for r in rows.collect()] == [("C2", ["email_valid"])]
    summary = quarantine_summary(lake, ["customers"]).select("entity", "rule", "rows")
    assert [tuple(r) for r in summary.collect()] == [("customers", "email_valid", 1)]
