"""The same logical pipeline in DuckDB: the single-machine reference peer.

One database file holds every layer. A run ingests only the landing files it has not
seen yet (bronze), checks them with the rules of conf/quality/*.yml compiled to DuckDB
SQL (malformed lines and values that do not parse to the contract type included), keeps
the latest valid snapshot per key under the pipeline's ordering (sequence, then every
other contract column, then the source file; nulls lowest), and rebuilds the gold tables
of src/transforms/gold.py. Foreign keys are simplified to "parent present in silver": a row
whose parent is missing waits in ``deferred_<entity>`` and is re-checked on every run
(no expiry).

    python -m benchmarks.duckdb_pipeline --landing L --state DIR --as-of TS --result R.json
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import duckdb

from benchmarks.common import (
    ENTITY_ORDER,
    ChildResult,
    landing_files,
    peer_main,
    timed,
)
from order_pipeline.common.config import Entity, load_entities
from order_pipeline.quality.rules import Rule, RuleSet, load_rules

DECIMAL = re.compile(r"decimal\((\d+),\s*(\d+)\)")
SIMPLE_TYPES = {
    "string": "VARCHAR",
    "int": "INTEGER",
    "bigint": "BIGINT",
    "double": "DOUBLE",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
}
CORRUPT, SOURCE_FILE, WARNINGS = "_corrupt_record", "_source_file", "_quality_warnings"
SEVERITY_COLUMNS = {"quarantine": "_q", "defer": "_d", "fail": "_f", "warn": "_w"}


class QualityFailure(RuntimeError):
    """A rule of severity ``fail`` matched."""


# -- SQL building blocks ------------------------------------------------------------------


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def duck_type(spark_type: str) -> str:
    match = DECIMAL.fullmatch(spark_type.replace(" ", ""))
    if match:
        return f"DECIMAL({match.group(1)},{match.group(2)})"
    return SIMPLE_TYPES[spark_type]


def typed_value(raw: str, spark_type: str) -> tuple[str, str]:
    """(value, does-not-parse) SQL for one JSON field read as text, like Spark's
    PERMISSIVE JSON reader: a value that does not parse makes the whole record corrupt."""
    if spark_type == "string":
        return raw, "FALSE"
    if spark_type == "timestamp":
        value = f"CAST(TRY_CAST({raw} AS TIMESTAMPTZ) AS TIMESTAMP)"
    else:
        value = f"TRY_CAST({raw} AS {duck_type(spark_type)})"
    bad = f"({raw} IS NOT NULL AND {value} IS NULL)"
    if spark_type in ("int", "bigint"):  # Spark rejects 3.5 for an int; DuckDB would round
        bad = f"({bad} OR ({raw} IS NOT NULL AND NOT regexp_matches({raw}, '^-?[0-9]+$')))"
    return value, bad


def parse_sql(entity: Entity) -> str:
    """SELECT over ``lines(line, filename)`` giving the contract columns, the raw line in
    _corrupt_record when the line is not JSON or a value does not parse, and the file."""
    struct = ", ".join(f'"{name}": "VARCHAR"' for name in entity.fields)
    typed = [(name, *typed_value(f"j.{ident(name)}", t)) for name, t in entity.fields.items()]
    values = ", ".join(f"{value} AS {ident(name)}" for name, value, _ in typed)
    unparsed = " OR ".join(bad for _, _, bad in typed)
    return f"""
        SELECT {values},
               CASE WHEN j IS NULL OR {unparsed} THEN line END AS {CORRUPT},
               filename AS {SOURCE_FILE}
        FROM (
            SELECT line, filename,
                   CASE WHEN json_valid(line) THEN json_transform(line, '{{{struct}}}') END AS j
            FROM lines
        )"""


def fails(rule: Rule) -> str:
    """SQL that is true exactly when a row fails ``rule`` (never null)."""
    column = ident(rule.column) if rule.column else ""
    if rule.kind == "malformed":
        sql = f"{CORRUPT} IS NOT NULL"
    elif rule.kind == "not_null":
        sql = f"{column} IS NULL"
    elif rule.kind == "regex":
        sql = f"{column} IS NOT NULL AND NOT regexp_matches({column}, {literal(rule.pattern)})"
    elif rule.kind == "in_set":
        values = ", ".join(literal(v) for v in rule.values)
        sql = f"{column} IS NOT NULL AND {column} NOT IN ({values})"
    elif rule.kind == "range":
        sql = f"{column} IS NOT NULL AND ({out_of_range(rule, column)})"
    elif rule.kind == "foreign_key":
        sql = f"{column} IS NOT NULL AND {ident(fk_column(rule))} IS NULL"
    elif rule.kind == "expression":
        sql = f"NOT COALESCE(({rule.expression}), TRUE)"
    else:
        raise ValueError(f"rule {rule.name}: unsupported kind {rule.kind!r}")
    return f"COALESCE({sql}, FALSE)"


def out_of_range(rule: Rule, column: str) -> str:
    parts = []
    if rule.min is not None:
        parts.append(f"{column} {'<=' if rule.strict_min else '<'} {literal(rule.min)}")
    if rule.max is not None:
        parts.append(f"{column} {'>=' if rule.strict_max else '>'} {literal(rule.max)}")
    return " OR ".join(parts)


def fk_column(rule: Rule) -> str:
    return f"__fk_{rule.name}"


def names_failed(rules: tuple[Rule, ...]) -> str:
    if not rules:
        return "[]::VARCHAR[]"
    flagged = ", ".join(f"CASE WHEN {fails(r)} THEN {literal(r.name)} END" for r in rules)
    return f"list_filter([{flagged}], lambda x: x IS NOT NULL)"


def severity_names(ruleset: RuleSet, severity: str) -> str:
    """As the Spark gate: a record that did not parse fails its malformed rule only."""
    of = ruleset.of(severity)
    unparsed = tuple(r for r in of if r.kind == "malformed")
    parsed = tuple(r for r in of if r.kind != "malformed")
    return (
        f"CASE WHEN {CORRUPT} IS NOT NULL THEN {names_failed(unparsed)} "
        f"ELSE {names_failed(parsed)} END"
    )


def gate_sql(ruleset: RuleSet, entities: dict[str, Entity], source: str) -> str:
    joins = []
    for rule in ruleset.rules:
        if rule.kind != "foreign_key":
            continue
        parent = entities[rule.parent]
        joins.append(
            f"LEFT JOIN (SELECT DISTINCT {ident(parent.key)} AS {ident(fk_column(rule))} "
            f"FROM silver_{parent.name}) ON c.{ident(rule.column)} = {ident(fk_column(rule))}"
        )
    outcomes = ", ".join(
        f"{severity_names(ruleset, severity)} AS {column}"
        for severity, column in SEVERITY_COLUMNS.items()
    )
    return f"SELECT c.*, {outcomes} FROM {source} AS c {' '.join(joins)}"


def ordering(entity: Entity) -> str:
    """The pipeline's snapshot order, greatest first (nulls lowest, as Spark's max)."""
    rest = [c for c in entity.columns if c not in (entity.key, entity.sequence)]
    columns = [entity.sequence, *rest, SOURCE_FILE, WARNINGS]
    return ", ".join(f"{ident(c)} DESC NULLS LAST" for c in columns)


def latest_sql(entity: Entity, source: str) -> str:
    return (
        f"SELECT * FROM {source} QUALIFY row_number() OVER "
        f"(PARTITION BY {ident(entity.key)} ORDER BY {ordering(entity)}) = 1"
    )


# -- the pipeline -------------------------------------------------------------------------


class DuckPipeline:
    def __init__(self, con: duckdb.DuckDBPyConnection, landing: Path, as_of: str) -> None:
        self.con = con
        self.landing = landing
        self.as_of = as_of
        self.entities = load_entities()
        self.rules = {name: load_rules(e, self.entities) for name, e in self.entities.items()}

    def sql(self, text: str, params: list[object] | None = None) -> duckdb.DuckDBPyConnection:
        return self.con.execute(text, params or [])

    def scalar(self, text: str) -> int:
        return int(self.sql(text).fetchone()[0])

    def ensure_tables(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS ingested_files (entity VARCHAR, file VARCHAR)")
        for name, entity in self.entities.items():
            columns = ", ".join(f"{ident(c)} {duck_type(t)}" for c, t in entity.fields.items())
            self.sql(
                f"CREATE TABLE IF NOT EXISTS bronze_{name} ({columns}, "
                f"{CORRUPT} VARCHAR, {SOURCE_FILE} VARCHAR)"
            )
            self.sql(
                f"CREATE TABLE IF NOT EXISTS silver_{name} ({columns}, "
                f"{SOURCE_FILE} VARCHAR, {WARNINGS} VARCHAR[])"
            )
            self.sql(
                f"CREATE TABLE IF NOT EXISTS deferred_{name} ({columns}, "
                f"{SOURCE_FILE} VARCHAR, {WARNINGS} VARCHAR[])"
            )
            self.sql(
                f"CREATE TABLE IF NOT EXISTS quarantine_{name} ({columns}, "
                f"{CORRUPT} VARCHAR, {SOURCE_FILE} VARCHAR, reasons VARCHAR[])"
            )

    # bronze: only files not ingested before
    def ingest(self, name: str) -> int:
        seen = {
            row[0]
            for row in self.sql(
                "SELECT file FROM ingested_files WHERE entity = ?", [name]
            ).fetchall()
        }
        new = [str(p) for p in landing_files(self.landing, name) if str(p) not in seen]
        self.sql(
            f"CREATE OR REPLACE TEMP TABLE batch_{name} AS SELECT * FROM bronze_{name} LIMIT 0"
        )
        if not new:
            return 0
        files = ", ".join(literal(f) for f in new)
        self.sql(
            f"CREATE OR REPLACE TEMP VIEW lines AS SELECT line, filename FROM read_csv([{files}], "
            "columns={'line': 'VARCHAR'}, header=false, delim='\x1f', quote='', escape='', "
            "auto_detect=false, filename=true) WHERE line IS NOT NULL AND trim(line) <> ''"
        )
        self.sql(f"INSERT INTO batch_{name} {parse_sql(self.entities[name])}")
        self.sql(f"INSERT INTO bronze_{name} SELECT * FROM batch_{name}")
        self.sql("INSERT INTO ingested_files SELECT ?, unnest(?)", [name, new])
        return self.scalar(f"SELECT count(*) FROM batch_{name}")

    # silver: gate, quarantine, defer, latest per key
    def silver(self, name: str) -> dict[str, int]:
        entity, ruleset = self.entities[name], self.rules[name]
        columns = ", ".join(ident(c) for c in entity.columns)
        self.sql(
            f"CREATE OR REPLACE TEMP TABLE candidates_{name} AS "
            f"SELECT {columns}, {CORRUPT}, {SOURCE_FILE} FROM batch_{name} UNION ALL "
            f"SELECT {columns}, NULL, {SOURCE_FILE} FROM deferred_{name}"
        )
        self.sql(
            f"CREATE OR REPLACE TEMP TABLE checked_{name} AS "
            f"{gate_sql(ruleset, self.entities, f'candidates_{name}')}"
        )
        failing = self.sql(f"SELECT _f[1] FROM checked_{name} WHERE len(_f) > 0 LIMIT 1").fetchone()
        if failing:
            raise QualityFailure(f"{name}: rule {failing[0]!r} (severity fail) matched")
        self.sql(
            f"INSERT INTO quarantine_{name} SELECT {columns}, {CORRUPT}, {SOURCE_FILE}, "
            f"_q || _d || _w FROM checked_{name} WHERE len(_q) > 0"
        )
        self.sql(f"DELETE FROM deferred_{name}")
        self.sql(
            f"INSERT INTO deferred_{name} SELECT {columns}, {SOURCE_FILE}, _w "
            f"FROM checked_{name} WHERE len(_q) = 0 AND len(_d) > 0"
        )
        self.sql(
            f"CREATE OR REPLACE TEMP TABLE passed_{name} AS "
            f"SELECT {columns}, {SOURCE_FILE}, _w AS {WARNINGS} FROM checked_{name} "
            f"WHERE len(_q) = 0 AND len(_d) = 0"
        )
        self.merge_latest(entity)
        return {
            "checked": self.scalar(f"SELECT count(*) FROM checked_{name}"),
            "quarantined": self.scalar(f"SELECT count(*) FROM checked_{name} WHERE len(_q) > 0"),
            "deferred": self.scalar(f"SELECT count(*) FROM deferred_{name}"),
        }

    def merge_latest(self, entity: Entity) -> None:
        """Only keys in the batch are touched: the batch's latest rows compete with the
        current silver rows of the same keys, and the winners replace them."""
        name, key = entity.name, ident(entity.key)
        contenders = (
            f"(SELECT * FROM passed_{name} UNION ALL BY NAME SELECT * FROM silver_{name} "
            f"WHERE {key} IN (SELECT {key} FROM passed_{name}))"
        )
        self.sql(f"CREATE OR REPLACE TEMP TABLE winners_{name} AS {latest_sql(entity, contenders)}")
        self.sql(f"DELETE FROM silver_{name} WHERE {key} IN (SELECT {key} FROM winners_{name})")
        self.sql(f"INSERT INTO silver_{name} BY NAME SELECT * FROM winners_{name}")

    # gold: rebuilt from silver, the same answers as src/transforms/gold.py
    def gold(self) -> None:
        for statement in gold_statements(self.as_of):
            self.sql(statement)

    def counts(self) -> dict[str, int]:
        tables = [
            f"{layer}_{name}"
            for name in ENTITY_ORDER
            for layer in ("silver", "quarantine", "deferred")
        ]
        tables += list(GOLD_TABLES)
        return {t: self.scalar(f"SELECT count(*) FROM {t}") for t in tables}


GOLD_TABLES = (
    "gold_order_details",
    "gold_product_sales_monthly",
    "gold_order_completion_status",
    "gold_most_sold_product_last_30d",
)


def gold_statements(as_of: str) -> list[str]:
    as_of_ts = f"CAST(CAST({literal(as_of)} AS TIMESTAMPTZ) AS TIMESTAMP)"
    return [
        """CREATE OR REPLACE TABLE gold_order_details AS
        SELECT li.line_item_id, li.order_id, li.product_id, o.customer_id, o.order_ts,
               o.status AS order_status, li.status AS line_status, li.quantity, li.unit_price,
               CAST(li.quantity * li.unit_price AS DECIMAL(18,2)) AS line_total, li.delivered_at,
               concat_ws(' ', c.first_name, c.last_name) AS customer_name,
               c.email AS customer_email, c.city AS customer_city, c.country AS customer_country,
               p.name AS product_name, p.category AS product_category
        FROM silver_line_items li
        LEFT JOIN silver_orders o ON li.order_id = o.order_id
        LEFT JOIN silver_customers c ON o.customer_id = c.customer_id
        LEFT JOIN silver_products p ON li.product_id = p.product_id""",
        """CREATE OR REPLACE TABLE gold_product_sales_monthly AS
        SELECT CAST(date_trunc('month', order_ts) AS DATE) AS month, product_id,
               max(product_name) AS product_name, max(product_category) AS product_category,
               CAST(sum(quantity) AS BIGINT) AS units,
               CAST(sum(line_total) AS DECIMAL(20,2)) AS revenue,
               CAST(count(DISTINCT order_id) AS BIGINT) AS orders
        FROM gold_order_details WHERE line_status = 'delivered'
        GROUP BY product_id, CAST(date_trunc('month', order_ts) AS DATE)""",
        """CREATE OR REPLACE TABLE gold_order_completion_status AS
        WITH items AS (
            SELECT order_id, count(*) AS total_items,
                   count(*) FILTER (WHERE status = 'delivered') AS delivered_items,
                   count(*) FILTER (WHERE status = 'cancelled') AS cancelled_items,
                   max(delivered_at) AS last_delivered_at
            FROM silver_line_items GROUP BY order_id
        ), joined AS (
            SELECT o.order_id, o.customer_id, o.order_ts, o.status AS order_status,
                   coalesce(i.total_items, 0) AS total, coalesce(i.delivered_items, 0) AS delivered,
                   coalesce(i.cancelled_items, 0) AS cancelled, i.last_delivered_at
            FROM silver_orders o LEFT JOIN items i ON o.order_id = i.order_id
        ), decided AS (
            SELECT *, CASE
                WHEN order_status = 'cancelled' OR (total > 0 AND cancelled = total) THEN 'Cancelled'
                WHEN total > 0 AND delivered = total THEN 'Completed'
                ELSE 'In Progress' END AS completion_status
            FROM joined
        )
        SELECT order_id, customer_id, order_ts, order_status,
               CAST(total AS BIGINT) AS total_items, CAST(delivered AS BIGINT) AS delivered_items,
               CAST(cancelled AS BIGINT) AS cancelled_items, completion_status,
               CASE WHEN completion_status = 'Completed' THEN last_delivered_at END AS completed_at
        FROM decided""",
        f"""CREATE OR REPLACE TABLE gold_most_sold_product_last_30d AS
        WITH window_items AS (
            SELECT product_id, product_name, product_category, order_id, quantity,
                   CAST(order_ts AS DATE) AS sales_day
            FROM gold_order_details
            WHERE line_status = 'delivered'
              AND order_ts >= {as_of_ts} - INTERVAL 30 DAYS AND order_ts < {as_of_ts}
        ), per_product AS (
            SELECT product_id, max(product_name) AS product_name,
                   max(product_category) AS product_category, sum(quantity) AS units,
                   count(DISTINCT order_id) AS orders, count(DISTINCT sales_day) AS sales_days
            FROM window_items GROUP BY product_id
        ), totals AS (SELECT sum(quantity) AS all_units FROM window_items)
        SELECT {as_of_ts} AS as_of, p.product_id, p.product_name, p.product_category,
               CAST(p.units AS BIGINT) AS units, CAST(p.orders AS BIGINT) AS orders,
               CAST(p.sales_days AS BIGINT) AS sales_days,
               CAST(round(p.units / t.all_units, 4) AS DECIMAL(5,4)) AS share_of_units
        FROM per_product p CROSS JOIN totals t
        ORDER BY p.units DESC, p.product_id ASC LIMIT 1""",
    ]


def run(landing: Path, state: Path, as_of: str, result: ChildResult) -> None:
    state.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(state / "pipeline.duckdb"))
    try:
        con.execute("SET TimeZone = 'UTC'")
        pipeline = DuckPipeline(con, landing, as_of)
        pipeline.ensure_tables()
        silver_counts: dict[str, dict[str, int]] = {}
        for name in ENTITY_ORDER:
            with timed(result.stages, f"bronze_{name}"):
                rows = pipeline.ingest(name)
            result.rows_in += rows
            with timed(result.stages, f"silver_{name}"):
                silver_counts[name] = pipeline.silver(name)
            print(f"  {name}: {rows} new lines; {silver_counts[name]}", flush=True)
        with timed(result.stages, "gold"):
            pipeline.gold()
        con.execute("CHECKPOINT")
        result.counts = pipeline.counts()
        result.details["silver"] = silver_counts
        units, revenue = con.execute(
            "SELECT sum(units), sum(revenue) FROM gold_product_sales_monthly"
        ).fetchone()
        result.details["checks"] = {
            "gold_units": float(units or 0),
            "gold_revenue": float(revenue or 0),
        }
        result.details["duckdb_version"] = duckdb.__version__
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    return peer_main(__doc__ or "", "--state", run, argv)


if __name__ == "__main__":
    sys.exit(main())
