"""The order pipeline declared with Spark Declarative Pipelines (``pyspark.pipelines``).

Loaded by ``spark-pipelines run`` (see benchmarks/declarative_pipeline.py, which writes the
spec next to a copy of this folder). The open-source SDP of Spark 4.1 has streaming tables
and materialized views, but neither expectations nor AUTO CDC (both Databricks-only), so:

* bronze_<entity>: a Delta streaming table over the landing folder (file source, contract
  schema, malformed lines kept), incremental through its checkpoint;
* checked_<entity>: a temporary view, every bronze row through the project's quality gate
  (order_pipeline.quality), the parents' keys read from their silver tables;
* silver_<entity> / quarantine_<entity>: materialized views splitting it, silver with the
  same latest-per-key; recomputed in full on every run, as the naive peer does: a row whose
  parent is not in silver is in neither (no deferral);
* gold_*: materialized views built with the same transforms as src/transforms/gold.py.

The gate and the Spark Connect planner need some care, see ParentKeys, define_reader and
lazy_drop.

Settings come from the spec's configuration: ``spark.order_pipeline.bench.landing`` and
``spark.order_pipeline.bench.as_of``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

from pyspark import pipelines as dp
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.connect.dataframe import DataFrame as ConnectDataFrame

from order_pipeline.common import contract
from order_pipeline.common.config import Entity, load_entities
from order_pipeline.common.contract import (
    CORRUPT_RECORD,
    QUALITY_WARNINGS,
    RESCUED_DATA,
    SOURCE_FILE,
)
from order_pipeline.quality.gate import GateOutcome, apply_quality_gate, split_by_outcome
from order_pipeline.quality.rules import load_rules
from order_pipeline.transforms import gold
from order_pipeline.transforms.latest import latest_per_key

spark = SparkSession.active()
LANDING = spark.conf.get("spark.order_pipeline.bench.landing")
AS_OF = spark.conf.get("spark.order_pipeline.bench.as_of")
ENTITIES = load_entities()

# SDP refreshes a materialized view with TRUNCATE TABLE and an append, and Delta 4.1.0
# cannot truncate a catalog table ("Table does not support truncates": DeltaTableV2 is not
# a TruncatableTable), so every run after the first would fail: the materialized views are
# Parquet tables, SDP's own default format. The bronze streaming tables are Delta, by the
# server's default source (benchmarks/declarative_pipeline.py) rather than by ``format=``:
# SDP turns a format into a "provider" property and sets it again on every later run,
# which Delta refuses (DELTA_CANNOT_CHANGE_PROVIDER).
MATERIALIZED_FORMAT = "parquet"


def define_bronze(entity: Entity) -> None:
    @dp.table(name=f"bronze_{entity.name}", comment="landed JSON lines")
    def bronze() -> DataFrame:
        # a DDL string, not StructType.fromDDL: parsing DDL is an analysis call, which
        # SDP forbids inside a query function
        schema = f"{entity.ddl()}, `{CORRUPT_RECORD}` string"
        return (
            spark.readStream.format("json")
            .schema(schema)
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT_RECORD)
            .option("pathGlobFilter", "*.json")
            .load(f"{LANDING}/{entity.name}")
            .select(
                *entity.columns,
                F.col(CORRUPT_RECORD),
                F.col("_metadata.file_path").alias(SOURCE_FILE),
            )
        )


class ParentKeys:
    """A parent's silver keys as ``with_parent_lookups`` uses them: it names the key
    column with ``keys.columns``, which on Spark Connect asks the server for the schema, an
    analysis call SDP refuses inside a query function (the parent does not exist yet
    either). The name is known from the contract, so no call is needed.

    A plain class, not a dataclass: the CLI imports this file without registering it in
    sys.modules, where dataclasses look up the module of string annotations."""

    def __init__(self, frame: DataFrame, key: str) -> None:
        self.frame, self.key = frame, key

    @property
    def columns(self) -> list[str]:
        return [self.key]

    def select(self, *cols: Column) -> DataFrame:
        return self.frame.select(*cols)


def reader(table: str) -> str:
    return f"read_{table}"


def define_reader(table: str) -> None:
    """A temporary view that only reads ``table``: the gate reads its inputs through these.

    The Spark Connect planner analyses withColumns eagerly when it can (SPARK-53505) and
    keeps it lazy only when it cannot; the gate uses withColumns. From the second run on
    the pipeline's tables are in the catalog, so a gate over ``table`` read by name would be
    bound to the catalog table when SDP registers the flow, outside SDP's dependency graph
    (seen: silver ran before bronze, and silver_orders read a silver_customers that SDP had
    just truncated). A temporary view exists in the graph only: the eager analysis fails,
    the plan stays lazy and SDP resolves the name to its dataset.
    """

    @dp.temporary_view(name=reader(table))
    def read() -> DataFrame:
        return spark.read.table(table)


@contextmanager
def lazy_drop() -> Iterator[None]:
    """While the gate is built, drop columns with a lazy ``* EXCEPT`` projection.

    The Spark Connect server analyses the input of a Drop as soon as it receives the plan,
    with no lazy fallback (SparkConnectPlanner.transformDrop wraps it in a Dataset). SDP
    sends a flow's plan when it registers the flow, when the gate's inputs cannot be
    resolved (see define_reader), so the gate's drop of its foreign-key helpers fails
    with TABLE_OR_VIEW_NOT_FOUND. A projection is resolved with the rest of the flow.
    """

    def drop(self: ConnectDataFrame, *cols: str) -> ConnectDataFrame:
        if not cols:
            return self
        return self.selectExpr(f"* EXCEPT ({', '.join(f'`{c}`' for c in cols)})")

    original = ConnectDataFrame.drop
    ConnectDataFrame.drop = drop  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        ConnectDataFrame.drop = original  # type: ignore[method-assign]


def define_checked(entity: Entity) -> None:
    """Every bronze row with the rules it fails, by the project's gate; silver and
    quarantine split it (a temporary view: computed inside each, never stored)."""

    @dp.temporary_view(name=f"checked_{entity.name}")
    def checked() -> DataFrame:
        rules = load_rules(entity, ENTITIES)
        parents = {
            r.parent: ParentKeys(
                spark.read.table(reader(f"silver_{r.parent}")), ENTITIES[r.parent].key
            )
            for r in rules.rules
            if r.kind == "foreign_key"
        }
        bronze = spark.read.table(reader(f"bronze_{entity.name}")).select(
            "*", F.lit(None).cast("string").alias(RESCUED_DATA)
        )
        with lazy_drop():
            return bronze.transform(
                apply_quality_gate(rules, cast("dict[str, DataFrame]", parents))
            )


def outcome(entity: Entity) -> GateOutcome:
    return split_by_outcome(spark.read.table(f"checked_{entity.name}"))


def define_silver(entity: Entity) -> None:
    @dp.materialized_view(name=f"silver_{entity.name}", format=MATERIALIZED_FORMAT)
    def silver() -> DataFrame:
        return (
            outcome(entity)
            .passed.transform(latest_per_key(entity))
            .select(*entity.columns, QUALITY_WARNINGS, SOURCE_FILE)
        )

    @dp.materialized_view(name=f"quarantine_{entity.name}", format=MATERIALIZED_FORMAT)
    def quarantine() -> DataFrame:
        return outcome(entity).quarantined


def define_gold() -> None:
    # Gold reads silver by name: its transforms (joins, select, groupBy-agg, SQL) are all
    # planned lazily by Spark Connect. A withColumn or drop here would need a reader.
    def silver(name: str) -> DataFrame:
        return spark.read.table(f"silver_{name}")

    @dp.materialized_view(name=contract.ORDER_DETAILS, format=MATERIALIZED_FORMAT)
    def order_details() -> DataFrame:
        return gold.order_details(
            silver("line_items"), silver("orders"), silver("customers"), silver("products")
        )

    @dp.materialized_view(name=contract.PRODUCT_SALES_MONTHLY, format=MATERIALIZED_FORMAT)
    def product_sales_monthly() -> DataFrame:
        return gold.product_sales_monthly(spark.read.table(contract.ORDER_DETAILS))

    @dp.materialized_view(name=contract.ORDER_COMPLETION_STATUS, format=MATERIALIZED_FORMAT)
    def order_completion_status() -> DataFrame:
        return gold.order_completion_status(silver("orders"), silver("line_items"))

    @dp.materialized_view(name=contract.MOST_SOLD_LAST_30D, format=MATERIALIZED_FORMAT)
    def most_sold() -> DataFrame:
        as_of = f"TIMESTAMP '{AS_OF.replace('T', ' ').replace('+00:00', '')}'"
        return spark.sql(gold.most_sold_query().replace("CAST(:as_of AS TIMESTAMP)", as_of))


PARENTS = {r.parent for e in ENTITIES.values() for r in load_rules(e, ENTITIES).rules if r.parent}
for _parent in sorted(PARENTS):
    define_reader(f"silver_{_parent}")
for _entity in ENTITIES.values():
    define_bronze(_entity)
    define_reader(f"bronze_{_entity.name}")
    define_checked(_entity)
    define_silver(_entity)
define_gold()
