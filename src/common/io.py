"""Every source and sink of the pipeline, batch and streaming, local and Databricks.

Tables are addressed by unqualified names (``bronze_orders``). On Databricks the session's
current catalog and schema qualify them (Unity Catalog); locally they are Delta folders under
the warehouse root, registered in the session's catalog when the lakehouse is opened, so SQL
by name works the same way in both places.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.errors import StreamingQueryException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery
from pyspark.sql.types import StructType

from order_pipeline.common.config import Entity, Profile

CORRUPT_RECORD = "_corrupt_record"
RESCUED_DATA = "_rescued_data"
SOURCE_FILE = "_source_file"
INGESTED_AT = "_ingested_at"
BATCH_ID = "_batch_id"
RUN_ID = "_run_id"
QUALITY_WARNINGS = "_quality_warnings"  # rules of severity warn a kept row failed
BRONZE_METADATA_DDL = (
    f"`{CORRUPT_RECORD}` string, `{RESCUED_DATA}` string, `{SOURCE_FILE}` string, "
    f"`{INGESTED_AT}` timestamp, `{BATCH_ID}` bigint, `{RUN_ID}` string"
)


def bronze_table(entity: str) -> str:
    return f"bronze_{entity}"


def silver_table(entity: str) -> str:
    return f"silver_{entity}"


def quarantine_table(entity: str) -> str:
    return f"quarantine_{entity}"


def deferred_table(entity: str) -> str:
    return f"deferred_{entity}"


QUALITY_METRICS = "ops_quality_metrics"
TASK_RUNS = "ops_task_runs"
GOLD_WATERMARKS = "ops_gold_watermarks"  # silver versions the gold build has consumed
GX_RESULTS = "ops_gx_results"


def bronze_schema(entity: Entity) -> StructType:
    return StructType.fromDDL(f"{entity.ddl()}, {BRONZE_METADATA_DDL}")


# One table created or registered at a time in this process (see Lakehouse.ensure).
_CREATE_LOCK = threading.RLock()
# Local table folders registered by name, per session and schema folder (see
# Lakehouse._register_local_tables); a stopped session's entry goes with it.
_REGISTERED: weakref.WeakKeyDictionary[SparkSession, dict[str, set[str]]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class Txn:
    """Delta's idempotent-write identity: a write with an (app_id, version) already
    committed to a table is skipped, which makes a replayed micro-batch harmless."""

    app_id: str
    version: int


class Lakehouse:
    """Tables, checkpoints and landing folders for one profile."""

    def __init__(self, spark: SparkSession, profile: Profile) -> None:
        self.spark = spark
        self.profile = profile
        if profile.is_local:
            with _CREATE_LOCK:
                if spark.catalog.currentDatabase() != profile.schema:
                    spark.sql(f"CREATE DATABASE IF NOT EXISTS `{profile.schema}`")
                    spark.sql(f"USE `{profile.schema}`")
            self._register_local_tables()

    # -- locations -----------------------------------------------------------------------
    def table_path(self, table: str) -> str:
        assert self.profile.warehouse_root, "table paths exist only locally"
        return str(Path(self.profile.warehouse_root) / self.profile.schema / table)

    def checkpoint(self, name: str) -> str:
        return f"{self.profile.checkpoint_root.rstrip('/')}/{name}"

    def landing(self, entity: str) -> str:
        return f"{self.profile.landing_root.rstrip('/')}/{entity}"

    def _register_local_tables(self) -> None:
        """Register the Delta folders of the schema by name, once per session and folder.

        Catalog look-ups load every table's log (about a second for a dozen tables here),
        and a task opens the lakehouse several times: the folders already registered in
        this session are remembered, so a repeated open only lists the directory.
        """
        root = Path(self.table_path("x")).parent
        if not root.is_dir():
            return
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
                return
            known = {
                row.tableName
                for row in self.spark.sql(f"SHOW TABLES IN `{self.profile.schema}`").collect()
            }
            for folder in new:
                if folder.name not in known:
                    self._register(folder)
                registered.add(folder.name)

    def _register(self, folder: Path) -> None:
        try:
            self.spark.sql(
                f"CREATE TABLE IF NOT EXISTS `{folder.name}` USING DELTA LOCATION '{folder}'"
            )
        except Exception:
            if not self.exists(folder.name):  # else a concurrent task registered it first
                raise

    def _forget_local_table(self, table: str) -> None:
        root = str(Path(self.table_path(table)).parent)
        _REGISTERED.get(self.spark, {}).get(root, set()).discard(table)

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
        if isinstance(schema, str):
            schema = StructType.fromDDL(schema)
        builder = DeltaTable.createIfNotExists(self.spark).tableName(table).addColumns(schema)
        if partitioned_by:
            builder = builder.partitionedBy(*partitioned_by)
        for key, value in (properties or {}).items():
            builder = builder.property(key, value)
        if self.profile.is_local:
            builder = builder.location(self.table_path(table))
        # Tasks running at the same time (threads of the local runner, parallel tasks of
        # a Databricks job) may create the same shared table, such as ops_task_runs: in a
        # process one creates it at a time; losing a race to another process is fine as
        # long as the table exists afterwards.
        with _CREATE_LOCK:
            try:
                builder.execute()
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

    def delta(self, table: str) -> DeltaTable:
        return DeltaTable.forName(self.spark, table)

    def version(self, table: str) -> int:
        return int(self.delta(table).history(1).select("version").first()[0])

    def read_stream(self, table: str) -> DataFrame:
        reader = self.spark.readStream.format("delta")
        if self.profile.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", self.profile.max_files_per_trigger)
        if self.profile.max_bytes_per_trigger:
            reader = reader.option("maxBytesPerTrigger", self.profile.max_bytes_per_trigger)
        return reader.table(table)

    def append(self, df: DataFrame, table: str, txn: Txn | None = None) -> None:
        writer = df.write.format("delta").mode("append")
        if txn is not None:
            writer = writer.option("txnAppId", txn.app_id).option("txnVersion", txn.version)
        writer.saveAsTable(table)

    def overwrite(self, df: DataFrame, table: str) -> None:
        writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        if self.profile.is_local and not self.exists(table):
            writer = writer.option("path", self.table_path(table))
        writer.saveAsTable(table)

    def drop(self, table: str) -> None:
        """Drop a table and, locally, its files (a full refresh starts from nothing)."""
        if self.exists(table):
            self.spark.sql(f"DROP TABLE `{table}`")
        if self.profile.is_local:
            _remove_tree(self.table_path(table))
            self._forget_local_table(table)

    def reset_checkpoint(self, name: str) -> None:
        _remove_tree(self.checkpoint(name))

    def cache(self, df: DataFrame) -> DataFrame:
        """Keep a DataFrame that several writes read, where the platform allows it."""
        return df.persist() if self.profile.cache_batches else df

    def release(self, df: DataFrame) -> None:
        if self.profile.cache_batches:
            df.unpersist()

    # -- landing -------------------------------------------------------------------------
    def landing_stream(self, entity: Entity) -> DataFrame:
        """The landed JSON Lines of one entity as a stream: contract columns, malformed
        lines kept with their raw text, and the source file of each row."""
        path = self.landing(entity.name)
        os.makedirs(path, exist_ok=True)  # a missing folder is "nothing landed yet"
        schema = StructType.fromDDL(f"{entity.ddl()}, `{CORRUPT_RECORD}` string")
        if self.profile.source_format == "cloudFiles":
            reader = (
                self.spark.readStream.format("cloudFiles")
                .option("cloudFiles.format", "json")
                .option("cloudFiles.schemaLocation", self.checkpoint(f"_schemas/{entity.name}"))
                .option("cloudFiles.schemaHints", entity.ddl())
                .option("cloudFiles.schemaEvolutionMode", "rescue")
                .option("rescuedDataColumn", RESCUED_DATA)
                .option("columnNameOfCorruptRecord", CORRUPT_RECORD)
                .option("cloudFiles.includeExistingFiles", "true")
                .schema(schema)
            )
            if self.profile.max_files_per_trigger:
                reader = reader.option(
                    "cloudFiles.maxFilesPerTrigger", self.profile.max_files_per_trigger
                )
            rescued: Column = F.col(RESCUED_DATA)
        else:
            reader = (
                self.spark.readStream.format("json")
                .schema(schema)
                .option("mode", "PERMISSIVE")
                .option("columnNameOfCorruptRecord", CORRUPT_RECORD)
                .option("pathGlobFilter", "*.json")
            )
            if self.profile.max_files_per_trigger:
                reader = reader.option("maxFilesPerTrigger", self.profile.max_files_per_trigger)
            rescued = F.lit(None).cast("string")
        stream = reader.load(path)
        return stream.select(
            *entity.columns,
            F.col(CORRUPT_RECORD),
            rescued.alias(RESCUED_DATA),
            F.col("_metadata.file_path").alias(SOURCE_FILE),
        )

    # -- streams -------------------------------------------------------------------------
    def stream_app_id(self, checkpoint_name: str) -> str:
        """A writer identity that lives exactly as long as the checkpoint: a reset
        checkpoint restarts batch ids at 0 and must not be mistaken for a replay."""
        folder = Path(self.checkpoint(checkpoint_name))
        marker = folder / "_txn_app_id"
        if marker.is_file():
            return marker.read_text().strip()
        folder.mkdir(parents=True, exist_ok=True)
        app_id = f"{checkpoint_name}-{uuid.uuid4()}"
        marker.write_text(app_id)
        return app_id

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
        query = writer.start()
        await_with_progress(query, progress)
        return query


class StreamFailed(RuntimeError):
    """A streaming query stopped with an error; the message names the query."""


def await_with_progress(query: StreamingQuery, progress: Callable[[str], None]) -> None:
    seen: set[tuple[str, int]] = set()
    started = time.monotonic()

    def report() -> None:
        for item in query.recentProgress:
            marker = (item["runId"], item["batchId"])
            if marker in seen:
                continue
            seen.add(marker)
            if item["numInputRows"]:
                progress(
                    f"  {query.name}: batch {item['batchId']}: {item['numInputRows']} rows "
                    f"({time.monotonic() - started:.1f}s)"
                )

    try:
        while query.isActive:
            query.awaitTermination(2)
            report()
        query.awaitTermination()  # raises the query's error, if it had one
        report()
    except StreamingQueryException as exc:
        raise StreamFailed(
            f"stream {query.name} failed: {exc.desc if hasattr(exc, 'desc') else exc}"
        ) from exc
    finally:
        if query.isActive:
            query.stop()


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
