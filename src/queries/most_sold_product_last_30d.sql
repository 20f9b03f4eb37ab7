-- The most sold product of the 30 days before :as_of: most delivered units among orders
-- whose order_ts is in [as_of - 30 days, as_of), with its order count, distinct sales days
-- and share of all delivered units in the window; ties go to the smaller product_id.
-- Runs unchanged on Databricks SQL (named parameter :as_of, current catalog and schema set
-- to the pipeline's) and locally (`order-pipeline sql --file ... --param as_of=...`).
WITH window_items AS (
  SELECT
    product_id,
    product_name,
    product_category,
    order_id,
    quantity,
    CAST(order_ts AS DATE) AS sales_day
  FROM gold_order_details
  WHERE line_status = 'delivered'
    AND order_ts >= CAST(:as_of AS TIMESTAMP) - INTERVAL 30 DAYS
    AND order_ts < CAST(:as_of AS TIMESTAMP)
),
per_product AS (
  SELECT
    product_id,
    MAX(product_name) AS product_name,
    MAX(product_category) AS product_category,
    SUM(quantity) AS units,
    COUNT(DISTINCT order_id) AS orders,
    COUNT(DISTINCT sales_day) AS sales_days
  FROM window_items
  GROUP BY product_id
),
totals AS (
  SELECT SUM(quantity) AS all_units FROM window_items
)
SELECT
  CAST(:as_of AS TIMESTAMP) AS as_of,
  p.product_id,
  p.product_name,
  p.product_category,
  CAST(p.units AS BIGINT) AS units,
  CAST(p.orders AS BIGINT) AS orders,
  CAST(p.sales_days AS BIGINT) AS sales_days,
  CAST(ROUND(p.units / t.all_units, 4) AS DECIMAL(5, 4)) AS share_of_units
FROM per_product AS p
CROSS JOIN totals AS t
ORDER BY p.units DESC, p.product_id ASC
LIMIT 1
