"""Gold: the business answers, as pure transforms of silver DataFrames (see DESIGN.md),
and the planning of an incremental gold build from the silver tables' change data feed."""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from importlib.resources import files

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

# the silver tables gold is built from
GOLD_INPUTS = ("customers", "products", "orders", "line_items")
COMPLETED, CANCELLED, IN_PROGRESS = "Completed", "Cancelled", "In Progress"

VANISHED = "_vanished"  # a monthly sales group that no longer has any delivered item


def order_details(
    line_items: DataFrame, orders: DataFrame, customers: DataFrame, products: DataFrame
) -> DataFrame:
    """One row per silver line item with its order, customer and product attributes."""
    li, o, c, p = (
        line_items.alias("li"),
        orders.alias("o"),
        customers.alias("c"),
        products.alias("p"),
    )
    return (
        li.join(o, F.col("li.order_id") == F.col("o.order_id"), "left")
        .join(c, F.col("o.customer_id") == F.col("c.customer_id"), "left")
        .join(p, F.col("li.product_id") == F.col("p.product_id"), "left")
        .select(
            F.col("li.line_item_id"),
            F.col("li.order_id"),
            F.col("li.product_id"),
            F.col("o.customer_id"),
            F.col("o.order_ts"),
            F.col("o.status").alias("order_status"),
            F.col("li.status").alias("line_status"),
            F.col("li.quantity"),
            F.col("li.unit_price"),
            (F.col("li.quantity") * F.col("li.unit_price"))
            .cast("decimal(18,2)")
            .alias("line_total"),
            F.col("li.delivered_at"),
            F.concat_ws(" ", F.col("c.first_name"), F.col("c.last_name")).alias("customer_name"),
            F.col("c.email").alias("customer_email"),
            F.col("c.city").alias("customer_city"),
            F.col("c.country").alias("customer_country"),
            F.col("p.name").alias("product_name"),
            F.col("p.category").alias("product_category"),
        )
    )


def product_sales_monthly(details: DataFrame) -> DataFrame:
    """Per product and calendar month of order_ts (UTC): delivered units, revenue, orders."""
    delivered = details.where(F.col("line_status") == "delivered")
    return (
        delivered.groupBy("product_id", F.trunc("order_ts", "month").alias("month"))
        .agg(
            F.max("product_name").alias("product_name"),
            F.max("product_category").alias("product_category"),
            F.sum("quantity").cast("bigint").alias("units"),
            F.sum("line_total").cast("decimal(20,2)").alias("revenue"),
            F.countDistinct("order_id").cast("bigint").alias("orders"),
        )
        .select(
            "month", "product_id", "product_name", "product_category", "units", "revenue", "orders"
        )
    )


def order_completion_status(orders: DataFrame, line_items: DataFrame) -> DataFrame:
    """Per order: item counts and completion status, decided in this order: Cancelled,
    Completed (every item delivered, at least one item), otherwise In Progress."""
    items = line_items.groupBy("order_id").agg(
        F.count(F.lit(1)).alias("total_items"),
        F.count_if(F.col("status") == "delivered").alias("delivered_items"),
        F.count_if(F.col("status") == "cancelled").alias("cancelled_items"),
        F.max("delivered_at").alias("last_delivered_at"),
    )
    joined = orders.select(
        "order_id", "customer_id", "order_ts", F.col("status").alias("order_status")
    ).join(items, "order_id", "left")
    total = F.coalesce(F.col("total_items"), F.lit(0))
    delivered = F.coalesce(F.col("delivered_items"), F.lit(0))
    cancelled = F.coalesce(F.col("cancelled_items"), F.lit(0))
    status = (
        F.when(
            (F.col("order_status") == "cancelled") | ((total > 0) & (cancelled == total)),
            F.lit(CANCELLED),
        )
        .when((total > 0) & (delivered == total), F.lit(COMPLETED))
        .otherwise(F.lit(IN_PROGRESS))
    )
    return joined.select(
        "order_id",
        "customer_id",
        "order_ts",
        "order_status",
        total.cast("bigint").alias("total_items"),
        delivered.cast("bigint").alias("delivered_items"),
        cancelled.cast("bigint").alias("cancelled_items"),
        status.alias("completion_status"),
        F.when(status == COMPLETED, F.col("last_delivered_at")).alias("completed_at"),
    )


def most_sold_query() -> str:
    return files("order_pipeline.queries").joinpath("most_sold_product_last_30d.sql").read_text()


# -- incremental build ---------------------------------------------------------------------
@dataclass(frozen=True)
class SilverSnapshot:
    """A silver table as the gold build found it: identity, version, change data feed."""

    table: str
    table_id: str
    version: int
    change_data_feed: bool


@dataclass(frozen=True)
class Watermark:
    """The last version of a silver table the gold tables were built from."""

    table: str
    table_id: str
    version: int


def full_rebuild_reason(
    full_refresh: bool,
    missing_gold: list[str],
    silver: list[SilverSnapshot],
    watermarks: dict[str, Watermark],
) -> str | None:
    """Why gold must be rebuilt from whole silver tables, or None when the change feeds
    since the watermarks are enough. (A change feed that turns out unreadable, e.g.
    vacuumed, is only found when read: the job falls back then.)"""
    if full_refresh:
        return "full refresh requested"
    if missing_gold:
        return f"{', '.join(missing_gold)} missing"
    for snapshot in silver:
        watermark = watermarks.get(snapshot.table)
        if watermark is None:
            return f"no watermark for {snapshot.table} yet"
        if not snapshot.change_data_feed:
            return f"change data feed is off on {snapshot.table}"
        if watermark.table_id != snapshot.table_id:
            return f"{snapshot.table} was recreated since gold last read it"
        if watermark.version > snapshot.version:
            return (
                f"{snapshot.table} is at version {snapshot.version}, "
                f"behind the watermark {watermark.version}"
            )
    return None


