"""Every source and sink of the pipeline, batch and streaming, local and Databricks.

Tables are addressed by unqualified names (``bronze_orders``). On Databricks the session's
current catalog and schema qualify them (Unity Catalog); locally they are Delta folders under
the warehouse root, registered in the session's catalog when the lakehouse is opened, so SQL
by name works the same way in both places.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark import StorageLevel
from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import DataStreamWriter, StreamingQuery
from pyspark.sql.types import StructType

from order_pipeline.common.checkpoint import (
    StreamLog,
    StreamWrites,
    check_logs,
    check_source,
    check_tables,
    check_writes,
    stream_app_id,
)
from order_pipeline.common.config import Entity, Profile
from order_pipeline.common.contract import (
    DELETED,
    SOURCE_FILE,
    quarantine_table,
)
from order_pipeline.common.delta_log import (
    LogState,
    delta_log_version,
    keys_changed,
    latest_instant,
    newest_timestamp,
    read_commit_infos,
    read_live_rows,
    read_log_state,
    read_rows_written_by,
)
from order_pipeline.common.landing import (
    LAYOUT,
    LAYOUT_MARKER,
    Skipped,
    index_landing,
    retire_ingested,
)
from order_pipeline.common.platform import (
    ConfigNotAvailable,
    capabilities,
    set_session_conf,
    unset_session_conf,
)

if TYPE_CHECKING:
    import pyarrow as pa

# The most rows a table may hold for a task to read its columns with Arrow in its own Python
# process (Lakehouse.read_live) rather than ask Spark: the hash tables of a check over millions
# of keys take hundreds of MiB beside the JVM's heap (the unique-key check of SF10's 3.1M
# line items: +680 MiB resident), where Spark works within the heap it has. Below it a read
# takes milliseconds to a few hundred, against 0.3-0.9 s per Spark query warm.
LOCAL_READ_MAX_ROWS = 500_000

# One table created or registered at a time in this process (see Lakehouse.ensure).
_CREATE_LOCK = threading.RLock()
# Local table folders registered by name, per session and schema folder (see
# Lakehouse._register_local_tables); a stopped session's entry goes with it.
_REGISTERED: weakref.WeakKeyDictionary[SparkSession, dict[str, set[str]]] = (
    weakref.WeakKeyDictionary()
)
# One streaming query started at a time in this process (see start_query).
_START_LOCK = threading.Lock()
# Spark's words when a foreachBatch query's Python worker missed its connect-back
WORKER_MISSED_CONNECT = "Python worker failed to connect back"
START_ATTEMPTS = 3
TXN_APP_ID = "spark.databricks.delta.write.txnAppId"
TXN_VERSION = "spark.databricks.delta.write.txnVersion"


RUN_START_FILE = "_run_start.json"  # beside a checkpoint: Lakehouse.version_before_run


@dataclass(frozen=True)
class Txn:
    """Delta's idempotent-write identity: a write with an (app_id, version) already
    committed to a table is skipped, which makes a replayed micro-batch harmless."""

    app_id: str
    version: int


@dataclass(frozen=True)
class WhenMatched:
    """A WHEN MATCHED clause: update every column (``set`` None), the given ones (SQL
    expressions over ``t.``/``s.``), or delete; only where ``condition`` holds."""

    condition: str | None = None
    set: dict[str, str] | None = None
    delete: bool = False

    def sql(self) -> str:
        when = f"WHEN MATCHED{f' AND ({self.condition})' if self.condition else ''} THEN "
        if self.delete:
            return when + "DELETE"
        if self.set is None:
            return when + "UPDATE SET *"
        return when + "UPDATE SET " + ", ".join(f"t.{quote(c)} = {e}" for c, e in self.set.items())


@dataclass(frozen=True)
class WhenNotMatched:
    """A WHEN NOT MATCHED clause: insert every source column (``values`` None) or the given
    ones, only where ``condition`` holds."""

    condition: str | None = None
    values: dict[str, str] | None = None

    def sql(self) -> str:
        when = f"WHEN NOT MATCHED{f' AND ({self.condition})' if self.condition else ''} THEN "
        if self.values is None:
            return when + "INSERT *"
        columns = ", ".join(quote(c) for c in self.values)
        return f"{when}INSERT ({columns}) VALUES ({', '.join(self.values.values())})"


# rows up to which a small intermediate result (e.g. gold's affected orders) is held locally
LOCAL_ROWS = 200_000


def quote(name: str) -> str:
    """A table or column name as a SQL identifier; ``schema.table`` quotes each part."""
    return ".".join(f"`{part}`" for part in name.split("."))


def named_by(df: DataFrame, key: str, referring: DataFrame, column: str | None = None) -> DataFrame:
    """The rows of ``df`` whose ``key`` a row of the small ``referring`` names in its
    ``column`` (default: ``key``), the names listed in the filter (``key IN (...)``), which
    Parquet and Delta narrow by their statistics."""
    names = referring.select(column or key).distinct().collect()
    return df.where(F.col(key).isin([r[0] for r in names if r[0] is not None]))


def sql_literal(value: object) -> str:
    """A Python value as a SQL literal (MERGE conditions need literals for file skipping)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return f"{value}BD"
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return f"TIMESTAMP '{stamp.isoformat()}'"
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise TypeError(f"no SQL literal for a value of type {type(value).__name__}: {value!r}")


