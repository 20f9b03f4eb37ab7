"""A naive Spark baseline, as many teams write it: every run batch-reads ALL landed JSON,
applies the same rules, keeps the latest snapshot per key and overwrites the silver,
tombstone, quarantine and gold Delta tables. No streams, no checkpoints, no MERGE: the cost
of a run grows with history, not with the new data.

It reuses the project's session factory, line parser (transforms/parse.py: malformed lines,
parse issues, the delete marker), rules, gate (jobs/silver.py ``check``: a parent's delete
cascades to, or quarantines, the rows of its relations before the rules run), latest-per-key
and gold transforms, so the only difference from the pipeline is the recompute-everything
shape. Since every run sees every landed line, a key's newest snapshot decides it: a delete
removes it, and its tombstone (the key's newest delete, which the children's gate reads)
needs no retention of its own.

Simplifications: foreign keys are "parent present" in the rebuilt silver: a row whose parent
is missing is in neither silver nor quarantine until a run finds the parent (no deferral,
no expiry). Tombstones are never purged (conf/pipeline.yml deletes.tombstone_retention is
not applied: a snapshot older than a delete stays behind it for ever). Only
``<entity>/*.json`` files are read (the pipeline also takes sub-folders and ``*.json.gz``).

    python -m benchmarks.naive_spark --landing L --data-root DIR --as-of TS --result R.json
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from benchmarks.common import (
    ENTITY_ORDER,
    ChildResult,
    peer_main,
    timed,
)
from order_pipeline.common import contract
from order_pipeline.common.config import Entity, load_entities, load_profile
from order_pipeline.common.contract import (
    DELETED,
    QUALITY_WARNINGS,
    SOURCE_FILE,
    quarantine_table,
    silver_table,
    tombstone_table,
)
from order_pipeline.common.io import Lakehouse
from order_pipeline.common.spark import get_spark
from order_pipeline.jobs.gold import write_gold
from order_pipeline.jobs.silver import check
from order_pipeline.quality.gate import raise_on_failing, split_by_outcome
from order_pipeline.quality.rules import load_rules
from order_pipeline.transforms.latest import latest_per_key, tombstone_rows
from order_pipeline.transforms.parse import parse_lines

SCHEMA = "naive"
RUN_ID = "naive"


def read_landing(spark: SparkSession, landing: Path, entity: Entity) -> DataFrame:
    """All landed lines of one entity, parsed by the data contract as the pipeline's bronze
    parses them; lines that do not parse are kept with their raw text."""
    return (
        spark.read.option("pathGlobFilter", "*.json")
        .text(str(landing / entity.name))
        .select("value", F.col("_metadata.file_path").alias(SOURCE_FILE))
        .where(F.trim("value") != "")  # blank lines are no records (io.landing_stream)
        .transform(parse_lines(entity))
        .drop("value")
    )


def rebuild_silver(
    lake: Lakehouse, landing: Path, entities: dict[str, Entity], name: str
) -> dict[str, int]:
    """Recompute silver_<name> and tombstones_<name> from every landed line; parents (and
    their deletes) are read from the tables this run has just rebuilt, so a late parent is
    found without deferral."""
    entity = entities[name]
    rules = load_rules(entity, entities)
    checked = check(lake, rules, entities, read_landing(lake.spark, landing, entity)).persist()
    try:
        outcome = split_by_outcome(checked)
        raise_on_failing(rules, outcome.failing, entity.columns)
        latest = outcome.passed.transform(latest_per_key(entity))
        lake.overwrite(
            latest.where(~F.col(DELETED)).select(*entity.columns, QUALITY_WARNINGS, SOURCE_FILE),
            silver_table(name),
        )
        deletes = outcome.passed.where(F.col(DELETED)).transform(latest_per_key(entity))
        lake.overwrite(deletes.transform(tombstone_rows(entity, RUN_ID)), tombstone_table(name))
        lake.overwrite(outcome.quarantined, quarantine_table(name))
        return {"read": checked.count(), "silver": lake.read(silver_table(name)).count()}
    finally:
        checked.unpersist()


def rebuild_gold(lake: Lakehouse, as_of: datetime) -> None:
    write_gold(lake, as_of)  # the same gold build as the pipeline's task


def table_counts(lake: Lakehouse) -> dict[str, int]:
    tables = [
        table(n)
        for table in (silver_table, quarantine_table, tombstone_table)
        for n in ENTITY_ORDER
    ]
    return {t: lake.read(t).count() for t in [*tables, *contract.GOLD_TABLES]}


def run(landing: Path, data_root: Path, as_of: datetime, result: ChildResult) -> None:
    profile = load_profile("local", data_root, {"schema": SCHEMA, "landing_root": str(landing)})
    with timed(result.stages, "session"):
        spark = get_spark(profile, app_name="benchmark-naive-spark")
        lake = Lakehouse(spark, profile)
    entities = load_entities()
    for name in ENTITY_ORDER:
        with timed(result.stages, f"silver_{name}"):
            counts = rebuild_silver(lake, landing, entities, name)
        result.rows_in += counts["read"]
        result.details[name] = counts
    with timed(result.stages, "gold"):
        rebuild_gold(lake, as_of)
    result.counts = table_counts(lake)
    units, revenue = (
        lake.read(contract.PRODUCT_SALES_MONTHLY).agg(F.sum("units"), F.sum("revenue")).first()
    )
    result.details["checks"] = {
        "gold_units": float(units or 0),
        "gold_revenue": float(revenue or 0),
    }


def main(argv: list[str] | None = None) -> int:
    return peer_main(
        __doc__ or "",
        "--data-root",
        lambda landing, root, as_of, result: run(
            landing.resolve(), root, datetime.fromisoformat(as_of), result
        ),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
