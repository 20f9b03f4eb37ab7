"""Latest-snapshot-per-key semantics and the MERGE that keeps silver current.

Order of snapshots: the sequence column, then every other contract column, then the
source file, all compared as one struct (nulls lowest). Two different snapshots never tie,
so the winner is the same whatever the file order or batch split.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from order_pipeline.common.config import Entity
from order_pipeline.common.io import (
    QUALITY_WARNINGS,
    RUN_ID,
    SOURCE_FILE,
    Lakehouse,
    Txn,
    WhenMatched,
    WhenNotMatched,
    quote,
    sql_literal,
)

WARNINGS = QUALITY_WARNINGS
MERGED_AT = "_merged_at"
SILVER_METADATA_DDL = f"`{WARNINGS}` array<string>, `{SOURCE_FILE}` string, `{MERGED_AT}` timestamp, `{RUN_ID}` string"


def silver_ddl(entity: Entity) -> str:
    return f"{entity.ddl()}, {SILVER_METADATA_DDL}"


def ordering_columns(entity: Entity) -> list[str]:
    rest = [c for c in entity.columns if c not in (entity.key, entity.sequence)]
    return [entity.sequence, *rest, SOURCE_FILE]


def latest_per_key(entity: Entity) -> Callable[[DataFrame], DataFrame]:
    """One row per key: the greatest snapshot under ``ordering_columns``."""

    def transform(df: DataFrame) -> DataFrame:
        order = ordering_columns(entity)
        winner = F.max(F.struct(*order, WARNINGS)).alias("winner")
        return (
            df.groupBy(entity.key)
            .agg(winner)
            .select(entity.key, *[f"winner.{c}" for c in [*order, WARNINGS]])
        )

    return transform


def newer_condition(entity: Entity, source: str = "s", target: str = "t") -> str:
    order = ordering_columns(entity)
    left = ", ".join(f"{source}.`{c}`" for c in order)
    right = ", ".join(f"{target}.`{c}`" for c in order)
    return f"struct({left}) > struct({right})"


def merge_latest(
    lake: Lakehouse,
    table: str,
    updates: DataFrame,
    entity: Entity,
    run_id: str,
    txn: Txn | None = None,
) -> None:
    """MERGE the latest snapshot per key into ``table``; a row only replaces an older one.

    The match condition also bounds the target key by the batch's smallest and largest key:
    it cannot change what matches, and Delta skips every target file whose key range lies
    outside (silver is written in key ranges, see ``Silver.write_batch``), so a batch of
    recent keys does not read the whole table's history.

    Replaying this MERGE changes nothing, with or without ``txn``: a snapshot replaces a row
    only when it is strictly newer under ``ordering_columns``, so the second time every key
    matches an equal row. That is what keeps silver exactly once where the platform refuses
    the idempotent-write session settings (serverless); where it allows them, ``txn`` makes
    the replayed MERGE a skipped commit as well.
    """
    lake.merge(
        updates.transform(latest_rows(entity, run_id)),
        table,
        key_match(updates, entity.key),
        [WhenMatched(condition=newer_condition(entity)), WhenNotMatched()],
        txn=txn,
        idempotent_by_content=True,
    )


def key_match(updates: DataFrame, key: str) -> str:
    """``t.key = s.key``, narrowed to the updates' key range (a target-only predicate that
    Delta's MERGE uses to skip files by their key statistics)."""
    low, high = updates.agg(F.min(key), F.max(key)).first()
    same = f"t.{quote(key)} = s.{quote(key)}"
    if low is None:
        return same
    return f"{same} AND t.{quote(key)} BETWEEN {sql_literal(low)} AND {sql_literal(high)}"


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
    values = {c: F.col(f"s.`{c}`") for c in [*entity.columns, WARNINGS, SOURCE_FILE]}
    values[MERGED_AT] = F.current_timestamp()
    values[RUN_ID] = F.lit(run_id)
    return values