# A quoted string, a quoted identifier or a comment (left alone), or a :name marker.
_SQL_MARKER = re.compile(
    r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`[^`]*`|--[^\n]*|/\*.*?\*/)"""
    r"|(?<![:\w]):([A-Za-z_]\w*)",
    re.DOTALL,
)


def bind_parameters(query: str, parameters: dict[str, object]) -> str:
    """``query`` with its named parameter markers (``:as_of``) replaced by literals.

    Databricks SQL binds them itself; open-source Delta's SQL parser loses them on Spark 4.1
    (delta-io/delta#7640) in every mode but classic Spark's legacy substitution, so the
    pipeline binds them here, the same way on every engine."""
    unbound: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return match.group(1)
        name = match.group(2)
        if name not in parameters:
            unbound.add(name)
            return match.group(0)
        return sql_literal(parameters[name])

    bound = _SQL_MARKER.sub(replace, query)
    if unbound:
        raise ValueError(
            f"[UNBOUND_SQL_PARAMETER] no value for parameter(s) {', '.join(sorted(unbound))}; "
            f"given: {', '.join(sorted(parameters)) or 'none'}"
        )
    return bound


def schema_ddl(schema: StructType | str) -> str:
    if isinstance(schema, str):
        return schema
    return ", ".join(f"{quote(f.name)} {f.dataType.simpleString()}" for f in schema.fields)


@dataclass(frozen=True)
class KeyBounds:
    """A batch of updates' smallest and largest key (None when it has no rows), how many of
    its rows are deletes and how many keys it has (a null key counts as one): one pass over
    the batch answers what a MERGE needs to know."""

    low: object = None
    high: object = None
    deletes: int = 0
    keys: int | None = 0  # None: not counted (not asked for)


def key_bounds(updates: DataFrame, key: str, count_keys: bool = True) -> KeyBounds:
    """``updates``' key range, delete count and, with ``count_keys``, keys, in one aggregate
    (``updates`` carries ``DELETED``, false for a row that is not a delete:
    ``latest.with_deletes``)."""
    aggregates = [
        F.min(key).alias("low"),
        F.max(key).alias("high"),
        F.count_if(DELETED).alias("deletes"),
    ]
    if count_keys:
        null_key = F.count_if(F.col(key).isNull()).cast("boolean").cast("int")
        aggregates.append((F.count_distinct(key) + null_key).alias("keys"))
    row = updates.agg(*aggregates).first()
    keys = int(row["keys"]) if count_keys else None
    return KeyBounds(row["low"], row["high"], int(row["deletes"]), keys)


def key_range_match(key: str, bounds: KeyBounds) -> str:
    """``t.key = s.key``, narrowed to the updates' key range: a target-only predicate that
    cannot change what matches, and that Delta's MERGE uses to skip every target file whose
    key statistics lie outside."""
    same = f"t.{quote(key)} = s.{quote(key)}"
    if bounds.low is None:
        return same
    low, high = sql_literal(bounds.low), sql_literal(bounds.high)
    return f"{same} AND t.{quote(key)} BETWEEN {low} AND {high}"


def rows_written(commit: Row) -> int:
    """Rows a Delta commit added, from its history entry's operation metrics."""
    metrics = commit["operationMetrics"] or {}
    return int(metrics.get("numOutputRows") or metrics.get("numTargetRowsInserted") or 0)


class Lakehouse:
    """Tables, checkpoints and landing folders for one profile.

    Every read, append, MERGE and stream of the pipeline goes through here, as plain SQL or
    DataFrame calls that classic Spark, a Spark Connect session and Databricks serverless
    all run the same way (Delta's Python ``DeltaTable`` API needs a Delta Connect server
    plugin that open-source Delta does not publish for Spark 4.1)."""

    def __init__(self, spark: SparkSession, profile: Profile, register: bool = True) -> None:
        self.spark = spark
        self.profile = profile
        self.capabilities = capabilities(spark)
        if profile.is_local and register:
            with _CREATE_LOCK:
                for schema in self.schemas():
                    spark.sql(f"CREATE DATABASE IF NOT EXISTS {quote(schema)}")
                if spark.catalog.currentDatabase() != profile.schema:
                    spark.sql(f"USE {quote(profile.schema)}")
            self._register_local_tables()

    @classmethod
    def for_batch(cls, batch: DataFrame, profile: Profile) -> Lakehouse:
        """The lakehouse as seen from inside ``foreachBatch``: the batch's own session (on
        Spark Connect a separate Python process has nothing else), tables already set up."""
        return cls(batch.sparkSession, profile, register=False)

    # -- names and locations ---------------------------------------------------------------
    def schemas(self) -> list[str]:
        return list(
            dict.fromkeys(s for s in (self.profile.schema, self.profile.quarantine_schema) if s)
        )

    def quarantine(self, entity: str) -> str:
        """quarantine_<entity>, in the quarantine schema where the profile has one."""
        table = quarantine_table(entity)
        schema = self.profile.quarantine_schema
        return f"{schema}.{table}" if schema and schema != self.profile.schema else table

    def table_path(self, table: str) -> str:
        assert self.profile.warehouse_root, "table paths exist only locally"
        schema, _, name = table.rpartition(".")
        return str(Path(self.profile.warehouse_root) / (schema or self.profile.schema) / name)

    def checkpoint(self, name: str) -> str:
        return f"{self.profile.checkpoint_root.rstrip('/')}/{name}"

    def landing(self, entity: str) -> str:
        return f"{self.profile.landing_root.rstrip('/')}/{entity}"

    def _register_local_tables(self) -> None:
        """Register the Delta folders of the schemas by name, once per session and folder.

        Catalog look-ups load every table's log (about a second for a dozen tables here),
        and a task opens the lakehouse several times: the folders already registered in
        this session are remembered, so a repeated open only lists the directory.
        """
        for schema in self.schemas():
            root = Path(self.table_path(f"{schema}.x")).parent
            if not root.is_dir():
                continue
            # tasks the local runner starts together open the lakehouse at the same moment;
            # two concurrent CREATE TABLE IF NOT EXISTS of one table fail in Delta
            with _CREATE_LOCK:
                registered = _REGISTERED.setdefault(self.spark, {}).setdefault(str(root), set())
                new = [
                    folder
                    for folder in sorted(root.iterdir())
                    if folder.name not in registered and (folder / "_delta_log").is_dir()
                ]
                if not new:
                    continue
                known = {
                    row.tableName
                    for row in self.spark.sql(f"SHOW TABLES IN {quote(schema)}").collect()
                }
                for folder in new:
                    if folder.name not in known:
                        self._register(f"{schema}.{folder.name}", folder)
                    registered.add(folder.name)

    def _register(self, table: str, folder: Path) -> None:
        try:
            self.spark.sql(
                f"CREATE TABLE IF NOT EXISTS {quote(table)} USING DELTA LOCATION '{folder}'"
            )
        except Exception:
            if not self.exists(table):  # else a concurrent task registered it first
                raise

    def _forget_local_table(self, table: str) -> None:
        root = str(Path(self.table_path(table)).parent)
        _REGISTERED.get(self.spark, {}).get(root, set()).discard(table.rpartition(".")[2])

    # -- tables --------------------------------------------------------------------------
    def exists(self, table: str) -> bool:
        return bool(self.spark.catalog.tableExists(table))

    def ensure(
        self,
        table: str,
        schema: StructType | str,
        partitioned_by: tuple[str, ...] = (),
        properties: dict[str, str] | None = None,
    ) -> None:
        """Create the table if it does not exist yet (never alters an existing one), with
        the given Delta table properties."""
        if self.exists(table):
            return
        statement = f"CREATE TABLE IF NOT EXISTS {quote(table)} ({schema_ddl(schema)}) USING DELTA"
        if partitioned_by:
            statement += f" PARTITIONED BY ({', '.join(quote(c) for c in partitioned_by)})"
        if self.profile.is_local:
            statement += f" LOCATION '{self.table_path(table)}'"
        if properties:
            pairs = ", ".join(f"'{k}' = '{v}'" for k, v in properties.items())
            statement += f" TBLPROPERTIES ({pairs})"
        # Tasks running at the same time (threads of the local runner, parallel tasks of
        # a Databricks job) may create the same shared table, such as ops_task_runs: in a
        # process one creates it at a time; losing a race to another process is fine as
        # long as the table exists afterwards.
        with _CREATE_LOCK:
            try:
                self.spark.sql(statement)
            except Exception:
                if not self.exists(table):
                    raise

    def read(self, table: str, version: int | None = None) -> DataFrame:
        """The table, or its snapshot at a Delta ``version``."""
        if version is None:
            return self.spark.table(table)
        return self.spark.read.format("delta").option("versionAsOf", version).table(table)

    def read_changes(self, table: str, after: int, up_to: int) -> DataFrame:
        """Change-feed rows of the versions (after, up_to]; the end is pinned so that a
        write committed meanwhile is left for the next reader."""
        return (
            self.spark.read.format("delta")
            .option("readChangeFeed", "true")
            .option("startingVersion", after + 1)
            .option("endingVersion", up_to)
            .table(table)
        )

    def sql(self, query: str, parameters: dict[str, object] | None = None) -> DataFrame:
        """A query over the tables, its ``:name`` markers bound to ``parameters``."""
        return self.spark.sql(bind_parameters(query, parameters or {}))

    def detail(self, table: str) -> Row:
        """DESCRIBE DETAIL: id, numFiles, properties, ..."""
        return self.spark.sql(f"DESCRIBE DETAIL {quote(table)}").first()

    # Locally the table's id, properties, emptiness and version are read from its Delta log
    # in plain Python (common/delta_log.py: milliseconds against a Spark job each); on
    # Databricks, or where the log is not in a plain form, Spark answers.
    def log_state(self, table: str, version: int | None = None) -> LogState | None:
        if not self.profile.is_local:
            return None
        return read_log_state(Path(self.table_path(table)), version)

    def log_version(self, table: str) -> int | None:
        """The table's newest version, locally from its Delta log; None elsewhere."""
        if not self.profile.is_local:
            return None
        return delta_log_version(Path(self.table_path(table)))

    def version_before_run(self, table: str, checkpoint: str, run_id: str) -> int | None:
        """The table's version before the stream of ``checkpoint`` first started in run
        ``run_id``: the attempts of one run (a retried task) share it, kept beside the
        checkpoint (``RUN_START_FILE``). Locally only (None elsewhere)."""
        version = self.log_version(table)
        if version is None:
            return None
        path = Path(self.checkpoint(checkpoint)) / RUN_START_FILE
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        if (
            isinstance(recorded, dict)
            and (recorded.get("run_id"), recorded.get("table")) == (run_id, table)
            and isinstance(recorded.get("version"), int)
        ):
            return int(recorded["version"])
        path.parent.mkdir(parents=True, exist_ok=True)
        written = path.with_name(f"{path.name}.{uuid.uuid4().hex}")
        written.write_text(json.dumps({"run_id": run_id, "table": table, "version": version}))
        os.replace(written, path)
        return version

    def rows_written_by(
        self, table: str, after: int | None, app_id: str, columns: list[str]
    ) -> list[dict[str, Any]] | None:
        """The rows the commits after version ``after`` wrote under the idempotent-write
        identity ``app_id``, locally from the Delta log and its files; None where they cannot
        be read so (Databricks, or see ``delta_log.read_rows_written_by``): ask Spark."""
        if not self.profile.is_local:
            return None
        return read_rows_written_by(Path(self.table_path(table)), after, app_id, columns)

    def read_live(
        self, table: str, columns: list[str], version: int | None = None
    ) -> pa.Table | None:
        """The ``columns`` of the table's live rows (at ``version``, default its newest) as
        one Arrow table, locally read from the data files its Delta log lists; None where
        they cannot be read so (Databricks, or see ``delta_log.read_live_rows``), or where the
        table holds more than ``LOCAL_READ_MAX_ROWS`` rows (or an unknown number): ask Spark."""
        state = self.log_state(table, version)
        return self.live_rows(state, table, columns) if state is not None else None

    def live_rows(self, state: LogState, table: str, columns: list[str]) -> pa.Table | None:
        """``read_live`` for the table's state already read from its log."""
        if state.rows is None or state.rows > LOCAL_READ_MAX_ROWS:
            return None
        return read_live_rows(state, Path(self.table_path(table)), columns)

    def table_id(self, table: str) -> str:
        state = self.log_state(table)
        return state.table_id if state else str(self.detail(table)["id"])

    def properties(self, table: str) -> dict[str, str]:
        state = self.log_state(table)
        return state.properties if state else dict(self.detail(table)["properties"] or {})

    def is_empty(self, table: str) -> bool:
        """Whether the table has no data files (a table whose rows were all deleted by
        rewriting files has none either; one with deletion vectors may still have some)."""
        state = self.log_state(table)
        return (state.live_files if state else self.detail(table)["numFiles"]) == 0

    def newest_timestamp(self, table: str, column: str) -> tuple[bool, datetime | None]:
        """The newest value of a timestamp column, locally from the live files' statistics
        in the Delta log (to the millisecond; ``delta_log.newest_timestamp``), or where they
        do not tell it (a deletion vector, no statistics) from the column read from the
        files (up to ``LOCAL_READ_MAX_ROWS`` rows), and whether it is known so; (False, None)
        elsewhere: ask Spark."""
        state = self.log_state(table)
        if state is None:
            return False, None
        known, value = newest_timestamp(state, column)
        if known:
            return known, value
        rows = self.live_rows(state, table, [column])
        return (True, latest_instant(rows.column(column))) if rows is not None else (False, None)

    def known_empty(self, table: str) -> bool:
        """Whether the table is known, without Spark, to hold no data file (locally, from its
        Delta log); False where that is unknown (Databricks) or it holds some."""
        state = self.log_state(table)
        return state is not None and state.live_files == 0

    def row_count(self, table: str, version: int | None = None) -> int:
        """The table's rows (at ``version``, default its newest): locally from the Delta
        log's file statistics, else (or where a file has none) counted by Spark."""
        state = self.log_state(table, version)
        if state is not None and state.rows is not None:
            return state.rows
        return self.read(table, version).count()

    def history(self, table: str, limit: int | None = None) -> list[Row]:
        """The table's commits, newest first."""
        text = f"DESCRIBE HISTORY {quote(table)}" + (f" LIMIT {int(limit)}" if limit else "")
        return self.spark.sql(text).select("version", "operation", "operationMetrics").collect()

    def keys_changed(self, table: str, after: int, up_to: int) -> list[int] | None:
        """Rows each commit of the versions (after, up_to] inserted, updated or deleted, by
        its operation metrics (``delta_log.keys_changed``: a lower bound), locally from the
        Delta log, else from ``DESCRIBE HISTORY``; None when a commit's record is gone."""
        if up_to <= after:
            return []
        infos = (
            read_commit_infos(Path(self.table_path(table)), after, up_to)
            if self.profile.is_local
            else None
        )
        if infos is None:
            infos = [
                (c["operation"], dict(c["operationMetrics"] or {}))
                for c in sorted(self.history(table), key=lambda c: c["version"])
                if after < c["version"] <= up_to
            ]
            if len(infos) != up_to - after:
                return None
        return [keys_changed(operation, metrics) for operation, metrics in infos]

    def version(self, table: str) -> int:
        version = self.log_version(table)
        return version if version is not None else int(self.history(table, 1)[0]["version"])

    def rows_written_since(self, table: str, version: int) -> int:
        """Rows the commits after ``version`` added to an append-only table."""
        return sum(rows_written(c) for c in self.history(table) if c["version"] > version)

    def read_stream(self, table: str) -> DataFrame:
        """The table's appends as a stream. Commits that remove or rewrite rows (an erasure's
        DELETE, ``order-pipeline erase``) are skipped, not failed on: the pipeline's own writes
        to the tables it streams (bronze) are appends only, and an erasure changes the
        downstream tables itself, having first let every stream catch up (jobs/erase.py), so
        no appended row is lost by skipping them; ``ignoreChanges`` would instead emit the
        rewritten files' other rows a second time."""
        reader = self.spark.readStream.format("delta").option("skipChangeCommits", "true")
        if self.profile.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", self.profile.max_files_per_trigger)
        if self.profile.max_bytes_per_trigger:
            reader = reader.option("maxBytesPerTrigger", self.profile.max_bytes_per_trigger)
        return reader.table(table)

    def append(self, df: DataFrame, table: str, txn: Txn | None = None) -> None:
        """Append ``df``; with ``txn`` as Delta's writer options, which every platform
        accepts (serverless included), so a replayed batch's append is skipped."""
        writer = df.write.format("delta").mode("append")
        if txn is not None:
            writer = writer.option("txnAppId", txn.app_id).option("txnVersion", txn.version)
        writer.saveAsTable(table)

    def overwrite(
        self, df: DataFrame, table: str, properties: dict[str, str] | None = None
    ) -> None:
        """Replace the table's rows (and schema) by ``df``; ``properties`` are Delta table
        properties the table is created with."""
        writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        if not self.exists(table):
            if self.profile.is_local:
                writer = writer.option("path", self.table_path(table))
            for key, value in (properties or {}).items():
                writer = writer.option(key, value)
        writer.saveAsTable(table)

    def replace_where(self, df: DataFrame, table: str, condition: str) -> None:
        """Replace the rows of ``table`` where the SQL ``condition`` holds by ``df``, in one
        commit (Delta's ``replaceWhere``: the other rows stay; Delta refuses the write when a
        row of ``df`` does not satisfy the condition). The condition is kept in the table's
        history: never put personal data in it."""
        df.write.format("delta").mode("overwrite").option("replaceWhere", condition).saveAsTable(
            table
        )

    # -- erasure (jobs/erase.py) -----------------------------------------------------------
    def set_properties(self, table: str, properties: dict[str, str]) -> None:
        pairs = ", ".join(f"{sql_literal(k)} = {sql_literal(v)}" for k, v in properties.items())
        self.spark.sql(f"ALTER TABLE {quote(table)} SET TBLPROPERTIES ({pairs})")

    def unset_properties(self, table: str, keys: list[str]) -> None:
        names = ", ".join(sql_literal(k) for k in keys)
        self.spark.sql(f"ALTER TABLE {quote(table)} UNSET TBLPROPERTIES IF EXISTS ({names})")

    def update(self, table: str, assignments: dict[str, str], condition: str) -> int:
        """UPDATE ``table`` SET column = SQL expression WHERE ``condition``; rows updated.
        The condition is kept in the table's history: never put personal data in it."""
        sets = ", ".join(f"{quote(c)} = {e}" for c, e in assignments.items())
        row = self.spark.sql(f"UPDATE {quote(table)} SET {sets} WHERE {condition}").first()
        return int(row[0]) if row is not None else 0

    def delete_rows(self, table: str, rows: DataFrame) -> None:
        """Delete every row of ``table`` equal (null-safe, every column) to a row of
        ``rows``. A MERGE over a view of them: the rows are chosen by any DataFrame logic
        (e.g. by a personal value found in raw text) while the statement the table's
        history keeps names columns only, never a value."""
        on = " AND ".join(f"t.{quote(c)} <=> s.{quote(c)}" for c in rows.columns)
        self.merge(rows.distinct(), table, on, [WhenMatched(delete=True)])

    def purge(self, table: str, properties: dict[str, str] | None = None) -> None:
        """Remove the data files no current row needs, now: deletion vectors rewritten into
        files without the deleted rows (REORG ... APPLY (PURGE)), then VACUUM with no
        retention, which also removes the change data feed's files (``_change_data``).
        ``properties`` are set on the table in the same commit as the retention below.

        Delta refuses a VACUUM under its retention (7 days) unless a session setting turns
        the check off, which serverless does not allow; the table's own retention is set to
        0 hours for this VACUUM instead and put back right after. Time travel to versions
        before the purge ends for this table, which is the point; a reader in the middle of
        a query of an older version fails. The caller holds the pipeline's run lock."""
        retention = "delta.deletedFileRetentionDuration"
        previous = self.properties(table).get(retention)
        self.set_properties(table, {**(properties or {}), retention: "interval 0 hours"})
        try:
            self.spark.sql(f"REORG TABLE {quote(table)} APPLY (PURGE)")
            self.spark.sql(f"VACUUM {quote(table)} RETAIN 0 HOURS")
        finally:
            if previous is None:
                self.unset_properties(table, [retention])
            else:
                self.set_properties(table, {retention: previous})

    def merge(
        self,
        source: DataFrame,
        table: str,
        on: str,
        clauses: list[WhenMatched | WhenNotMatched],
        txn: Txn | None = None,
        idempotent_by_content: bool = False,
    ) -> dict[str, int]:
        """MERGE ``source`` (aliased ``s``) into ``table`` (aliased ``t``), as SQL on the
        source's own session (a micro-batch has its own); returns what the MERGE reports
        (``num_inserted_rows``, ``num_updated_rows``, ``num_deleted_rows``, ...; empty when
        it was skipped as already committed under ``txn``).

        With ``txn`` the MERGE commits under Delta's idempotent-write identity where the
        session may carry it (session settings, always reset). Serverless refuses those
        settings: there a MERGE may only be replayed if it is idempotent by its content
        (e.g. it only ever replaces a row by a newer one), which the caller must vouch for.
        """
        session = source.sparkSession
        carry_txn = txn is not None and capabilities(session).session_txn_confs
        if txn is not None and not carry_txn and not idempotent_by_content:
            raise ConfigNotAvailable(
                f"MERGE into {table} needs Delta's txnAppId/txnVersion session settings to be "
                "replay-safe, and this session cannot set them"
            )
        view = f"merge_source_{uuid.uuid4().hex}"
        source.createOrReplaceTempView(view)
        statement = f"MERGE INTO {quote(table)} AS t USING {view} AS s ON {on} " + " ".join(
            clause.sql() for clause in clauses
        )
        try:
            if carry_txn:
                assert txn is not None
                set_session_conf(session, TXN_APP_ID, txn.app_id)
                set_session_conf(session, TXN_VERSION, str(txn.version))
            reported = session.sql(statement).first()
        finally:
            if carry_txn:
                unset_session_conf(session, TXN_APP_ID)
                unset_session_conf(session, TXN_VERSION)
            session.catalog.dropTempView(view)
        return {k: int(v) for k, v in reported.asDict().items()} if reported is not None else {}

    def delete_where(self, table: str, condition: str) -> None:
        """DELETE the rows of ``table`` where the SQL ``condition`` holds. The condition is
        kept in the table's history: never put personal data in it. A Delta streaming source
        fails on a commit that removes rows unless it skips change commits."""
        self.spark.sql(f"DELETE FROM {quote(table)} WHERE {condition}")

    def drop(self, table: str) -> None:
        """Drop a table and, locally, its files (a full refresh starts from nothing)."""
        if self.exists(table):
            self.spark.sql(f"DROP TABLE {quote(table)}")
        if self.profile.is_local:
            _remove_tree(self.table_path(table))
            self._forget_local_table(table)

    def reset_checkpoint(self, name: str) -> None:
        _remove_tree(self.checkpoint(name))

    def cache(self, df: DataFrame) -> DataFrame:
        """Keep a DataFrame that several writes read, where the platform allows it.

        Kept serialized (the column batches as bytes), in memory as far as it fits, else on
        disk: a block read back from disk is then held again by its exact size. Kept as
        objects (``persist``'s default), such a block is unrolled into the heap by an
        estimate of its size: SF10's cold run (9.1M line items, a 1,536 MiB heap) ran out of
        heap there as the first load's range sampling read the batch back."""
        return df.persist(StorageLevel.MEMORY_AND_DISK) if self.caches else df

    def materialize(self, df: DataFrame, max_rows: int = LOCAL_ROWS) -> DataFrame | None:
        """``df`` computed once and held as local rows (Arrow, exact for every type), when it
        has at most ``max_rows`` rows; None when it has more. A MERGE whose source is such a
        DataFrame reads no table to build its source, however often Delta evaluates it
        (it materializes a MERGE source once and reads it again per phase). Works where
        ``persist`` is refused (serverless)."""
        table = df.limit(max_rows + 1).toArrow()
        if table.num_rows > max_rows:
            return None
        return self.spark.createDataFrame(table, schema=df.schema)

    def small(self, df: DataFrame) -> DataFrame:
        """``df`` as local rows when it is small (``materialize``), else as it is."""
        local = self.materialize(df)
        return df if local is None else local

    def release(self, df: DataFrame) -> None:
        """Drop a kept DataFrame's blocks now, before the next batch or task keeps its own."""
        if self.caches:
            df.unpersist(blocking=True)

    @property
    def caches(self) -> bool:
        return self.profile.cache_batches and self.capabilities.can_persist

    # -- landing -------------------------------------------------------------------------
    def landing_stream(self, entity: Entity, checkpoint_name: str) -> LandingSource:
        """The landed lines of one entity as a stream: each line as it landed (``value``,
        the bytes untouched) and its landed file. Blank lines are no records and are left
        out; parsing is the contract's (transforms/parse.py), the same on every platform.

        On Databricks Auto Loader reads the landing Volume. Locally the Spark file source
        reads a staging folder of links to the landed files (common/landing.py: it cannot
        read file names with glob characters exactly once), and each row's source file is
        the landed file the link stands for."""
        if self.profile.source_format == "cloudFiles":
            os.makedirs(self.landing(entity.name), exist_ok=True)
            reader = self.spark.readStream.format("cloudFiles").option("cloudFiles.format", "text")
            if self.profile.max_files_per_trigger:
                reader = reader.option(
                    "cloudFiles.maxFilesPerTrigger", self.profile.max_files_per_trigger
                )
            retention = self.profile.landing
            if retention.retention != "off":  # Auto Loader moves or deletes them itself
                days, rest = divmod(int(retention.retention_after_seconds), 86400)
                reader = reader.option(
                    "cloudFiles.cleanSource",
                    "MOVE" if retention.retention == "archive" else "DELETE",
                ).option(
                    "cloudFiles.cleanSource.retentionDuration",
                    f"{days} days"
                    if not rest
                    else f"{int(retention.retention_after_seconds)} seconds",
                )
                if retention.retention == "archive":
                    reader = reader.option(
                        "cloudFiles.cleanSource.moveDestination",
                        f"{str(retention.archive_root).rstrip('/')}/{entity.name}",
                    )
            stream = reader.load(self.landing(entity.name)).select(
                "value", F.col("_metadata.file_path").alias(SOURCE_FILE)
            )
            return LandingSource(stream.where(F.trim("value") != ""))
        checkpoint = Path(self.checkpoint(checkpoint_name))
        _check_landing_layout(checkpoint)
        index = index_landing(
            Path(self.landing(entity.name)),
            checkpoint / "_landing",
            self.profile.landing.subfolders,
            self.profile.landing.compressed,
        )
        (checkpoint / LAYOUT_MARKER).write_text(LAYOUT)
        reader = self.spark.readStream.format("text")
        if self.profile.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", self.profile.max_files_per_trigger)
        sources = self.spark.createDataFrame(
            sorted(index.sources.items()), "_seq bigint, _landed string"
        )
        stream = reader.load(str(index.staging)).withColumn(
            "_seq", F.regexp_extract("_metadata.file_name", r"^(\d+)\.", 1).cast("bigint")
        )
        lines = stream.join(F.broadcast(sources), "_seq").select(
            "value", F.col("_landed").alias(SOURCE_FILE)
        )
        return LandingSource(
            lines.where(F.trim("value") != ""),
            new_files=len(index.linked),
            skipped=index.skipped,
        )

    def retire_landed(self, entity: Entity, checkpoint_name: str) -> list[str]:
        """Landing retention on the local file source, once its stream has drained (on
        Databricks Auto Loader's ``cloudFiles.cleanSource`` does it, see landing_stream)."""
        settings = self.profile.landing
        if not self.profile.is_local or settings.retention == "off":
            return []
        archive = Path(settings.archive_root) / entity.name if settings.archive_root else None
        return retire_ingested(
            Path(self.landing(entity.name)),
            Path(self.checkpoint(checkpoint_name)) / "_landing",
            settings.retention,
            settings.retention_after_seconds,
            archive,
            time.time(),
        )

    # -- streams -------------------------------------------------------------------------
    def open_checkpoint(
        self,
        name: str,
        own: tuple[str, ...],
        shared: tuple[str, ...],
        way_out: str,
        progress: Callable[[str], None] = print,
        source: str | None = None,
    ) -> str:
        """Check checkpoint ``name`` against the tables its stream writes before the stream
        starts, and return the stream's writer identity (Delta txnAppId): one that lives
        exactly as long as the checkpoint, since a reset checkpoint restarts batch ids at 0
        and must not be mistaken for a replay.

        ``own`` are the tables a full refresh drops with the checkpoint, ``shared`` the ones
        other streams write too (ops_quality_metrics); ``source`` the Delta table the stream
        reads, if it reads one. Where resuming would lose or double
        data, ``CheckpointDamaged`` names the checkpoint, what is missing and ``way_out``
        (common/checkpoint.py)."""
        log = StreamLog.read(Path(self.checkpoint(name)))
        check_logs(log, way_out)
        writes = self.stream_writes(f"{name}-", own, shared)
        app_id, recovered = stream_app_id(log, name, writes, way_out)
        if recovered:
            progress(f"  {recovered}")
        check_writes(log, app_id, writes, way_out)
        if source is not None:
            check_source(log, source, self.table_id(source), way_out)
        check_tables(log, {table: self.table_id(table) for table in own}, way_out)
        return app_id

    def stream_writes(
        self, prefix: str, own: tuple[str, ...], shared: tuple[str, ...]
    ) -> StreamWrites | None:
        """The highest txnVersion per txnAppId starting with ``prefix`` in the tables' Delta
        logs; None where the logs cannot be read as files (Unity Catalog tables)."""
        if not self.profile.is_local:
            return None

        def found(tables: tuple[str, ...]) -> dict[str, int]:
            versions: dict[str, int] = {}
            for table in tables:
                for app_id, version in delta_log_txns(Path(self.table_path(table))).items():
                    if app_id.startswith(prefix):
                        versions[app_id] = max(version, versions.get(app_id, version))
            return versions

        everywhere = found(own)
        for app_id, version in found(shared).items():
            everywhere[app_id] = max(version, everywhere.get(app_id, version))
        return StreamWrites(own=found(own), all=everywhere)

    def run_stream(
        self,
        df: DataFrame,
        checkpoint_name: str,
        process_batch: Callable[[DataFrame, int], None],
        query_name: str,
        progress: Callable[[str], None] = print,
    ) -> StreamingQuery:
        """Run ``process_batch`` over the stream with the profile's trigger; block until
        an available-now stream has drained (or forever for a processing-time one)."""
        writer = (
            df.writeStream.queryName(query_name)
            .option("checkpointLocation", self.checkpoint(checkpoint_name))
            .foreachBatch(process_batch)
        )
        if self.profile.trigger == "available_now":
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=self.profile.processing_time)
        query = start_query(writer, query_name, progress)
        await_with_progress(query, progress, self.checkpoint(checkpoint_name))
        return query


@dataclass(frozen=True)
class LandingSource:
    """A stream of landed lines, with what the listing before it found (local file source
    only)."""

    stream: DataFrame
    new_files: int | None = None
    skipped: list[Skipped] = field(default_factory=list)


class LandingLayoutChanged(RuntimeError):
    """A bronze checkpoint from before the indexed landing layout: reading on would ingest
    every landed file again."""


def _check_landing_layout(checkpoint: Path) -> None:
    marker = checkpoint / LAYOUT_MARKER
    offsets = checkpoint / "offsets"
    if marker.is_file() or not offsets.is_dir() or not any(offsets.iterdir()):
        return
    raise LandingLayoutChanged(
        f"{checkpoint} was written by a bronze stream that read the landing folder directly; "
        "this version reads an index of it, and going on would ingest every landed file "
        "again. Rebuild from landing once: `order-pipeline run --full-refresh --yes`."
    )


class StreamFailed(RuntimeError):
    """A streaming query stopped with an error; the message names the query."""


def start_query(
    writer: DataStreamWriter, name: str, progress: Callable[[str], None] = print
) -> StreamingQuery:
    """Start a foreachBatch query; on Spark Connect, start it again when its Python worker
    missed the connect-back.

    On Connect the server starts the query's foreachBatch function in a Python worker of
    its own, which must connect back within 10 seconds (fixed in Spark's
    ``PythonWorkerFactory``, no setting). Its imports take 1.5-3 s of CPU; four tasks starting
    at once on two busy cores missed it (CI, 2026-12-04: "Python worker failed to connect
    back"). So one query starts at a time in this process, and a start that failed that way
    is tried again: it failed before the query existed, so its checkpoint is untouched and
    starting again reads exactly what the failed start would have."""
    attempt = 1
    while True:
        try:
            with _START_LOCK:
                return writer.start()
        except Exception as exc:  # Connect's SparkException; its words are all it gives
            if WORKER_MISSED_CONNECT not in str(exc):
                raise
            if attempt == START_ATTEMPTS:
                raise StreamFailed(
                    f"stream {name}: its foreachBatch Python worker missed Spark's 10-second "
                    f"connect-back {attempt} times in a row; the machine is too busy to start "
                    "it (nothing was read: run again when it is quieter)"
                ) from exc
        attempt += 1
        progress(
            f"  {name}: its foreachBatch Python worker did not connect back in time "
            f"(a busy machine); starting the query again (attempt {attempt} of {START_ATTEMPTS})"
        )
        time.sleep(attempt - 1)


def await_with_progress(
    query: StreamingQuery, progress: Callable[[str], None], checkpoint: str | None = None
) -> None:
    seen: set[tuple[str, int]] = set()
    started = time.monotonic()

    def report() -> None:
        for item in query.recentProgress:
            marker = (item["runId"], item["batchId"])
            if marker in seen:
                continue
            seen.add(marker)
            if item.numInputRows:
                progress(
                    f"  {query.name}: batch {item['batchId']}: {item.numInputRows} rows "
                    f"({time.monotonic() - started:.1f}s)"
                )

    try:
        while query.isActive:
            query.awaitTermination(2)
            report()
        query.awaitTermination()  # raises the query's error, if it had one
        report()
    except StreamingQueryException as exc:
        where = f" (checkpoint {checkpoint})" if checkpoint else ""
        raise StreamFailed(
            f"stream {query.name}{where} failed: {exc.desc if hasattr(exc, 'desc') else exc}"
        ) from exc
    finally:
        if query.isActive:
            query.stop()


def delta_log_txns(table: Path) -> dict[str, int]:
    """The idempotent-write identities a Delta table's log holds: txnAppId -> the highest
    txnVersion, from its newest checkpoint and the commits after it (an empty dict for a
    folder without a log)."""
    log = table / "_delta_log"
    versions: dict[str, int] = {}

    def keep(txn: dict | None) -> None:
        if txn:
            app_id, version = txn["appId"], int(txn["version"])
            versions[app_id] = max(version, versions.get(app_id, version))

    after = -1
    last_checkpoint = log / "_last_checkpoint"
    if last_checkpoint.is_file():
        import pyarrow.parquet as pq

        after = int(json.loads(last_checkpoint.read_text())["version"])
        for part in sorted(log.glob(f"{after:020d}.checkpoint*.parquet")):
            for txn in pq.read_table(part, columns=["txn"]).column("txn").to_pylist():
                keep(txn)
    for commit in sorted(log.glob("*.json")) if log.is_dir() else []:
        if commit.stem.isdigit() and int(commit.stem) > after:
            with commit.open(encoding="utf-8") as actions:
                for line in actions:
                    if line.startswith('{"txn"'):
                        keep(json.loads(line)["txn"])
    return versions


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
