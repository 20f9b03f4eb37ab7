"""The order pipeline declared with Spark Declarative Pipelines (``pyspark.pipelines``).

Loaded by ``spark-pipelines run`` (see benchmarks/declarative_pipeline.py, which writes the
spec next to a copy of this folder). The open-source SDP of Spark 4.1 has streaming tables
and materialized views, but neither expectations nor AUTO CDC (both Databricks-only), so:

* bronze_<entity>: a streaming table over the landing folder (file source, contract
  schema, malformed lines kept), incremental through its checkpoint;
* silver_<entity> / quarantine_<entity>: materialized views applying the same rules
  (order_pipeline.quality) and the same latest-per-key; a materialized view is recomputed
  in full on every run in open-source Spark;
* gold_*: materialized views built with the same transforms as src/common/gold.py.

Settings come from the spec's configuration: ``spark.order_pipeline.bench.landing`` and
``spark.order_pipeline.bench.as_of``.
"""

from __future__ import annotations

from pyspark import pipelines as dp
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from order_pipeline.common import gold
from order_pipeline.common.config import Entity, load_entities
from order_pipeline.common.io import CORRUPT_RECORD, RESCUED_DATA, SOURCE_FILE
from order_pipeline.common.upsert import WARNINGS, latest_per_key
from order_pipeline.quality.gate import GateOutcome, apply_quality_gate, split_by_outcome
from order_pipeline.quality.rules import load_rules

spark = SparkSession.active()
LANDING = spark.conf.get("spark.order_pipeline.bench.landing")
AS_OF = spark.conf.get("spark.order_pipeline.bench.as_of")
ENTITIES = load_entities()
FORMAT = "delta"


def define_bronze(entity: Entity) -> None:
    @dp.table(name=f"bronze_{entity.name}", format=FORMAT, comment="landed JSON lines")
    def bronze() -> DataFrame:
        schema = StructType.fromDDL(f"{entity.ddl()}, `{CORRUPT_RECORD}` string")
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


def gate(entity: Entity) -> GateOutcome:
    rules = load_rules(entity, ENTITIES)
    parents = {
        r.parent: spark.read.table(f"silver_{r.parent}").select(ENTITIES[r.parent].key)
        for r in rules.rules
        if r.kind == "foreign_key"
    }
    bronze = spark.read.table(f"bronze_{entity.name}").withColumn(
        RESCUED_DATA, F.lit(None).cast("string")
    )
    return split_by_outcome(bronze.transform(apply_quality_gate(rules, parents)))


def define_silver(entity: Entity) -> None:
    @dp.materialized_view(name=f"silver_{entity.name}", format=FORMAT)
    def silver() -> DataFrame:
        passed = gate(entity).passed
        return passed.transform(latest_per_key(entity)).select(
            *entity.columns, WARNINGS, SOURCE_FILE
        )

    @dp.materialized_view(name=f"quarantine_{entity.name}", format=FORMAT)
    def quarantine() -> DataFrame:
        return gate(entity).quarantined


def define_gold() -> None:
    def silver(name: str) -> DataFrame:
        return spark.read.table(f"silver_{name}")

    @dp.materialized_view(name=gold.ORDER_DETAILS, format=FORMAT)
    def order_details() -> DataFrame:
        return gold.order_details(
            silver("line_items"), silver("orders"), silver("customers"), silver("products")
        )

    @dp.materialized_view(name=gold.PRODUCT_SALES_MONTHLY, format=FORMAT)
    def product_sales_monthly() -> DataFrame:
        return gold.product_sales_monthly(spark.read.table(gold.ORDER_DETAILS))

    @dp.materialized_view(name=gold.ORDER_COMPLETION_STATUS, format=FORMAT)
    def order_completion_status() -> DataFrame:
        return gold.order_completion_status(silver("orders"), silver("line_items"))

    @dp.materialized_view(name=gold.MOST_SOLD_LAST_30D, format=FORMAT)
    def most_sold() -> DataFrame:
        as_of = f"TIMESTAMP '{AS_OF.replace('T', ' ').replace('+00:00', '')}'"
        return spark.sql(gold.most_sold_query().replace("CAST(:as_of AS TIMESTAMP)", as_of))


for _entity in ENTITIES.values():
    define_bronze(_entity)
    define_silver(_entity)
define_gold()
