"""Child process: read the pipeline's own records after the measured runs, and measure the
stream-level figures in a scratch lakehouse with the project's real task bodies.

* ops_task_runs (per task: seconds, rows in and out, status) and the Delta history of the
  silver tables (MERGE operationMetrics: rows copied per source row);
* fixed overhead per micro-batch: the project's bronze and silver tasks run over a 1-row
  increment, several times; each micro-batch's durationMs comes from a listener;
* file listing against files already seen: no-new-data bronze runs with N files landed;
* Delta commits per silver micro-batch (the table versions each 1-row silver run added);
* gold for a tiny change: five orders changed in silver, gold built incrementally, then
  rebuilt in full over the same silver (each timed), twice: the second, warm round counts.

    python -m benchmarks.probe --data-root D --out probe.json [--listing-files N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from benchmarks.common import ENTITY_ORDER, utc_now, write_json
from benchmarks.listener import ProgressListener
from order_pipeline.common import contract
from order_pipeline.common.config import GoldSettings, Profile, load_entities, load_profile
from order_pipeline.common.contract import (
    QUALITY_METRICS,
    QUALITY_WARNINGS,
    SOURCE_FILE,
    TASK_RUNS,
    deferred_table,
    quarantine_table,
    silver_table,
)
from order_pipeline.common.io import Lakehouse, quote
from order_pipeline.common.platform import profile_name
from order_pipeline.common.spark import get_spark
from order_pipeline.jobs import bronze as bronze_job
from order_pipeline.jobs import gold as gold_job
from order_pipeline.jobs import silver as silver_job
from order_pipeline.jobs.task import TaskContext, collected_task_runs, flush_ops_rows

PROBE_SCHEMA = "bench_probe"
EVENT_WAIT_SECONDS = 5.0


def quiet(_: str) -> None:
    pass


class ProgressCollector:
    """Keeps every progress event in memory (a ProgressListener's sink)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, progress: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(progress)

    def take(self, name: str, run_ids_before: set[str]) -> list[dict[str, Any]]:
        """Events of query ``name`` from runs not seen before (waiting for the async bus)."""
        deadline = time.monotonic() + EVENT_WAIT_SECONDS
        while True:
            with self.lock:
                found = [
                    e
                    for e in self.events
                    if e.get("name") == name and e["runId"] not in run_ids_before
                ]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def run_ids(self) -> set[str]:
        with self.lock:
            return {e["runId"] for e in self.events}


def progress_summary(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "batch_id": event.get("batchId"),
        "num_input_rows": event.get("numInputRows"),
        "duration_ms": event.get("durationMs", {}),
    }


# -- the pipeline's own records ---------------------------------------------------------


def task_runs(lake: Lakehouse) -> list[dict[str, Any]]:
    if not lake.exists(TASK_RUNS):
        return []
    df = lake.read(TASK_RUNS).select(
        "task", "entity", "run_id", "seconds", "rows_in", "rows_out", "status", "error", "details",
        F.col("started_at").cast("double").alias("started_epoch"),
        F.col("ended_at").cast("double").alias("ended_epoch"),
    )  # fmt: skip
    return [row.asDict() for row in df.orderBy("started_epoch").collect()]


def merge_history(lake: Lakehouse, table: str) -> list[dict[str, Any]]:
    history = lake.spark.sql(f"DESCRIBE HISTORY {quote(table)}").where(
        F.col("operation") == "MERGE"
    )
    rows = history.select(
        "version", F.col("timestamp").cast("double").alias("epoch"), "operationMetrics"
    ).collect()
    return [
        {
            "version": r["version"],
            "epoch": r["epoch"],
            "metrics": {
                k: int(v)
                for k, v in (r["operationMetrics"] or {}).items()
                if v.lstrip("-").isdigit()
            },
        }
        for r in sorted(rows, key=lambda r: r["version"])
    ]


def table_detail(spark: SparkSession, table: str) -> dict[str, Any]:
    row = spark.sql(f"DESCRIBE DETAIL `{table}`").select("numFiles", "sizeInBytes").first()
    return {"num_files": row["numFiles"], "size_bytes": row["sizeInBytes"]}


def counts_and_checks(lake: Lakehouse) -> tuple[dict[str, int], dict[str, float]]:
    tables = [
        f(name) for name in ENTITY_ORDER for f in (silver_table, quarantine_table, deferred_table)
    ]
    tables += list(contract.GOLD_TABLES)
    counts = {t: lake.read(t).count() for t in tables if lake.exists(t)}
    checks: dict[str, float] = {}
    if lake.exists(contract.PRODUCT_SALES_MONTHLY):
        row = (
            lake.read(contract.PRODUCT_SALES_MONTHLY).agg(F.sum("units"), F.sum("revenue")).first()
        )
        checks = {"gold_units": float(row[0] or 0), "gold_revenue": float(row[1] or 0)}
    return counts, checks


def collect_pipeline(spark: SparkSession, profile: Profile) -> dict[str, Any]:
    lake = Lakehouse(spark, profile)
    counts, checks = counts_and_checks(lake)
    return {
        "task_runs": task_runs(lake),
        "merges": {
            n: merge_history(lake, silver_table(n))
            for n in ENTITY_ORDER
            if lake.exists(silver_table(n))
        },
        "silver_files": {
            n: table_detail(spark, silver_table(n))
            for n in ENTITY_ORDER
            if lake.exists(silver_table(n))
        },
        "counts": counts,
        "checks": checks,
    }


# -- scratch lakehouse: micro-batch overhead and file listing ---------------------------


def scratch_profile(profile: Profile, root: Path) -> Profile:
    return replace(
        profile,
        schema=PROBE_SCHEMA,
        landing_root=str(root / "landing"),
        checkpoint_root=str(root / "checkpoints"),
        warehouse_root=str(root / "warehouse"),
    )


def land_line(folder: Path, name: str, line: str) -> None:
    """Atomically, as the data contract requires: written elsewhere, then renamed in."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / "_staging"
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / name
    tmp.write_text(line + "\n")
    os.replace(tmp, folder / name)


def customer_line(i: int) -> str:
    return json.dumps(
        {
            "customer_id": f"C-PROBE-{i:06d}", "first_name": "Ada", "last_name": "Probe",
            "email": f"ada.probe{i}@example.com", "phone": None, "city": "Bern", "country": "CH",
            "created_at": "2025-01-01T00:00:00Z", "updated_at": f"2025-01-01T00:{i % 60:02d}:00Z",
        }
    )  # fmt: skip


def product_line(i: int) -> str:
    return json.dumps(
        {"product_id": f"P-PROBE-{i:06d}", "name": "Probe", "category": "Books", "price": 1.5,
         "updated_at": "2025-01-01T00:00:00Z"}
    )  # fmt: skip


def context(profile: Profile, entity: str) -> TaskContext:
    return TaskContext(
        profile=profile, entities=load_entities(), run_id=f"bench-probe-{int(time.time())}",
        entity=entity,
    )  # fmt: skip


def timed_task(
    collector: ProgressCollector, query: str, body: Callable[[], object]
) -> dict[str, Any]:
    before = collector.run_ids()
    started = time.perf_counter()
    body()
    wall = time.perf_counter() - started
    events = collector.take(query, before)
    return {"wall_seconds": round(wall, 3), "batches": [progress_summary(e) for e in events]}


def probe_overhead(
    spark: SparkSession, profile: Profile, root: Path, runs: int, collector: ProgressCollector
) -> list[dict[str, Any]]:
    """The project's bronze and silver tasks over a 1-row increment, ``runs`` times."""
    Lakehouse(spark, profile)
    bronze_ctx, silver_ctx = (
        context(profile, "customers"),
        context(profile, "customers"),
    )
    landing = Path(profile.landing_root) / "customers"
    results = []
    committed = silver_commit_tables("customers")
    for i in range(runs):
        land_line(landing, f"probe-{i:05d}.json", customer_line(i))
        bronze = timed_task(
            collector, "bronze_customers", lambda: bronze_job.run(spark, bronze_ctx, quiet)
        )
        before = table_versions(spark, profile, committed)
        # as under `order-pipeline run`: the run's ops rows (dataset checks) wait for its end
        with collected_task_runs(profile):
            silver = timed_task(
                collector, "silver_customers", lambda: silver_job.run(spark, silver_ctx, quiet)
            )
            after = table_versions(spark, profile, committed)
        silver["commits"] = {t: after[t] - before[t] for t in after}
        results.append({"run": i, "bronze": bronze, "silver": silver})
        print(
            f"  1-row micro-batch {i + 1}/{runs}: bronze task {bronze['wall_seconds']:.2f}s, silver task {silver['wall_seconds']:.2f}s",
            flush=True,
        )
    return results


def silver_commit_tables(entity: str) -> list[str]:
    """The tables a silver task of ``entity`` commits to per micro-batch (ops_task_runs and
    the dataset checks' rows aside: a run writes those once for all its tasks)."""
    return [
        silver_table(entity), quarantine_table(entity), deferred_table(entity), QUALITY_METRICS,
        contract.tombstone_table(entity),
    ]  # fmt: skip


def table_versions(spark: SparkSession, profile: Profile, tables: list[str]) -> dict[str, int]:
    """Each table's Delta version, -1 for a table not created yet."""
    lake = Lakehouse(spark, profile, register=False)
    return {t: lake.version(t) if lake.exists(t) else -1 for t in tables}


def probe_gold_tiny_change(
    spark: SparkSession, profile: Profile, orders: int, rounds: int = 2
) -> dict[str, Any]:
    """``orders`` orders of silver re-dated by a second (a new snapshot each), then gold
    built incrementally (whatever the share) and rebuilt in full over the same silver; done
    ``rounds`` times, the last round's figures reported (the first pays each path's first
    plans and class loading, which a warm process does not)."""
    lake = Lakehouse(spark, profile)
    entities = load_entities()
    entity = entities["orders"]
    table = silver_table("orders")
    incremental_profile = replace(profile, gold=GoldSettings(max_incremental_share=1.0))
    out: dict[str, Any] = {"orders_changed": orders, "rounds": []}
    for _ in range(rounds):
        changed = (
            lake.read(table)
            .orderBy(F.col(entity.key).desc())
            .limit(orders)
            .withColumn(entity.sequence, F.col(entity.sequence) + F.expr("INTERVAL 1 SECOND"))
            .select(*entity.columns, QUALITY_WARNINGS, SOURCE_FILE)
        )
        run_id = f"bench-probe-gold-{time.time_ns()}"
        silver_job.merge_latest(lake, table, changed, entity, run_id)
        ctx = TaskContext(profile=incremental_profile, entities=entities, run_id=run_id)
        measured: dict[str, Any] = {}
        for label, task_ctx in (("incremental", ctx), ("rebuild", replace(ctx, full_refresh=True))):
            started = time.perf_counter()
            result = gold_job.run(spark, task_ctx, quiet)
            measured[label] = {
                "wall_seconds": round(time.perf_counter() - started, 3),
                "mode": result.details.get("mode"),
                "affected_orders": result.details.get("affected_orders"),
            }
        out["rounds"].append(measured)
        print(
            f"  gold for {orders} changed orders: {measured['incremental']['mode']} "
            f"{measured['incremental']['wall_seconds']:.1f}s ({measured['incremental']['affected_orders']} "
            f"affected), full rebuild {measured['rebuild']['wall_seconds']:.1f}s",
            flush=True,
        )
    out.update(out["rounds"][-1])
    return out


def probe_listing(
    spark: SparkSession,
    profile: Profile,
    root: Path,
    levels: list[int],
    collector: ProgressCollector,
) -> list[dict[str, Any]]:
    """For each level N: land files up to N, ingest them, then time a bronze run with no
    new file (pure listing against N seen files) and one with a single new file."""
    Lakehouse(spark, profile)
    ctx = context(profile, "products")
    landing = Path(profile.landing_root) / "products"
    landed, results = 0, []

    def bronze_run() -> None:
        bronze_job.run(spark, ctx, quiet)

    for level in levels:
        while landed < level:
            land_line(landing, f"probe-{landed:06d}.json", product_line(landed))
            landed += 1
        ingest = timed_task(collector, "bronze_products", bronze_run)
        no_new = timed_task(collector, "bronze_products", bronze_run)
        land_line(landing, f"probe-{landed:06d}.json", product_line(landed))
        landed += 1
        one_new = timed_task(collector, "bronze_products", bronze_run)
        results.append(
            {"files_seen": level, "ingest": ingest, "no_new_data": no_new, "one_new_file": one_new}
        )
        print(
            f"  listing with {level} files seen: no-new-data run {no_new['wall_seconds']:.2f}s, one new file {one_new['wall_seconds']:.2f}s",
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--scratch", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--overhead-runs", type=int, default=3)
    parser.add_argument("--listing-files", type=int, default=500, help="0: skip the listing probe")
    parser.add_argument("--gold-orders", type=int, default=5, help="0: skip the gold probe")
    args = parser.parse_args(argv)
    profile = load_profile(profile_name(), args.data_root)
    spark = get_spark(profile, app_name="benchmark-probe")
    collector = ProgressCollector()
    spark.streams.addListener(ProgressListener(collector))
    out: dict[str, Any] = {"measured_at": utc_now()}
    # a run that started no Spark session (nothing new) left its task rows pending
    flushed = flush_ops_rows(spark, profile)
    print(
        f"reading ops_task_runs ({flushed} pending rows added) and the silver tables' Delta history",
        flush=True,
    )
    out["pipeline"] = collect_pipeline(spark, profile)
    scratch = scratch_profile(profile, args.scratch)
    if args.overhead_runs > 0:
        print(
            f"fixed overhead: {args.overhead_runs} runs of bronze + silver over a 1-row increment",
            flush=True,
        )
        out["overhead"] = probe_overhead(
            spark, scratch, args.scratch, args.overhead_runs, collector
        )
    if args.listing_files > 0:
        levels = sorted({max(1, args.listing_files // 20), args.listing_files})
        print(f"file listing: no-new-data bronze runs with {levels} files seen", flush=True)
        out["listing"] = probe_listing(spark, scratch, args.scratch, levels, collector)
    if args.gold_orders > 0:
        print(f"gold for a tiny change: {args.gold_orders} orders", flush=True)
        out["gold_tiny_change"] = probe_gold_tiny_change(spark, profile, args.gold_orders)
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
