"""Erasure: remove one person's personal data from everything the pipeline keeps.

``order-pipeline erase customer ID`` (and the ``order-pipeline-erase`` task of the erasure
job on Databricks). For an entity with personal fields (conf/pipeline.yml ``personal``):

1. Refuse unless every silver stream has read its bronze table to the end (the local command
   first runs the job graph, as ``order-pipeline run``): a stream that had not yet read the
   person's bronze rows would later read files this erasure removes, and fail, or, before
   the purge, bring the rows back.
2. Landing files (and the landing archive): rewritten without the person's lines, every
   other byte as it was; the bronze stream's links and index follow (common/landing.py).
3. bronze_<entity>, quarantine_<entity>, deferred_<entity>: the person's rows deleted, raw
   text included (lines that did not parse are attributed by transforms/erasure.py).
   silver_<entity>: the key's row kept, its personal fields set to NULL: it still stands for
   the customer of the orders (gold figures, later orders pass the foreign-key check), and
   its ``updated_at`` still turns away an older snapshot that arrives later.
   gold_order_details: the customer's name, e-mail and city emptied as gold makes them for
   such a row.
4. Every one of those tables purged: deletion vectors rewritten, VACUUM without retention
   (old versions and the change data feed's files go), so no Delta file holds the data. The
   tables keep personal fields out of the per-file statistics of their Delta log
   (contract.statistics_properties); a table made before that is given the property here.
5. An ``ops_erasure_audit`` row: who, when, which key, the reason, an HMAC of the erased
   values instead of them, every table's version before and after, rows deleted and masked,
   landing files rewritten.

Later runs: the silver streams skip the erasure's commits in bronze (io.read_stream), gold
rebuilds from silver (the change feed of the erased versions is gone), replay and deferred
promotion find none of the person's rows to bring back.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from order_pipeline.common import contract
from order_pipeline.common.config import Entity
from order_pipeline.common.contract import (
    CORRUPT_RECORD,
    ERASURE_AUDIT,
    ERASURE_AUDIT_DDL,
    OPS_TABLE_PROPERTIES,
    RAW_LINE,
    RESCUED_DATA,
    bronze_checkpoint,
    bronze_table,
    deferred_table,
    silver_checkpoint,
    silver_table,
    silver_task,
)
from order_pipeline.common.inputs import Consumed, Versions, checkpoint_due
from order_pipeline.common.io import Lakehouse, quote, sql_literal
from order_pipeline.common.landing import (
    GZIP_SUFFIX,
    JSON_SUFFIX,
    follow_rewrite,
    rewrite_without,
)
from order_pipeline.jobs.task import (
    TaskContext,
    TaskResult,
    context_from_args,
    run_entry_point,
    task_parser,
)
from order_pipeline.transforms.erasure import key_pattern, line_belongs, usable_needles

# The HMAC key of the audit row's subject_hash. Without it a random salt is drawn per
# erasure and stored with the hash: it then proves a guess of the exact values, as a
# keyed hash would, to anyone who can read the audit table.
KEY_VARIABLE = "ORDER_PIPELINE_ERASURE_KEY"
# gold_order_details as order_details() makes it for a customer whose personal fields are NULL
ORDER_DETAILS_MASKED = {"customer_name": "''", "customer_email": "NULL", "customer_city": "NULL"}
GOLD_CUSTOMERS = "customers"  # the entity whose attributes gold_order_details copies


class ErasureRefused(RuntimeError):
    """The erasure cannot be done safely now (or not for this entity); nothing was changed."""


@dataclass(frozen=True)
class Erasure:
    entity: str
    key: str
    reason: str = ""
    requested_by: str = ""


@dataclass
class TableErasure:
    table: str
    version_before: int | None
    version_after: int | None = None
    rows_deleted: int = 0
    rows_masked: int = 0
    statistics_excluded_now: bool = False  # made before personal fields left the statistics
    properties: dict[str, str] = field(default_factory=dict)  # set with the purge


@dataclass
class LandingErasure:
    files_rewritten: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    lines_removed: int = 0


def task_name(entity: str) -> str:
    return f"erase_{entity}"


def resolve_entity(name: str, entities: dict[str, Entity]) -> Entity:
    """``customer`` or ``customers``: an entity with personal fields."""
    entity = entities.get(name) or entities.get(f"{name}s")
    if entity is None:
        raise ErasureRefused(
            f"{name!r} is not an entity of conf/pipeline.yml ({', '.join(entities)})"
        )
    if not entity.personal:
        raise ErasureRefused(
            f"{entity.name} has no personal fields (conf/pipeline.yml `personal`): nothing to erase"
        )
    return entity


# -- preconditions -----------------------------------------------------------------------------
def streams_behind(lake: Lakehouse, ctx: TaskContext) -> list[str]:
    """Silver streams that have not read their bronze table to its current version (or have
    a batch in flight), as sentences; empty when every stream is caught up."""
    versions = Versions.of(ctx.profile, lake.spark)
    behind = []
    for name in ctx.entities:
        current = versions(bronze_table(name))
        if current is None:
            continue
        consumed = Consumed.load(ctx.profile, silver_task(name))
        checkpoint = Path(ctx.profile.checkpoint_root) / silver_checkpoint(name)
        if consumed is None or consumed.inputs.get("bronze") != current:
            read = "nothing" if consumed is None else f"version {consumed.inputs.get('bronze')}"
            behind.append(
                f"{silver_task(name)} has read {read} of {bronze_table(name)} (now {current})"
            )
        elif due := checkpoint_due(checkpoint, ran_before=True):
            behind.append(f"{silver_task(name)}: {due}")
    return behind


# -- finding the person ------------------------------------------------------------------------
def raw_text_belongs(columns: list[str], key_field: str, key: str, needles: list[str]) -> Column:
    """transforms/erasure.line_belongs for raw text columns, in Spark: the key read from the
    text decides; a text with no readable key belongs when it holds a needle."""
    pattern = key_pattern(key_field)
    verdicts = []
    for name in columns:
        text = F.col(name)
        found = F.regexp_extract(text, pattern, 1)
        holds = F.lit(False)
        for needle in needles:
            holds = holds | text.contains(needle)
        verdicts.append(
            F.coalesce(F.when(found != "", found == key).otherwise(holds), F.lit(False))
        )
    belongs = F.lit(False)
    for verdict in verdicts:
        belongs = belongs | verdict
    return belongs


def person_values(lake: Lakehouse, entity: Entity, key: str) -> list[str]:
    """Every value of a personal field the tables hold for ``key``: what attributes a line
    that did not parse to the person (as needles, never written anywhere)."""
    frames: list[DataFrame] = []
    is_key = F.col(entity.key) == key
    for table in (
        bronze_table(entity.name),
        silver_table(entity.name),
        deferred_table(entity.name),
    ):
        if lake.exists(table):
            frames.append(lake.read(table).where(is_key).select(*entity.personal))
    quarantine = lake.quarantine(entity.name)
    if lake.exists(quarantine):
        frames.append(
            lake.read(quarantine)
            .where(F.col(f"record.{entity.key}") == key)
            .select(*(F.col(f"record.{f}").alias(f) for f in entity.personal))
        )
    values: set[str] = set()
    for frame in frames:
        for row in frame.collect():
            values.update(str(v) for v in row if v is not None)
    return usable_needles(values)


# -- landing -------------------------------------------------------------------------------------
def landing_folders(ctx: TaskContext, entity: Entity) -> list[Path]:
    folders = [Path(ctx.profile.landing_root) / entity.name]
    archive = ctx.profile.landing.archive_root
    if archive:
        folders.append(Path(archive) / entity.name)
    return folders


def erase_landing(ctx: TaskContext, entity: Entity, key: str, needles: list[str]) -> LandingErasure:
    result = LandingErasure()
    staging = Path(ctx.profile.checkpoint_root) / bronze_checkpoint(entity.name) / "_landing"
    landing = Path(ctx.profile.landing_root) / entity.name

    def drop(line: bytes) -> bool:
        return line_belongs(line, entity.key, key, needles)

    for folder in landing_folders(ctx, entity):
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            lower = path.name.lower()
            if not (lower.endswith(JSON_SUFFIX) or lower.endswith(GZIP_SUFFIX)):
                continue
            if path.name.startswith(".") and path.name.endswith(".erasing"):
                path.unlink()  # left by an erasure that stopped half-way
                continue
            rewritten = rewrite_without(path, drop)
            if rewritten is None:
                continue
            result.lines_removed += rewritten.lines_removed
            (result.files_removed if rewritten.removed_whole else result.files_rewritten).append(
                str(path)
            )
            if folder == landing and ctx.profile.is_local:
                follow_rewrite(landing, staging, rewritten)
    return result


# -- tables ------------------------------------------------------------------------------------
def missing_statistics_exclusion(
    lake: Lakehouse, table: str, personal: tuple[str, ...]
) -> dict[str, str]:
    """The statistics exclusion a table made before this version lacks (its older log
    entries may still carry personal values in their statistics: README), else nothing."""
    wanted = contract.schema_statistics_properties(lake.read(table).schema, personal)
    current = lake.properties(table).get(contract.STATS_COLUMNS)
    return {} if not wanted or current == wanted[contract.STATS_COLUMNS] else wanted


# commits that add files and never remove one (the table's older versions are all in its
# current files, so VACUUM has nothing to take)
APPEND_ONLY = {"CREATE TABLE", "STREAMING UPDATE", "SET TBLPROPERTIES", "UNSET TBLPROPERTIES"}


def removed_files_ever(lake: Lakehouse, table: str) -> bool:
    """Whether any commit of the table removed or rewrote a file (which an older version,
    and VACUUM, may still see), or wrote deletion vectors."""
    for commit in lake.history(table):
        metrics = commit["operationMetrics"] or {}
        if commit["operation"] in APPEND_ONLY:
            continue
        if commit["operation"] == "WRITE" and not int(metrics.get("numRemovedFiles") or 0):
            continue
        return True
    return False


def erase_tables(
    lake: Lakehouse, entity: Entity, key: str, needles: list[str], progress: Callable[[str], None]
) -> list[TableErasure]:
    key_literal = f"{quote(entity.key)} = {sql_literal(key)}"
    raw = [CORRUPT_RECORD, RAW_LINE, RESCUED_DATA]
    bronze = bronze_table(entity.name)
    quarantine = lake.quarantine(entity.name)
    deferred = deferred_table(entity.name)
    silver = silver_table(entity.name)
    done: list[TableErasure] = []

    def start(table: str, personal: tuple[str, ...]) -> TableErasure | None:
        if not lake.exists(table):
            return None
        step = TableErasure(table, lake.version(table))
        step.properties = missing_statistics_exclusion(lake, table, personal)
        step.statistics_excluded_now = bool(step.properties)
        done.append(step)
        return step

    def delete(step: TableErasure, rows: DataFrame) -> None:
        step.rows_deleted = rows.count()
        if step.rows_deleted:
            lake.delete_rows(step.table, rows)

    key_column = F.col(entity.key)
    if step := start(quarantine, entity.personal):
        record_key = F.col(f"record.{entity.key}")
        rows = lake.read(quarantine).where(
            (record_key == key)
            | (
                record_key.isNull()
                & raw_text_belongs(["raw_record", "rescued_data"], entity.key, key, needles)
            )
        )
        delete(step, rows)
    if step := start(deferred, entity.personal):
        delete(step, lake.read(deferred).where(key_column == key))
    if step := start(bronze, entity.personal):
        rows = lake.read(bronze).where(
            (key_column == key)
            | (key_column.isNull() & raw_text_belongs(raw, entity.key, key, needles))
        )
        delete(step, rows)
    if entity.name == GOLD_CUSTOMERS and (
        step := start(contract.ORDER_DETAILS, contract.ORDER_DETAILS_PERSONAL)
    ):
        step.rows_masked = lake.update(step.table, ORDER_DETAILS_MASKED, key_literal)
    if step := start(silver, entity.personal):
        step.rows_masked = lake.update(silver, {f: "NULL" for f in entity.personal}, key_literal)
    for step in done:
        started = time.monotonic()
        if not (step.rows_deleted or step.rows_masked or removed_files_ever(lake, step.table)):
            step.version_after = step.version_before
            progress(f"  {step.table}: nothing of the person, no file ever removed: left as it is")
            continue
        lake.purge(step.table, step.properties)  # rewritten files: no personal statistics
        step.version_after = lake.version(step.table)
        progress(
            f"  {step.table}: {step.rows_deleted} rows deleted, {step.rows_masked} masked, "
            f"purged (versions {step.version_before} -> {step.version_after}, "
            f"{time.monotonic() - started:.1f}s)"
        )
    if entity.name == GOLD_CUSTOMERS:
        follow_gold(lake, next((t for t in done if t.table == silver), None), progress)
    return done


def follow_gold(
    lake: Lakehouse, silver: TableErasure | None, progress: Callable[[str], None]
) -> None:
    """Tell gold what the erasure's commits to silver_customers mean. Gold had read silver up
    to the version before them: they changed only the personal fields, which erase emptied in
    gold_order_details as gold would, so its watermark moves past them and the next build stays
    incremental. Otherwise (gold behind) the watermark goes and gold rebuilds in full: the
    change feed of the erased versions is gone."""
    if silver is None or not lake.exists(contract.GOLD_WATERMARKS):
        return
    source = f"source_table = {sql_literal(silver.table)}"
    moved = lake.update(
        contract.GOLD_WATERMARKS,
        {"version": str(silver.version_after)},
        f"{source} AND version = {silver.version_before}",
    )
    if not moved:
        lake.delete_where(contract.GOLD_WATERMARKS, source)
    progress(
        f"  {contract.GOLD_WATERMARKS}: {silver.table} "
        + ("moved past the erasure" if moved else "forgotten: gold rebuilds in full next run")
    )


# -- audit -------------------------------------------------------------------------------------
def subject_hash(values: list[str]) -> tuple[str, str, str | None]:
    """(HMAC-SHA256 of the erased values, how it was keyed, the salt if stored)."""
    message = json.dumps(sorted(values), ensure_ascii=False).encode("utf-8")
    secret = os.environ.get(KEY_VARIABLE)
    if secret:
        return (
            hmac.new(secret.encode(), message, hashlib.sha256).hexdigest(),
            f"hmac-sha256 key ${KEY_VARIABLE}",
            None,
        )
    salt = secrets.token_hex(16)
    return (
        hmac.new(bytes.fromhex(salt), message, hashlib.sha256).hexdigest(),
        "hmac-sha256 random salt",
        salt,
    )


def write_audit(
    lake: Lakehouse,
    erasure: Erasure,
    entity: Entity,
    erasure_id: str,
    started: datetime,
    values: list[str],
    tables: list[TableErasure],
    landing: LandingErasure,
) -> None:
    digest, method, salt = subject_hash(values)
    who = erasure.requested_by or str(lake.spark.sql("SELECT current_user()").first()[0])
    touched = [
        {"table": t.table, "version_before": t.version_before, "version_after": t.version_after,
         "rows_deleted": t.rows_deleted, "rows_masked": t.rows_masked,
         "statistics_excluded_now": t.statistics_excluded_now}
        for t in tables
    ]  # fmt: skip
    row = (
        erasure_id, entity.name, erasure.key, who, erasure.reason, started, datetime.now(UTC),
        digest, method, salt, json.dumps(touched, sort_keys=True),
        sum(t.rows_deleted for t in tables), sum(t.rows_masked for t in tables),
        len(landing.files_rewritten) + len(landing.files_removed), landing.lines_removed, "DONE",
    )  # fmt: skip
    lake.ensure(ERASURE_AUDIT, ERASURE_AUDIT_DDL, properties=OPS_TABLE_PROPERTIES)
    lake.append(lake.spark.createDataFrame([row], ERASURE_AUDIT_DDL), ERASURE_AUDIT)


# -- the task ----------------------------------------------------------------------------------
def run(
    spark: SparkSession, ctx: TaskContext, erasure: Erasure, progress: Callable[[str], None] = print
) -> TaskResult:
    entity = resolve_entity(erasure.entity, ctx.entities)
    if not erasure.key.strip():
        raise ErasureRefused("the key to erase is empty")
    lake = Lakehouse(spark, ctx.profile)
    if behind := streams_behind(lake, ctx):
        raise ErasureRefused(
            "streams have not read everything yet, and would read the person's rows after the "
            "erasure removed their files: " + "; ".join(behind) + ". Run the pipeline first "
            "(`order-pipeline erase` does; on Databricks the erasure job runs the pipeline job "
            "before it), then erase again. Nothing was changed."
        )
    started = datetime.now(UTC)
    erasure_id = f"erasure-{started:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
    progress(f"erasing {entity.name} {erasure.key} ({erasure_id})")
    values = person_values(lake, entity, erasure.key)
    landing = erase_landing(ctx, entity, erasure.key, values)
    progress(
        f"  landing: {landing.lines_removed} lines removed from "
        f"{len(landing.files_rewritten)} files rewritten, {len(landing.files_removed)} files removed"
    )
    tables = erase_tables(lake, entity, erasure.key, values, progress)
    write_audit(lake, erasure, entity, erasure_id, started, values, tables, landing)
    progress(f"  {ERASURE_AUDIT}: {erasure_id} recorded")
    rows = sum(t.rows_deleted + t.rows_masked for t in tables)
    return TaskResult(
        rows_in=rows,
        rows_out=rows,
        details={
            "erasure_id": erasure_id,
            "entity": entity.name,
            "tables": {t.table: [t.version_before, t.version_after] for t in tables},
            "landing_lines_removed": landing.lines_removed,
        },
    )


def add_erase_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason", default="", help="why (kept in ops_erasure_audit; no personal data)"
    )
    parser.add_argument(
        "--requested-by", default="", help="who asked for it (default: the session's user)"
    )


def main(argv: list[str] | None = None) -> int:
    """The erasure job's task on Databricks: erase one key once the pipeline job has run."""
    parser = task_parser("Erase one person's personal data everywhere the pipeline keeps it.", True)
    parser.add_argument("--key", required=True, help="the entity's key (e.g. a customer_id)")
    add_erase_arguments(parser)
    args = parser.parse_args(argv)
    ctx = context_from_args(args)
    entity = resolve_entity(args.entity, ctx.entities)
    erasure = Erasure(entity.name, args.key, args.reason, args.requested_by)
    return run_entry_point(task_name(entity.name), ctx, lambda s, c: run(s, c, erasure))


if __name__ == "__main__":
    raise SystemExit(main())
