"""Quarantine and deferred rows: their shape, and the transforms that build them.

A quarantine row keeps the record as parsed, the raw text where it did not parse, every
rule it failed, where it came from and its status (open, replayed, expired). A deferred
row is a valid row whose parent has not arrived yet; it waits in ``deferred_<entity>``.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from order_pipeline.common.config import Entity
from order_pipeline.common.contract import (
    BATCH_ID,
    CORRUPT_RECORD,
    DEFERRED_AT,
    DEFERRED_ID,
    FAILED_DEFER,
    OPEN,
    PARSE_ISSUES,
    QUALITY_WARNINGS,
    RAW_LINE,
    REASONS,
    RESCUED_DATA,
    RUN_ID,
    SOURCE_FILE,
)


def record_fingerprint(entity: Entity) -> Column:
    """Identifies a landed record: same file and same content give the same id."""
    content = F.coalesce(F.col(CORRUPT_RECORD), F.to_json(F.struct(*entity.columns)))
    return F.sha2(F.concat_ws("|", F.coalesce(F.col(SOURCE_FILE), F.lit("")), content), 256)


def to_quarantine_rows(
    entity: Entity, batch_id: int | Column, run_id: str, status: str = OPEN
) -> Callable[[DataFrame], DataFrame]:
    def transform(df: DataFrame) -> DataFrame:
        now = F.current_timestamp()
        return df.select(
            F.sha2(
                F.concat_ws("|", record_fingerprint(entity), F.array_join(REASONS, ",")), 256
            ).alias("quarantine_id"),
            F.col(REASONS).alias("reasons"),
            F.struct(*entity.columns).alias("record"),
            # the line as it landed, where it did not parse or parsing found an issue
            F.coalesce(F.col(CORRUPT_RECORD), F.col(RAW_LINE)).alias("raw_record"),
            F.col(RESCUED_DATA).alias("rescued_data"),
            F.col(SOURCE_FILE).alias("source_file"),
            (F.lit(batch_id) if not isinstance(batch_id, Column) else batch_id)
            .cast("bigint")
            .alias("batch_id"),
            F.lit(run_id).alias("run_id"),
            now.alias("quarantined_at"),
            F.lit(status).alias("status"),
            now.alias("status_changed_at"),
            F.lit(run_id).alias("status_run_id"),
        )

    return transform


def to_deferred_rows(
    entity: Entity, batch_id: int, run_id: str
) -> Callable[[DataFrame], DataFrame]:
    def transform(df: DataFrame) -> DataFrame:
        return df.select(
            *entity.columns,
            QUALITY_WARNINGS,
            FAILED_DEFER,
            PARSE_ISSUES,
            SOURCE_FILE,
            F.lit(batch_id).cast("bigint").alias(BATCH_ID),
            F.lit(run_id).alias(RUN_ID),
            F.current_timestamp().alias(DEFERRED_AT),
            record_fingerprint(entity).alias(DEFERRED_ID),
        )

    return transform


def deferred_as_candidates(entity: Entity) -> Callable[[DataFrame], DataFrame]:
    """Deferred rows shaped like bronze rows again, to go through the gate once more."""

    def transform(df: DataFrame) -> DataFrame:
        return df.select(
            *entity.columns,
            F.lit(None).cast("string").alias(CORRUPT_RECORD),
            F.lit(None).cast("string").alias(RESCUED_DATA),
            PARSE_ISSUES,
            F.lit(None).cast("string").alias(RAW_LINE),
            SOURCE_FILE,
            BATCH_ID,
            DEFERRED_AT,
            DEFERRED_ID,
        )

    return transform


def raw_text_is_faithful() -> Column:
    """Whether a quarantine row's raw text can be parsed again as it landed: no raw text (the
    record parsed), or raw text that is valid UTF-8. The raw text keeps the landed bytes
    exactly; a line that is not valid UTF-8 would be parsed from a lossy decoding (invalid
    bytes become U+FFFD), so it is never re-parsed."""
    return F.col("raw_record").isNull() | F.is_valid_utf8(F.col("raw_record"))


def quarantined_as_candidates(
    entity: Entity, parse: Callable[[DataFrame], DataFrame]
) -> Callable[[DataFrame], DataFrame]:
    """Quarantine rows shaped like bronze rows again. Raw text is parsed anew by ``parse``
    (the contract's parser, reading ``raw_record``), so a record that failed to parse, or
    whose parsing found an issue, gets a second chance under the current contract; raw
    text that is not valid UTF-8 stays unparsed: it fails malformed_record again."""

    def transform(df: DataFrame) -> DataFrame:
        reparsed = df.transform(parse)
        parsed_before = F.col("raw_record").isNull()
        unfaithful = ~raw_text_is_faithful()
        columns = [
            F.when(parsed_before, F.col(f"record.`{c}`"))
            .when(unfaithful, F.lit(None).cast(entity.fields[c]))
            .otherwise(F.col(c))
            .alias(c)
            for c in entity.columns
        ]
        no_issues = F.array().cast("array<string>")
        return reparsed.select(
            *columns,
            F.when(parsed_before, F.lit(None).cast("string"))
            .when(unfaithful, F.col("raw_record"))
            .otherwise(F.col(CORRUPT_RECORD))
            .alias(CORRUPT_RECORD),
            F.when(parsed_before, F.col("rescued_data"))
            .when(unfaithful, F.lit(None).cast("string"))
            .otherwise(F.col(RESCUED_DATA))
            .alias(RESCUED_DATA),
            F.when(parsed_before | unfaithful, no_issues)
            .otherwise(F.col(PARSE_ISSUES))
            .alias(PARSE_ISSUES),
            F.when(parsed_before | unfaithful, F.lit(None).cast("string"))
            .otherwise(F.col(RAW_LINE))
            .alias(RAW_LINE),
            F.col("source_file").alias(SOURCE_FILE),
            "quarantine_id",
        )

    return transform
