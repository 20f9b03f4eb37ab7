"""Incremental gold build (DESIGN.md's gold definitions, maintained from the silver change
data feed): the planning functions on hand-built change rows, then the gold task on silver
tables changed between runs, checked against hand-written rows and against a full rebuild."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from builders import customer, line_item, order, product
from chispa import assert_df_equality
from conftest import make_context
from pipeline_helpers import assert_gold_equals, merge_silver, typed_silver

from order_pipeline.common import contract
from order_pipeline.common.config import GoldSettings
from order_pipeline.common.contract import GOLD_WATERMARKS, silver_ddl, silver_table
from order_pipeline.common.io import Lakehouse
from order_pipeline.jobs import gold as gold_job
from order_pipeline.jobs.silver import build_silver
from order_pipeline.transforms import gold

T = datetime.fromisoformat
ENTITIES = ("customers", "products", "orders", "line_items")
GOLD_TABLES = (*gold_job.MAINTAINED, contract.MOST_SOLD_LAST_30D)


# -- planning ------------------------------------------------------------------------------
def snapshot(table_id: str = "id-1", version: int = 5, cdf: bool = True) -> gold.SilverSnapshot:
    return gold.SilverSnapshot("silver_orders", table_id, version, cdf)


MARK = {"silver_orders": gold.Watermark("silver_orders", "id-1", 3)}


@pytest.mark.parametrize(
    ("full_refresh", "missing", "silver", "watermarks", "reason"),
    [
        (False, [], snapshot(), MARK, None),
        (False, [], snapshot(version=3), MARK, None),
        (True, [], snapshot(), MARK, "full refresh requested"),
        (False, ["gold_order_details"], snapshot(), MARK, "gold_order_details missing"),
        (False, [], snapshot(), {}, "no watermark for silver_orders yet"),
        (False, [], snapshot(cdf=False), MARK, "change data feed is off on silver_orders"),
        (False, [], snapshot(table_id="id-2"), MARK, "silver_orders was recreated since gold last read it"),
        (False, [], snapshot(version=2), MARK, "silver_orders is at version 2, behind the watermark 3"),
    ],
)  # fmt: skip
def test_full_rebuild_reason(full_refresh, missing, silver, watermarks, reason) -> None:
    assert gold.full_rebuild_reason(full_refresh, missing, [silver], watermarks) == reason


@pytest.mark.parametrize("orders, minimum", [(2, 3), (0, 1)])
def test_fewer_orders_than_the_incremental_minimum_rebuild_before_reading_the_feed(
    orders, minimum
) -> None:
    settings = GoldSettings(max_incremental_share=1.0, min_orders_for_incremental=minimum)
    with pytest.raises(gold_job.IncrementalNotCheaper) as raised:
        # no lakehouse, silver, snapshots or watermarks: reading the feed would fail otherwise
        gold_job.build_incrementally(
            None, {}, {}, {}, print, gold_job.no_fault, settings, None, lambda: orders
        )
    assert str(raised.value) == (
        f"{orders} orders are fewer than the gold.min_orders_for_incremental of {minimum}: "
        "a full rebuild is cheaper"
    )


CHANGED_ITEMS = "line_item_id string, order_id string, product_id string, _change_type string"
CHANGED_ORDERS = "order_id string, customer_id string, order_ts timestamp, _change_type string"


def test_affected_orders_follow_every_change_to_the_orders_it_reaches(spark) -> None:
    orders = spark.createDataFrame(
        [("O1", "C1"), ("O2", "C2"), ("O3", "C3")], "order_id string, customer_id string"
    )
    items = spark.createDataFrame(
        [("L1", "O1", "P1"), ("L2", "O2", "P1"), ("L3", "O3", "P3")],
        "line_item_id string, order_id string, product_id string",
    )
    changes = gold.SilverChanges(
        # L9 moved from O7 to O8: both orders' gold rows change
        line_items=spark.createDataFrame(
            [("L9", "O7", "P1", "update_preimage"), ("L9", "O8", "P1", "update_postimage")],
            CHANGED_ITEMS,
        ),
        orders=spark.createDataFrame([("O5", "C1", T("2026-05-01"), "insert")], CHANGED_ORDERS),
        customers=spark.createDataFrame(
            [("C2", "update_preimage"), ("C2", "update_postimage")],
            "customer_id string, _change_type string",
        ),
        products=spark.createDataFrame(
            [("P3", "update_postimage")], "product_id string, _change_type string"
        ),
    )
    affected = gold.affected_orders(changes, orders, items)
    assert sorted(r.order_id for r in affected.collect()) == ["O2", "O3", "O5", "O7", "O8"]
    assert gold.affected_orders(gold.SilverChanges(), orders, items).isEmpty()


def test_listed_order_ids_select_the_rows_the_join_selects(spark) -> None:
    """The rows of few orders are read with their ids listed (order_id IN (...)), of many by
    joining: both forms keep the same rows, odd ids and nulls included."""
    odd = ["O1", "o1", "O'2", 'O"3', "Ö4 ", "O5,O6", ""]
    rows = spark.createDataFrame(
        [(f"L{i}", o) for i, o in enumerate([*odd, "O7", None, "O1"])],
        "line_item_id string, order_id string",
    )
    wanted = ["O1", "O'2", 'O"3', "Ö4 ", "O5,O6", "", "O9"]
    ids = spark.createDataFrame([(o,) for o in wanted], "order_id string")
    joined = gold_job.of_orders(rows, ids, None)
    listed = gold_job.of_orders(rows, ids, wanted)
    assert sorted(r.line_item_id for r in listed.collect()) == ["L0", "L2", "L3", "L4", "L5", "L6", "L9"]  # fmt: skip
    assert_df_equality(listed, joined, ignore_row_order=True)


DETAILS = "line_item_id string, order_id string, product_id string, order_ts timestamp"
GROUPS = "product_id string, month date"


def test_sales_groups_cover_every_product_and_month_a_changed_item_went_through(spark) -> None:
    """L1 moved from O1 (April) to O2, and O2 moved from March to May: its sales may sit in
    P1's April (the gold row being replaced), May (the new row) or March (a state in between,
    which a crashed earlier run may have written)."""
    changes = gold.SilverChanges(
        line_items=spark.createDataFrame(
            [("L1", "O1", "P1", "update_preimage"), ("L1", "O2", "P1", "update_postimage")],
            CHANGED_ITEMS,
        ),
        orders=spark.createDataFrame(
            [
                ("O2", "C1", T("2026-03-10 10:00:00"), "update_preimage"),
                ("O2", "C1", T("2026-05-10 10:00:00"), "update_postimage"),
            ],
            CHANGED_ORDERS,
        ),
    )
    order_ids = spark.createDataFrame([("O1",), ("O2",)], "order_id string")
    orders = spark.createDataFrame(
        [("O1", T("2026-04-01 10:00:00")), ("O2", T("2026-05-10 10:00:00")), ("O3", T("2026-06-01 10:00:00"))],
        "order_id string, order_ts timestamp",
    )  # fmt: skip
    refreshed = spark.createDataFrame(
        [("L1", "O2", "P1", T("2026-05-10 10:00:00")), ("L2", "O1", "P2", T("2026-04-01 10:00:00"))],
        DETAILS,
    )  # fmt: skip
    replaced = spark.createDataFrame(
        [("L1", "O1", "P1", T("2026-04-01 10:00:00")), ("L2", "O1", "P2", T("2026-04-01 10:00:00"))],
        DETAILS,
    )  # fmt: skip
    groups = gold.sales_groups_to_refresh(changes, order_ids, orders, refreshed, replaced)
    expected = spark.createDataFrame(
        [("P1", date(2026, 3, 1)), ("P1", date(2026, 4, 1)), ("P1", date(2026, 5, 1)), ("P2", date(2026, 4, 1))],
        GROUPS,
    )  # fmt: skip
    assert_df_equality(groups, expected, ignore_row_order=True, ignore_nullable=True)


def test_sales_of_groups_mark_the_groups_left_without_delivered_items(spark) -> None:
    details = spark.createDataFrame(
        [
            ("O1", "P1", T("2026-04-01 10:00:00"), "delivered", 2, Decimal("10.00"), "Widget", "Tools"),
            ("O2", "P1", T("2026-04-30 10:00:00"), "delivered", 1, Decimal("5.00"), "Widget", "Tools"),
            ("O3", "P1", T("2026-05-02 10:00:00"), "shipped", 9, Decimal("45.00"), "Widget", "Tools"),
            ("O4", "P2", T("2026-04-02 10:00:00"), "delivered", 1, Decimal("3.00"), "Gizmo", "Tools"),
        ],
        "order_id string, product_id string, order_ts timestamp, line_status string, quantity int, "
        "line_total decimal(18,2), product_name string, product_category string",
    )  # fmt: skip
    groups = spark.createDataFrame(
        [("P1", date(2026, 4, 1)), ("P1", date(2026, 5, 1)), ("P3", date(2026, 6, 1))], GROUPS
    )
    expected = spark.createDataFrame(
        [
            (date(2026, 4, 1), "P1", "Widget", "Tools", 3, Decimal("15.00"), 2, False),
            (date(2026, 5, 1), "P1", None, None, None, None, None, True),
            (date(2026, 6, 1), "P3", None, None, None, None, None, True),
        ],
        "month date, product_id string, product_name string, product_category string, "
        "units bigint, revenue decimal(20,2), orders bigint, _vanished boolean",
    )
    actual = gold.product_sales_for_groups(groups, details)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


# -- the gold task on changing silver tables ---------------------------------------------------
AS_OF = datetime(2026, 7, 10)
LATER = "2026-05-10T00:00:00Z"
LATEST = "2026-05-11T00:00:00Z"

INITIAL = {
    "customers": [
        customer("C1"),
        customer("C2", first_name="Grace", last_name="Hopper", city="New York", country="US"),
    ],
    "products": [product("P1"), product("P2", name="Gadget")],
    "orders": [
        order("O1", "C1", order_ts="2026-04-10T10:00:00Z", status="shipped"),
        order("O2", "C2", order_ts="2026-04-20T10:00:00Z", status="processing"),
        order("O3", "C1", order_ts="2026-05-05T10:00:00Z", status="shipped"),
        order("O5", "C2", order_ts="2026-03-15T10:00:00Z", status="delivered"),  # never changes
    ],
    "line_items": [
        line_item("L1", "O1", "P1", quantity=2, unit_price=5.0, status="delivered", delivered_at="2026-04-12T00:00:00Z"),
        line_item("L2", "O1", "P2", quantity=1, unit_price=3.0, status="shipped"),
        line_item("L3", "O2", "P1", quantity=1, unit_price=5.0, status="delivered", delivered_at="2026-04-22T00:00:00Z"),
        line_item("L4", "O3", "P2", quantity=4, unit_price=3.0, status="delivered", delivered_at="2026-05-07T00:00:00Z"),
        line_item("L7", "O5", "P1", quantity=5, unit_price=5.0, status="delivered", delivered_at="2026-03-20T00:00:00Z"),
    ],
}  # fmt: skip
CHANGES = {
    "customers": [customer("C1", city="Paris", updated_at=LATER)],
    "products": [product("P2", name="Gizmo", updated_at=LATER)],
    "orders": [
        order("O2", "C2", order_ts="2026-04-20T10:00:00Z", status="cancelled", updated_at=LATER),
        order("O3", "C1", order_ts="2026-06-01T10:00:00Z", status="shipped", updated_at=LATER),
        order("O4", "C2", order_ts="2026-05-12T10:00:00Z", updated_at=LATER),
    ],
    "line_items": [
        line_item("L2", "O1", "P2", quantity=1, unit_price=3.0, status="delivered", delivered_at="2026-05-09T00:00:00Z", updated_at=LATER),
        line_item("L5", "O4", "P1", quantity=3, unit_price=5.0, updated_at=LATER),
        line_item("L6", "O4", "P2", quantity=1, unit_price=3.0, updated_at=LATER),
    ],
}  # fmt: skip
# after a run crashed half way, O3 moves once more: from June to July
O3_MOVES_AGAIN = [order("O3", "C1", order_ts="2026-07-03T10:00:00Z", status="shipped", updated_at=LATEST)]  # fmt: skip


class Crash(RuntimeError):
    pass


def crash_after(step: str) -> Callable[[str], None]:
    def hook(reached: str) -> None:
        if reached == step:
            raise Crash(step)

    return hook


def gold_versions(lake: Lakehouse) -> dict[str, int]:
    return {t: lake.version(t) for t in (*GOLD_TABLES, GOLD_WATERMARKS)}


@pytest.fixture(scope="module")
def scenario(spark, tmp_path_factory):
    """Every run of the story, in order; the tests below look at what each one left."""
    ctx = make_context(tmp_path_factory.mktemp("gold_incremental"), as_of=AS_OF)
    lake = Lakehouse(spark, ctx.profile)
    for name in ENTITIES:
        lake.ensure(silver_table(name), silver_ddl(ctx.entities[name]), properties=contract.CHANGE_DATA_FEED)  # fmt: skip
        merge_silver(spark, ctx, name, INITIAL[name])
    lines: list[str] = []

    def run(fault=gold_job.no_fault, **overrides):
        lines.clear()
        return gold_job.run(spark, replace(ctx, **overrides), lines.append, fault)

    story = {"first": run(), "first_versions": gold_versions(lake)}
    for name in ENTITIES:
        merge_silver(spark, ctx, name, CHANGES[name])
    with pytest.raises(Crash):
        run(crash_after("order_details_merged"))
    story["crash_before_sales_lines"] = list(lines)
    merge_silver(spark, ctx, "orders", O3_MOVES_AGAIN)
    # this run reads its orders' rows by joining the tables to the ids, as for more orders
    # than can be listed (the others list them): it alone writes O3's move to July and the
    # sales groups, and its gold is checked (crashed_versions)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Crash):
        patch.setattr(gold_job, "MAX_LISTED_ORDERS", 0)
        run(crash_after("gold_written"))  # every gold write done, the watermarks not
    story["crash_before_watermarks_lines"] = list(lines)
    story["crashed_versions"] = gold_versions(lake)
    story["incremental"] = run()
    story["incremental_versions"] = gold_versions(lake)
    story["unchanged"] = run()
    story["unchanged_versions"] = gold_versions(lake)
    # one changed order of five is above a 10% share: a full rebuild is chosen instead (a
    # requested full refresh takes the same full build: test_full_rebuild_reason)
    merge_silver(spark, ctx, "line_items", [line_item("L90", "O4", "P1", quantity=1, unit_price=2.0, status="shipped", updated_at=LATEST)])  # fmt: skip
    story["above_share"] = run(profile=replace(ctx.profile, gold=GoldSettings(0.1)))
    # one changed order row of five is above it too, and the commit of silver_orders says so
    # by its operation metrics: the rebuild is chosen before a change feed is read
    merge_silver(spark, ctx, "orders", [order("O4", "C2", order_ts="2026-05-12T10:00:00Z", status="shipped", updated_at=LATEST)])  # fmt: skip
    story["orders_above_share"] = run(profile=replace(ctx.profile, gold=GoldSettings(0.1)))
    story["orders_above_share_lines"] = list(lines)

    # a change whose change files are gone (as after VACUUM): the feed cannot serve it
    merge_silver(spark, ctx, "line_items", [line_item("L5", "O4", "P1", quantity=3, unit_price=5.0, status="shipped", updated_at=LATEST)])  # fmt: skip
    shutil.rmtree(Path(lake.table_path(silver_table("line_items"))) / "_change_data")
    story["change_files_lost"] = run()
    story["change_files_lost_versions"] = gold_versions(lake)

    spark.sql(f"ALTER TABLE `{ctx.profile.schema}`.silver_products SET TBLPROPERTIES (delta.enableChangeDataFeed = false)")  # fmt: skip
    story["cdf_off"] = run()
    return ctx, story


def gold_at(spark, ctx, table: str, version: int):
    name = f"`{ctx.profile.schema}`.`{table}`"
    return spark.read.format("delta").option("versionAsOf", version).table(name)


def test_first_run_is_a_full_rebuild(scenario) -> None:
    _, story = scenario
    details = story["first"].details
    assert (details["mode"], details["full_rebuild_reason"], details["affected_orders"]) == (
        "full",
        "gold_order_details, gold_product_sales_monthly, gold_order_completion_status missing",
        None,
    )  # fmt: skip


def test_changed_silver_is_built_incrementally_from_the_affected_orders(scenario) -> None:
    _, story = scenario
    details = story["incremental"].details
    # O1 (line item, customer, product), O2 (cancelled), O3 (moved, customer, product),
    # O4 (new); O5 is untouched
    assert (details["mode"], details["affected_orders"]) == ("incremental", 4)
    assert details["silver_versions"] == {
        "customers": 2,
        "products": 2,
        "orders": 3,
        "line_items": 2,
    }
    for crashed in ("crash_before_sales_lines", "crash_before_watermarks_lines"):
        assert any("gold: incremental" in line and "4 affected orders" in line for line in story[crashed])  # fmt: skip


def test_incremental_gold_equals_hand_written_rows(spark, scenario) -> None:
    ctx, story = scenario
    version = story["incremental_versions"]
    details = gold_at(spark, ctx, contract.ORDER_DETAILS, version[contract.ORDER_DETAILS])
    assert {
        tuple(r) for r in details.select(
            "line_item_id", "order_id", "order_ts", "customer_city", "product_name", "line_status"
        ).collect()
    } == {
        ("L1", "O1", T("2026-04-10 10:00:00"), "Paris", "Widget", "delivered"),
        ("L2", "O1", T("2026-04-10 10:00:00"), "Paris", "Gizmo", "delivered"),
        ("L3", "O2", T("2026-04-20 10:00:00"), "New York", "Widget", "delivered"),
        ("L4", "O3", T("2026-07-03 10:00:00"), "Paris", "Gizmo", "delivered"),
        ("L5", "O4", T("2026-05-12 10:00:00"), "New York", "Widget", "pending"),
        ("L6", "O4", T("2026-05-12 10:00:00"), "New York", "Gizmo", "pending"),
        ("L7", "O5", T("2026-03-15 10:00:00"), "New York", "Widget", "delivered"),
    }  # fmt: skip
    completion = gold_at(
        spark, ctx, contract.ORDER_COMPLETION_STATUS, version[contract.ORDER_COMPLETION_STATUS]
    )
    assert {
        (r.order_id, r.total_items, r.delivered_items, r.cancelled_items, r.completion_status, r.completed_at)
        for r in completion.collect()
    } == {
        ("O1", 2, 2, 0, "Completed", T("2026-05-09 00:00:00")),
        ("O2", 1, 1, 0, "Cancelled", None),
        ("O3", 1, 1, 0, "Completed", T("2026-05-07 00:00:00")),
        ("O4", 2, 0, 0, "In Progress", None),
        ("O5", 1, 1, 0, "Completed", T("2026-03-20 00:00:00")),
    }  # fmt: skip
    # O3's May group is gone, its June group (written by no run that finished) never shows
    monthly = gold_at(
        spark, ctx, contract.PRODUCT_SALES_MONTHLY, version[contract.PRODUCT_SALES_MONTHLY]
    )
    assert {
        (r.month, r.product_id, r.product_name, r.units, r.revenue, r.orders) for r in monthly.collect()
    } == {
        (date(2026, 3, 1), "P1", "Widget", 5, Decimal("25.00"), 1),
        (date(2026, 4, 1), "P1", "Widget", 3, Decimal("15.00"), 2),
        (date(2026, 4, 1), "P2", "Gizmo", 1, Decimal("3.00"), 1),
        (date(2026, 7, 1), "P2", "Gizmo", 4, Decimal("12.00"), 1),
    }  # fmt: skip
    (top,) = gold_at(
        spark, ctx, contract.MOST_SOLD_LAST_30D, version[contract.MOST_SOLD_LAST_30D]
    ).collect()
    assert (top.product_id, top.product_name, top.units, top.orders, top.share_of_units) == (
        "P2", "Gizmo", 4, 1, Decimal("1.0000")
    )  # fmt: skip


@pytest.mark.parametrize("state", ["incremental_versions", "crashed_versions"])
def test_incremental_gold_equals_the_plain_python_gold(spark, scenario, state) -> None:
    """After the incremental run, and already after the run that crashed before recording
    its watermarks, every gold table equals the gold tests/expectations.py computes from
    the records silver was given (not a rebuild by the same transforms)."""
    ctx, story = scenario
    silver = typed_silver(
        {e: INITIAL[e] + CHANGES[e] + (O3_MOVES_AGAIN if e == "orders" else []) for e in ENTITIES}
    )
    assert_gold_equals(
        spark, lambda table: gold_at(spark, ctx, table, story[state][table]), silver, AS_OF
    )


def test_a_run_without_silver_changes_leaves_gold_as_it_is(scenario) -> None:
    _, story = scenario
    details = story["unchanged"].details
    assert (details["mode"], details["affected_orders"]) == ("incremental", 0)
    before, after = story["incremental_versions"], story["unchanged_versions"]
    for table in (*gold_job.MAINTAINED, GOLD_WATERMARKS):
        assert after[table] == before[table], table
    assert (
        after[contract.MOST_SOLD_LAST_30D] == before[contract.MOST_SOLD_LAST_30D] + 1
    )  # depends on as_of


def test_more_affected_orders_than_the_incremental_share_rebuild_in_full(scenario) -> None:
    _, story = scenario
    details = story["above_share"].details
    assert details["mode"] == "full"
    assert details["full_rebuild_reason"] == (
        "1 affected orders of 5 are more than the gold.max_incremental_share of 0.1: "
        "a full rebuild is cheaper"
    )
    assert details[contract.ORDER_DETAILS] == story["unchanged"].details[contract.ORDER_DETAILS] + 1


def test_a_commit_that_changed_more_orders_than_the_share_rebuilds_without_the_feed(
    scenario,
) -> None:
    _, story = scenario
    details = story["orders_above_share"].details
    assert (details["mode"], details["affected_orders"]) == ("full", None)
    assert details["full_rebuild_reason"] == (
        "a commit of silver_orders changed 1 of its 5 orders (by its operation metrics), more "
        "than the gold.max_incremental_share of 0.1: a full rebuild is cheaper"
    )
    (built,) = [line for line in story["orders_above_share_lines"] if "gold: full build:" in line]
    assert "affected orders" not in built and "details" in built  # no change feed was read


def test_a_change_feed_that_cannot_be_read_falls_back_to_a_full_rebuild(spark, scenario) -> None:
    ctx, story = scenario
    details = story["change_files_lost"].details
    assert details["mode"] == "full"
    assert "change feed cannot serve" in details["full_rebuild_reason"]
    assert "FAILED_READ_FILE.FILE_NOT_EXIST" in details["full_rebuild_reason"]
    rebuilt = gold_at(spark, ctx, contract.ORDER_DETAILS, story["change_files_lost_versions"][contract.ORDER_DETAILS])  # fmt: skip
    assert rebuilt.where("line_item_id = 'L5'").first().line_status == "shipped"


def test_a_silver_table_without_change_data_feed_falls_back_to_a_full_rebuild(scenario) -> None:
    _, story = scenario
    details = story["cdf_off"].details
    assert (details["mode"], details["full_rebuild_reason"]) == (
        "full", "change data feed is off on silver_products"
    )  # fmt: skip


def test_silver_tables_are_created_with_change_data_feed(spark, ctx) -> None:
    silver = build_silver(spark, replace(ctx, entity="customers"))
    silver.ensure_tables()
    properties = silver.lake.detail(silver.silver)["properties"]
    assert properties.get("delta.enableChangeDataFeed") == "true"
