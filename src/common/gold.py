"""Gold: the business answers, as pure transforms of silver DataFrames (see DESIGN.md)."""

from __future__ import annotations

from datetime import datetime
from importlib.resources import files

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

ORDER_DETAILS = "gold_order_details"
PRODUCT_SALES_MONTHLY = "gold_product_sales_monthly"
ORDER_COMPLETION_STATUS = "gold_order_completion_status"
MOST_SOLD_LAST_30D = "gold_most_sold_product_last_30d"
GOLD_TABLES = (ORDER_DETAILS, PRODUCT_SALES_MONTHLY, ORDER_COMPLETION_STATUS, MOST_SOLD_LAST_30D)

COMPLETED, CANCELLED, IN_PROGRESS = "Completed", "Cancelled", "In Progress"


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


def most_sold_product_last_30d(spark: SparkSession, as_of: datetime) -> DataFrame:
    """Runs src/queries/most_sold_product_last_30d.sql against gold_order_details."""
    return spark.sql(most_sold_query(), args={"as_of": as_of})
