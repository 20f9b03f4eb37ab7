"""The bottom floor: the names and shapes every layer agrees on.

Table, column and checkpoint names, the values stored in status columns, and the DDL of
every table the pipeline writes. Nothing here reads or writes; every other module may
import it.
"""

from __future__ import annotations

from pyspark.sql.types import StructType

from order_pipeline.common.config import Entity

# -- columns the pipeline adds ---------------------------------------------------------------
CORRUPT_RECORD = "_corrupt_record"  # raw text of a line that did not parse to the contract
RESCUED_DATA = "_rescued_data"  # Auto Loader: fields outside the contract
SOURCE_FILE = "_source_file"
INGESTED_AT = "_ingested_at"
BATCH_ID = "_batch_id"
RUN_ID = "_run_id"
QUALITY_WARNINGS = "_quality_warnings"  # rules of severity warn a kept row failed
MERGED_AT = "_merged_at"
DEFERRED_AT = "_deferred_at"
DEFERRED_ID = "_deferred_id"
PARSE_ISSUES = "_parse_issues"  # what parsing a line found: "<issue>:<field>" (transforms/parse.py)
RAW_LINE = "_raw_line"  # the landed line, kept where parsing found an issue
# A landed record is a tombstone of its key when its marker field (conf/pipeline.yml deletes.marker)
# is true; bronze keeps that in DELETED. DELETED_BY says why a row is a delete: "delete" (landed
# as one) or "cascade:<column>" (its parent of that foreign key was deleted).
DELETED = "_deleted"
DELETED_BY = "_deleted_by"
PARSE_ISSUE_CODES = (
    "timestamp_format", "timestamp_range", "decimal_scale", "duplicate_field", "extra_field",
)  # fmt: skip
# the quality gate's verdict per row: the rules failed, by severity, and all of them
FAILED_QUARANTINE = "_failed_quarantine"
FAILED_DEFER = "_failed_defer"
FAILED_FAIL = "_failed_fail"
REASONS = "_reasons"

BRONZE_METADATA_DDL = (
    f"`{CORRUPT_RECORD}` string, `{RESCUED_DATA}` string, `{PARSE_ISSUES}` array<string>, "
    f"`{RAW_LINE}` string, `{SOURCE_FILE}` string, `{INGESTED_AT}` timestamp, "
    f"`{BATCH_ID}` bigint, `{RUN_ID}` string, `{DELETED}` boolean"
)
SILVER_METADATA_DDL = (
    f"`{QUALITY_WARNINGS}` array<string>, `{SOURCE_FILE}` string, `{MERGED_AT}` timestamp, "
    f"`{RUN_ID}` string"
)

# -- quarantine row status -------------------------------------------------------------------
OPEN, REPLAYED, EXPIRED = "open", "replayed", "expired"
STATUSES = (OPEN, REPLAYED, EXPIRED)


# -- tables and checkpoints ------------------------------------------------------------------
def bronze_table(entity: str) -> str:
    return f"bronze_{entity}"


def silver_table(entity: str) -> str:
    return f"silver_{entity}"


def quarantine_table(entity: str) -> str:
    return f"quarantine_{entity}"


def deferred_table(entity: str) -> str:
    return f"deferred_{entity}"


def tombstone_table(entity: str) -> str:
    """The newest delete per key of silver_<entity>: what stops an older snapshot landing
    after a delete from bringing the key back."""
    return f"tombstones_{entity}"


def bronze_checkpoint(entity: str) -> str:
    return f"bronze_{entity}"


def silver_checkpoint(entity: str) -> str:
    return f"silver_{entity}"


def bronze_task(entity: str) -> str:
    """The job task (resources/jobs.yml) and run record name of an entity's bronze."""
    return f"bronze_{entity}"


def silver_task(entity: str) -> str:
    return f"silver_{entity}"


GOLD_TASK = "gold"

QUALITY_METRICS = "ops_quality_metrics"
TASK_RUNS = "ops_task_runs"
GOLD_WATERMARKS = "ops_gold_watermarks"  # silver versions the gold build has consumed
GX_RESULTS = "ops_gx_results"
ERASURE_AUDIT = "ops_erasure_audit"  # one row per erasure: who, when, which key; no personal data

ORDER_DETAILS = "gold_order_details"
PRODUCT_SALES_MONTHLY = "gold_product_sales_monthly"
ORDER_COMPLETION_STATUS = "gold_order_completion_status"
MOST_SOLD_LAST_30D = "gold_most_sold_product_last_30d"
GOLD_TABLES = (ORDER_DETAILS, PRODUCT_SALES_MONTHLY, ORDER_COMPLETION_STATUS, MOST_SOLD_LAST_30D)

# Silver tables record their row changes so that gold can be rebuilt for what changed only.
CHANGE_DATA_FEED = {"delta.enableChangeDataFeed": "true"}

# The ops tables take many tiny commits (a run record, a batch's metrics rows): Delta writes a
# checkpoint of the log every 10 commits by default, ~1.2 s each here; every 50 halves the time
# of 60 small appends (16.5-18.9 s -> 11 s), and reading the table fresh costs the same (0.4 s).
OPS_TABLE_PROPERTIES = {"delta.checkpointInterval": "50"}

