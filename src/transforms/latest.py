"""Latest-snapshot-per-key semantics: which snapshot of a key silver keeps.

Order of snapshots: the sequence column, then every other contract column, then the
source file, all compared as one struct (nulls lowest). Two different snapshots never tie,
so the winner is the same whatever the file order or batch split.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from order_pipeline.common.config import Entity
from order_pipeline.common.contract import MERGED_AT, QUALITY_WARNINGS, RUN_ID, SOURCE_FILE


def ordering_columns(entity: Entity) -> list[str]:
    rest = [c for c in entity.columns if c not in (entity.key, entity.sequence)]
    return [entity.sequence, *rest, SOURCE_FILE]


def latest_per_key(entity: Entity) -> Callable[[DataFrame], DataFrame]:
    """One row per key: the greatest snapshot under ``ordering_columns``."""

    def transform(df: DataFrame) -> DataFrame:
        order = ordering_columns(entity)
        winner = F.max(F.struct(*order, QUALITY_WARNINGS)).alias("winner")
        return (
            df.groupBy(entity.key)
            .agg(winner)
            .select(entity.key, *[f"winner.{c}" for c in [*order, QUALITY_WARNINGS]])
        )

    return transform


def newer_condition(entity: Entity, source: str = "s", target: str = "t") -> str:
    order = ordering_columns(entity)
    left = ", ".join(f"{source}.`{c}`" for c in order)
    right = ", ".join(f"{target}.`{c}`" for c in order)
    return f"struct({left}) > struct({right})"


def latest_rows(entity: Entity, run_id: str) -> Callable[[DataFrame], DataFrame]:
    """Silver rows as ``merge_latest`` would insert them into an empty table: appending
    these to an EMPTY silver table is the same write without a join against a target
    that has nothing to match (the first load of a table is most of a cold run)."""

    def transform(updates: DataFrame) -> DataFrame:
        latest = updates.transform(latest_per_key(entity)).alias("s")
        values = silver_values(entity, run_id)
        return latest.select(*[value.alias(name) for name, value in values.items()])

    return transform


def silver_values(entity: Entity, run_id: str) -> dict[str, Column]:
    """Silver's columns, in table order, from the aliased latest snapshots ``s``."""
    values = {c: F.col(f"s.`{c}`") for c in [*entity.columns, QUALITY_WARNINGS, SOURCE_FILE]}
    values[MERGED_AT] = F.current_timestamp()
    values[RUN_ID] = F.lit(run_id)
    return values
