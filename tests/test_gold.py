"""Gold definitions on hand-built silver rows, edge cases included (DESIGN.md)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from builders import customer, line_item, order, product
from chispa import assert_df_equality
from pipeline_helpers import merge_silver

from order_pipeline.jobs import gold as gold_job
from order_pipeline.transforms import gold

T = datetime.fromisoformat
ORDERS = (
    "order_id string, customer_id string, order_ts timestamp, status string, updated_at timestamp"
)
ITEMS = ("line_item_id string, order_id string, product_id string, quantity int, unit_price decimal(10,2), "
         "status string, delivered_at timestamp, updated_at timestamp")  # fmt: skip
COMPLETION = ("order_id string, customer_id string, order_ts timestamp, order_status string, total_items bigint, "
              "delivered_items bigint, cancelled_items bigint, completion_status string, completed_at timestamp")  # fmt: skip


def o(order_id: str, status: str = "shipped"):
    return (order_id, "C1", T("2026-05-01 10:00:00"), status, T("2026-05-01 10:00:00"))


def li(
    item_id: str,
    order_id: str,
    status: str,
    delivered: str | None = None,
    qty: int = 1,
    price: str = "2.50",
):
    return (
        item_id,
        order_id,
        "P1",
        qty,
        Decimal(price),
        status,
        T(delivered) if delivered else None,
        T("2026-05-02 00:00:00"),
    )


def test_completion_status_edge_cases(spark) -> None:
    orders = spark.createDataFrame(
        [
            o("EMPTY"),
            o("PARTIAL"),
            o("ALL"),
            o("CANCELLED", "cancelled"),
            o("ITEMS_CANCELLED"),
            o("MIXED"),
            o("RETURNED"),
        ],
        ORDERS,
    )
    items = spark.createDataFrame(
        [
            li("a", "PARTIAL", "delivered", "2026-05-03 00:00:00"), li("b", "PARTIAL", "shipped"),
            li("c", "ALL", "delivered", "2026-05-03 00:00:00"), li("d", "ALL", "delivered", "2026-05-04 12:00:00"),
            li("e", "CANCELLED", "delivered", "2026-05-03 00:00:00"),
            li("f", "ITEMS_CANCELLED", "cancelled"), li("g", "ITEMS_CANCELLED", "cancelled"),
            li("h", "MIXED", "cancelled"), li("i", "MIXED", "delivered", "2026-05-03 00:00:00"),
            li("j", "RETURNED", "returned", "2026-05-03 00:00:00"), li("k", "RETURNED", "delivered", "2026-05-03 00:00:00"),
        ],
        ITEMS,
    )  # fmt: skip
    ts = T("2026-05-01 10:00:00")
    expected = spark.createDataFrame(
        [
            ("EMPTY", "C1", ts, "shipped", 0, 0, 0, "In Progress", None),
            ("PARTIAL", "C1", ts, "shipped", 2, 1, 0, "In Progress", None),
            ("ALL", "C1", ts, "shipped", 2, 2, 0, "Completed", T("2026-05-04 12:00:00")),
            ("CANCELLED", "C1", ts, "cancelled", 1, 1, 0, "Cancelled", None),
            ("ITEMS_CANCELLED", "C1", ts, "shipped", 2, 0, 2, "Cancelled", None),
            ("MIXED", "C1", ts, "shipped", 2, 1, 1, "In Progress", None),
            ("RETURNED", "C1", ts, "shipped", 2, 1, 0, "In Progress", None),
        ],
        COMPLETION,
    )
    actual = gold.order_completion_status(orders, items)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_monthly_sales_count_only_delivered_items_by_calendar_month_of_the_order(spark) -> None:
    details = spark.createDataFrame(
        [
            (
                "L1",
                "O1",
                "P1",
                T("2026-04-30 23:59:59"),
                "delivered",
                2,
                Decimal("5.00"),
                "Widget",
                "Tools",
            ),
            (
                "L2",
                "O2",
                "P1",
                T("2026-05-01 00:00:00"),
                "delivered",
                1,
                Decimal("2.50"),
                "Widget",
                "Tools",
            ),
            (
                "L3",
                "O2",
                "P1",
                T("2026-05-01 00:00:00"),
                "delivered",
                3,
                Decimal("7.50"),
                "Widget",
                "Tools",
            ),
            (
                "L4",
                "O3",
                "P1",
                T("2026-05-02 00:00:00"),
                "shipped",
                9,
                Decimal("22.50"),
                "Widget",
                "Tools",
            ),
        ],
        "line_item_id string, order_id string, product_id string, order_ts timestamp, line_status string, "
        "quantity int, line_total decimal(18,2), product_name string, product_category string",
    )
    actual = {
        (r.month.isoformat(), r.units, r.revenue, r.orders)
        for r in gold.product_sales_monthly(details).collect()
    }
    assert actual == {("2026-04-01", 2, Decimal("5.00"), 1), ("2026-05-01", 4, Decimal("10.00"), 1)}


def test_a_late_line_item_turns_a_completed_order_back_to_in_progress(spark) -> None:
    """Gold is rebuilt from silver on every run: the same order, before and after a late
    line item reached silver (the MERGE path itself is covered by the silver tests)."""
    orders = spark.createDataFrame([o("O1", "delivered")], ORDERS)
    delivered = li("L1", "O1", "delivered", "2026-05-03 00:00:00")
    before = spark.createDataFrame([delivered], ITEMS)
    after = spark.createDataFrame([delivered, li("L2", "O1", "pending")], ITEMS)

    def status(items) -> list[tuple]:
        rows = gold.order_completion_status(orders, items).collect()
        return [(r.completion_status, r.total_items, r.completed_at) for r in rows]

    assert status(before) == [("Completed", 1, T("2026-05-03 00:00:00"))]
    assert status(after) == [("In Progress", 2, None)]


def test_gold_task_answers_the_most_sold_product_of_the_30_days_before_as_of(spark, ctx) -> None:
    merge_silver(spark, ctx, "customers", [customer("C1")])
    merge_silver(spark, ctx, "products", [product("P1"), product("P2", name="Gadget")])
    merge_silver(spark, ctx, "orders", [
        order("O1", order_ts="2026-05-01T10:00:00Z"),
        order("O2", order_ts="2026-03-01T10:00:00Z"),
    ])  # fmt: skip
    merge_silver(spark, ctx, "line_items", [
        line_item("L1", "O1", "P1", quantity=2, status="delivered", delivered_at="2026-05-03T00:00:00Z"),
        line_item("L2", "O1", "P2", quantity=1, status="delivered", delivered_at="2026-05-03T00:00:00Z"),
        line_item("L3", "O2", "P2", quantity=9, status="delivered", delivered_at="2026-03-03T00:00:00Z"),
    ])  # fmt: skip
    gold_job.run(spark, replace(ctx, as_of=datetime(2026, 5, 10)), progress=lambda _: None)
    (top,) = spark.table("gold_most_sold_product_last_30d").collect()
    # O2 is outside the window: P2's 9 units do not count; P1 has 2 of the 3 units in it
    assert (top.product_id, top.units, top.orders, top.sales_days, top.share_of_units) == (
        "P1", 2, 1, 1, Decimal("0.6667")
    )  # fmt: skip
    assert top.as_of == datetime(2026, 5, 10)