@dataclass(frozen=True)
class SilverChanges:
    """Change-feed rows of each silver table since gold last read it, every change type
    (an update's pre-image matters as much as its post-image); None: no change."""

    customers: DataFrame | None = None
    products: DataFrame | None = None
    orders: DataFrame | None = None
    line_items: DataFrame | None = None

    def any(self) -> bool:
        return any(
            c is not None for c in (self.customers, self.products, self.orders, self.line_items)
        )


def affected_orders(changes: SilverChanges, orders: DataFrame, line_items: DataFrame) -> DataFrame:
    """The order_ids whose gold rows may differ from the last build: orders of changed
    line items (before and after the change), changed orders, orders of changed customers
    and orders with line items of changed products (``orders``/``line_items``: current
    silver)."""
    ids = [orders.select("order_id").limit(0)]
    if changes.line_items is not None:
        ids.append(changes.line_items.select("order_id"))
    if changes.orders is not None:
        ids.append(changes.orders.select("order_id"))
    if changes.customers is not None:
        customers = changes.customers.select("customer_id")
        ids.append(orders.join(customers, "customer_id", "left_semi").select("order_id"))
    if changes.products is not None:
        products = changes.products.select("product_id")
        ids.append(line_items.join(products, "product_id", "left_semi").select("order_id"))
    return reduce(DataFrame.unionByName, ids).where(F.col("order_id").isNotNull()).distinct()


def _of_orders(df: DataFrame, order_ids: DataFrame) -> DataFrame:
    return df.join(order_ids, "order_id", "left_semi")


def order_details_for_orders(
    order_ids: DataFrame,
    line_items: DataFrame,
    orders: DataFrame,
    customers: DataFrame,
    products: DataFrame,
) -> DataFrame:
    """``order_details`` restricted to the line items of ``order_ids``: every input is
    narrowed to the keys those line items reach before the joins."""
    items = _of_orders(line_items, order_ids)
    their_orders = _of_orders(orders, order_ids)
    their_customers = customers.join(their_orders.select("customer_id"), "customer_id", "left_semi")
    their_products = products.join(items.select("product_id"), "product_id", "left_semi")
    return order_details(items, their_orders, their_customers, their_products)


def order_completion_status_for_orders(
    order_ids: DataFrame, orders: DataFrame, line_items: DataFrame
) -> DataFrame:
    """``order_completion_status`` of ``order_ids`` only."""
    return order_completion_status(_of_orders(orders, order_ids), _of_orders(line_items, order_ids))


def _order_month() -> Column:
    return F.trunc("order_ts", "month").alias("month")


def sales_groups_to_refresh(
    changes: SilverChanges,
    order_ids: DataFrame,
    orders: DataFrame,
    refreshed_details: DataFrame,
    replaced_details: DataFrame,
) -> DataFrame:
    """The (product_id, month) groups of gold_product_sales_monthly that the refreshed
    order details can change: the groups of the gold rows being replaced, of their new
    rows, and of every (product, order month) pairing the affected line items and orders
    went through since the watermark (pre- and post-images). The last part keeps a crash
    between the gold writes harmless: gold rows already rewritten by a failed run no longer
    show the groups they left, the change feed still does."""
    pairs = [refreshed_details.select("order_id", "product_id")]
    if changes.line_items is not None:
        pairs.append(changes.line_items.select("order_id", "product_id"))
    months = [_of_orders(orders, order_ids).select("order_id", _order_month())]
    if changes.orders is not None:
        months.append(changes.orders.select("order_id", _order_month()))
    travelled = (
        reduce(DataFrame.unionByName, pairs)
        .join(reduce(DataFrame.unionByName, months), "order_id")
        .select("product_id", "month")
    )
    before = replaced_details.select("product_id", _order_month())
    after = refreshed_details.select("product_id", _order_month())
    return travelled.unionByName(before).unionByName(after).distinct()


def _same_group(details: DataFrame, groups: DataFrame) -> Column:
    return details["product_id"].eqNullSafe(groups["product_id"]) & F.trunc(
        details["order_ts"], "month"
    ).eqNullSafe(groups["month"])


def product_sales_for_groups(groups: DataFrame, details: DataFrame) -> DataFrame:
    """One row per given group: its ``product_sales_monthly`` row from the whole order
    details, or, with ``_vanished`` true, nothing but the key when the group has no
    delivered item any more. What replacing those groups in gold_product_sales_monthly
    takes."""
    sales = product_sales_monthly(details.join(groups, _same_group(details, groups), "left_semi"))
    key = sales["product_id"].eqNullSafe(groups["product_id"]) & sales["month"].eqNullSafe(
        groups["month"]
    )
    return groups.join(sales, key, "left").select(
        groups["month"],
        groups["product_id"],
        *[sales[c] for c in ("product_name", "product_category", "units", "revenue", "orders")],
        sales["units"].isNull().alias(VANISHED),
    )