# Columns that hold a whole record as text (or struct): whatever the record says, personal data
# included. Kept out of Delta's file statistics like the personal fields themselves.
RAW_TEXT_COLUMNS = (CORRUPT_RECORD, RESCUED_DATA, RAW_LINE, "record", "raw_record", "rescued_data")
# gold_order_details copies these customer attributes (transforms/gold.py order_details)
ORDER_DETAILS_PERSONAL = ("customer_name", "customer_email", "customer_city")
STATS_COLUMNS = "delta.dataSkippingStatsColumns"


def statistics_properties(
    columns: list[tuple[str, str]], personal: tuple[str, ...]
) -> dict[str, str]:
    """Table properties that keep ``personal`` columns (and raw record text) out of Delta's
    per-file min/max statistics: those are written into the transaction log (JSON commits
    and checkpoints), where DELETE, REORG and VACUUM never reach, so a personal value that
    entered them would outlive an erasure. ``columns`` are (name, Spark SQL type); arrays,
    maps, booleans and binary have no statistics (Delta refuses to list them). Empty for a
    table without personal data."""
    if not personal:
        return {}
    hidden = set(personal) | set(RAW_TEXT_COLUMNS)
    kept = [
        name
        for name, kind in columns
        if name not in hidden and not kind.lower().startswith(("array", "map", "boolean", "binary"))
    ]
    return {STATS_COLUMNS: ",".join(kept)}


def schema_statistics_properties(schema: StructType, personal: tuple[str, ...]) -> dict[str, str]:
    """``statistics_properties`` of a table (or DataFrame) with this schema."""
    return statistics_properties(
        [(f.name, f.dataType.simpleString()) for f in schema.fields], personal
    )


def ddl_columns(ddl: str) -> list[tuple[str, str]]:
    """(name, type) of the top-level columns of a DDL column list (``a string, `b` struct<...>``)."""
    columns, depth, start = [], 0, 0
    for position, char in enumerate(ddl + ","):
        if char in "<(":
            depth += 1
        elif char in ">)":
            depth -= 1
        elif char == "," and depth == 0:
            name, _, kind = ddl[start:position].strip().partition(" ")
            columns.append((name.strip("`").rstrip(":"), kind.strip()))
            start = position + 1
    return columns


# -- table shapes ----------------------------------------------------------------------------
def bronze_ddl(entity: Entity) -> str:
    return f"{entity.ddl()}, {BRONZE_METADATA_DDL}"


def bronze_schema(entity: Entity) -> StructType:
    return StructType.fromDDL(bronze_ddl(entity))


def personal_properties(entity: Entity, ddl: str, extra: dict[str, str] | None = None) -> dict:
    """``extra`` and, for an entity with personal fields, the statistics exclusion of a table
    of that entity with columns ``ddl`` (see ``statistics_properties``)."""
    return {**(extra or {}), **statistics_properties(ddl_columns(ddl), entity.personal)}


def silver_ddl(entity: Entity) -> str:
    return f"{entity.ddl()}, {SILVER_METADATA_DDL}"


def tombstone_ddl(entity: Entity) -> str:
    """Key and sequence of the newest delete per key; never the deleted record's other
    fields (a tombstone outlives the data it removed)."""
    return (
        f"`{entity.key}` {entity.fields[entity.key]}, "
        f"`{entity.sequence}` {entity.fields[entity.sequence]}, `{DELETED_BY}` string, "
        f"`{SOURCE_FILE}` string, `{MERGED_AT}` timestamp, `{RUN_ID}` string"
    )


def quarantine_ddl(entity: Entity) -> str:
    record = ", ".join(f"`{n}`: {t}" for n, t in entity.fields.items())
    return (
        f"quarantine_id string, reasons array<string>, record struct<{record}>, "
        "raw_record string, rescued_data string, source_file string, batch_id bigint, "
        "run_id string, quarantined_at timestamp, status string, status_changed_at timestamp, "
        "status_run_id string"
    )


def deferred_ddl(entity: Entity) -> str:
    return (
        f"{entity.ddl()}, `{QUALITY_WARNINGS}` array<string>, `{FAILED_DEFER}` array<string>, "
        f"`{PARSE_ISSUES}` array<string>, "
        f"`{SOURCE_FILE}` string, `{BATCH_ID}` bigint, `{RUN_ID}` string, "
        f"`{DEFERRED_AT}` timestamp, `{DEFERRED_ID}` string"
    )


METRICS_DDL = (
    "entity string, run_id string, batch_id bigint, source string, rule string, severity string, "
    "rows_checked bigint, rows_failed bigint, measured_at timestamp"
)
TASK_RUNS_DDL = (
    "task string, entity string, run_id string, started_at timestamp, ended_at timestamp, "
    "seconds double, rows_in bigint, rows_out bigint, status string, error string, details string"
)
GX_RESULTS_DDL = (
    "entity string, run_id string, batch_id bigint, rule string, severity string, "
    "expectation string, success boolean, element_count bigint, unexpected_count bigint, "
    "validated_at timestamp"
)
ERASURE_AUDIT_DDL = (
    "erasure_id string, entity string, key string, requested_by string, reason string, "
    "started_at timestamp, ended_at timestamp, subject_hash string, hash_method string, "
    "hash_salt string, tables string, rows_deleted bigint, rows_masked bigint, "
    "landing_files_rewritten bigint, landing_lines_removed bigint, status string"
)
WATERMARKS_DDL = (
    "source_table string, table_id string, version bigint, run_id string, updated_at timestamp"
)
