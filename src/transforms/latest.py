"""Latest-snapshot-per-key semantics: which snapshot of a key silver keeps.

Order of snapshots: the sequence column, then whether it is a delete (a delete wins a tie on
the sequence), then every other contract column, then the source file, all compared as one
struct (nulls lowest). Two different snapshots never tie, so the winner is the same whatever
the file order or batch split. A key whose winner is a delete has no silver row; its
tombstone (``tombstone_table``) holds the delete's sequence, which only a strictly newer
snapshot beats.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from order_pipeline.common.config import Entity
from order_pipeline.common.contract import (
    DELETED,
    DELETED_BY,
    MERGED_AT,
    QUALITY_WARNINGS,
    RUN_ID,
    SOURCE_FILE,
)


def ordering_columns(entity: Entity) -> list[str]:
    rest = [c for c in entity.columns if c not in (entity.key, entity.sequence)]
    return [entity.sequence, *rest, SOURCE_FILE]


def with_deletes(df: DataFrame) -> DataFrame:
    """``df`` with ``DELETED`` (false where the rows carry none) and ``DELETED_BY``."""
    if DELETED not in df.columns:
        df = df.withColumn(DELETED, F.lit(False))
    df = df.withColumn(DELETED, F.coalesce(F.col(DELETED), F.lit(False)))
    if DELETED_BY not in df.columns:
        df = df.withColumn(DELETED_BY, F.when(F.col(DELETED), F.lit("delete")))
    return df


def latest_per_key(entity: Entity) -> Callable[[DataFrame], DataFrame]:
    """One row per key: the greatest snapshot under ``ordering_columns``, a delete winning
    a tie on the sequence; ``DELETED`` says whether the winner is a delete."""

    def transform(df: DataFrame) -> DataFrame:
        sequence, *rest = ordering_columns(entity)
        order = [sequence, DELETED, *rest]
        carried = [QUALITY_WARNINGS, DELETED_BY]
        winner = F.max(F.struct(*order, *carried)).alias("winner")
        return (
            with_deletes(df)
            .groupBy(entity.key)
            .agg(winner)
            .select(entity.key, *[f"winner.{c}" for c in [*order, *carried]])
        )

    return transform


def newer_condition(entity: Entity, source: str = "s", target: str = "t") -> str:
    """The snapshot ``source`` is newer than the silver row ``target`` (never a delete)."""
    sequence, *rest = ordering_columns(entity)
    left = ", ".join(f"{source}.`{c}`" for c in [sequence, DELETED, *rest])
    right = ", ".join([f"{target}.`{sequence}`", "false", *(f"{target}.`{c}`" for c in rest)])
    return f"struct({left}) > struct({right})"


def not_behind_tombstones(
    entity: Entity, tombstones: DataFrame
) -> Callable[[DataFrame], DataFrame]:
    """Latest snapshots per key without those a tombstone already beats: a tombstone is a
    delete at its sequence, so only a strictly newer sequence gets past it."""

    def transform(latest: DataFrame) -> DataFrame:
        key, sequence = entity.key, entity.sequence
        dead = tombstones.select(
            F.col(key).alias("__tomb_key"), F.col(sequence).alias("__tomb_seq")
        )
        beaten = (F.col("__tomb_key") == F.col(key)) & (F.col("__tomb_seq") >= F.col(sequence))
        return latest.join(dead, beaten, "left_anti")

    return transform


def tombstone_rows(entity: Entity, run_id: str) -> Callable[[DataFrame], DataFrame]:
    """Tombstones of the deletes among latest snapshots: key, sequence, why, where from."""

    def transform(latest: DataFrame) -> DataFrame:
        return latest.where(F.col(DELETED)).select(
            entity.key,
            entity.sequence,
            F.coalesce(F.col(DELETED_BY), F.lit("delete")).alias(DELETED_BY),
            SOURCE_FILE,
            F.current_timestamp().alias(MERGED_AT),
            F.lit(run_id).alias(RUN_ID),
        )

    return transform


def latest_rows(entity: Entity, run_id: str) -> Callable[[DataFrame], DataFrame]:
    """Silver rows as ``merge_latest`` would insert them into an empty table: appending
    these to an EMPTY silver table is the same write without a join against a target
    that has nothing to match (the first load of a table is most of a cold run)."""

    def transform(updates: DataFrame) -> DataFrame:
        latest = updates.transform(latest_per_key(entity)).where(~F.col(DELETED)).alias("s")
        values = silver_values(entity, run_id)
        return latest.select(*[value.alias(name) for name, value in values.items()])

    return transform


def silver_values(entity: Entity, run_id: str) -> dict[str, Column]:
    """Silver's columns, in table order, from the aliased latest snapshots ``s``."""
    values = {c: F.col(f"s.`{c}`") for c in [*entity.columns, QUALITY_WARNINGS, SOURCE_FILE]}
    values[MERGED_AT] = F.current_timestamp()
    values[RUN_ID] = F.lit(run_id)
    return values


TOMB_KEY, TOMB_SEQ = "__tomb_key", "__tomb_seq"  # columns of ``parent_tombstones`` frames


def cascade_parent_deletes(
    entity: Entity, parent_tombstones: dict[str, DataFrame]
) -> Callable[[DataFrame], DataFrame]:
    """Rows whose parent of a ``cascade`` relation was deleted at or after the row's sequence
    become deletes of their key at the parent's delete sequence (``DELETED_BY`` says
    ``cascade:<column>``). ``parent_tombstones``: parent entity -> (TOMB_KEY, TOMB_SEQ)."""

    def transform(df: DataFrame) -> DataFrame:
        df = with_deletes(df)
        sequence = entity.sequence
        for column, rule in entity.on_parent_delete.items():
            if rule != "cascade":
                continue
            key, at = f"__cascade_key_{column}", f"__cascade_at_{column}"
            tombs = parent_tombstones[entity.parents[column]].select(
                F.col(TOMB_KEY).alias(key), F.col(TOMB_SEQ).alias(at)
            )
            hit_on = (F.col(column) == F.col(key)) & (F.col(at) >= F.col(sequence))
            df = df.join(tombs, hit_on, "left").drop(key)
            hit = F.col(at).isNotNull()
            df = df.withColumns(
                {
                    DELETED_BY: F.when(
                        hit & (~F.col(DELETED) | (F.col(at) > F.col(sequence))),
                        F.lit(f"cascade:{column}"),
                    ).otherwise(F.col(DELETED_BY)),
                    sequence: F.when(hit, F.greatest(F.col(at), F.col(sequence))).otherwise(
                        F.col(sequence)
                    ),
                    DELETED: F.col(DELETED) | hit,
                }
            ).drop(at)
        return df

    return transform
