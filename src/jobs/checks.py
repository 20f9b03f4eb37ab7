"""The dataset checks' reads and their one write per task (quality/dataset_checks.py has
the model, the verdicts and the aggregations).

Cost: a task's results are appended to ops_quality_metrics in one commit, once per task run
(never per micro-batch; a skipped task writes none: its freshness is judged in plain Python
and goes to its run record). The reads are aggregations bounded by what the run wrote:
freshness reads the rows at or after the newest value seen last time (Delta skips the
older files by their statistics), uniqueness the key range of the rows the run wrote,
reconciliation and volume the metrics rows of the entity's micro-batches. Locally none of
them starts a Spark job: freshness is the newest value in the live files' statistics in
the Delta log, uniqueness and volume read the columns they need from the files the log
lists with Arrow (milliseconds, against 0.3-0.9 s per Spark query warm and seconds cold);
where the log or the files are not in a plain form, and on Databricks, Spark reads.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from order_pipeline.common.config import Entity
from order_pipeline.common.contract import (
    INGESTED_AT,
    ORDER_DETAILS,
    QUALITY_METRICS,
    RUN_ID,
    bronze_table,
    silver_table,
    tombstone_table,
)
from order_pipeline.common.delta_log import release_arrow_memory
from order_pipeline.common.inputs import Consumed
from order_pipeline.common.io import Lakehouse, named_by
from order_pipeline.jobs.task import CHECK_ROWS, record_rows
from order_pipeline.quality import dataset_checks as dc
from order_pipeline.quality.metrics import OUTCOME_PREFIX, STREAM, BatchCounts
from order_pipeline.quality.rules import RuleSet

if TYPE_CHECKING:
    import pyarrow as pa

NEWEST_UPDATED = "newest_updated_at"  # task state keys: what freshness is judged by when the
NEWEST_INGESTED = "newest_ingested_at"  # task is skipped


@dataclass
class CheckOutcome:
    """What a task's checks found: for its run record and for its next (skipped) run."""

    details: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


def record(
    lake: Lakehouse,
    task: str,
    run_id: str,
    results: list[dc.CheckResult],
    progress: Callable[[str], None],
    write: bool = True,
) -> list[dict[str, Any]]:
    """Append the results in one commit (unless ``write`` is false: a run that wrote
    nothing commits nothing), then warn or fail (quality/dataset_checks.enforce)."""
    if not results:
        return []
    if write:
        # locally with the run's other ops rows, in one commit at its end (jobs/task.py)
        identity = dc.results_identity(task, run_id, results)
        record_rows(
            CHECK_ROWS, lake.profile, lake.spark, dc.result_records(results, run_id), identity
        )
    return dc.enforce(results, progress)


# -- silver ---------------------------------------------------------------------------------------
def run_history(lake: Lakehouse, entity: str, run_id: str, runs: int) -> list[int]:
    """Rows read from bronze by the entity's last ``runs`` earlier silver runs that read
    any, newest first (from their micro-batches' ops_quality_metrics rows): locally read
    from the table's files with Arrow, else by Spark."""
    columns = ["entity", "source", "rule", "run_id", "rows_checked", "measured_at"]
    local = lake.read_live(QUALITY_METRICS, columns)
    if local is not None:
        return history_among(local, entity, run_id, runs)
    rows = (
        lake.read(QUALITY_METRICS)
        .where(
            (F.col("entity") == entity)
            & (F.col("source") == STREAM)
            & (F.col("rule") == f"{OUTCOME_PREFIX}quarantined")
            & (F.col("run_id") != run_id)
        )
        .groupBy("run_id")
        .agg(F.sum("rows_checked").alias("rows"), F.max("measured_at").alias("at"))
        .where(F.col("rows") > 0)
        .orderBy(F.col("at").desc())
        .limit(runs)
        .collect()
    )
    return [int(r["rows"]) for r in rows]


def history_among(metrics: pa.Table, entity: str, run_id: str, runs: int) -> list[int]:
    """``run_history`` over ops_quality_metrics rows read as Arrow (a tie on the newest
    measurement goes to the greater run id)."""
    import pyarrow.compute as pc

    mine = pc.fill_null(
        pc.and_(
            pc.and_(pc.equal(metrics["entity"], entity), pc.equal(metrics["source"], STREAM)),
            pc.and_(
                pc.equal(metrics["rule"], f"{OUTCOME_PREFIX}quarantined"),
                pc.not_equal(metrics["run_id"], run_id),
            ),
        ),
        False,
    )
    per_run = (
        metrics.filter(mine)
        .group_by("run_id")
        .aggregate([("rows_checked", "sum"), ("measured_at", "max")])
        .filter(pc.greater(pc.field("rows_checked_sum"), 0))
        .sort_by([("measured_at_max", "descending"), ("run_id", "descending")])
    )
    return [int(n) for n in per_run.column("rows_checked_sum").to_pylist()[:runs]]


def newest(
    lake: Lakehouse, table: str, column: str, previous: dict[str, Any] | None, state_key: str
) -> datetime | None:
    """The newest value of ``column``: at least what the last run saw (recorded in its
    state); locally from the Delta log's file statistics where they tell it (to the
    millisecond, Lakehouse.newest_timestamp), else by reading the rows at or after it."""
    seen = dc.parse_instant((previous or {}).get(state_key))
    known, value = lake.newest_timestamp(table, column)
    if not known:
        value = dc.newest_value(lake.read(table), column, since=seen)
    return dc.later(seen, value)


@dataclass(frozen=True)
class SilverRun:
    """What the silver task hands to its checks."""

    lake: Lakehouse
    entity: Entity
    rules: RuleSet
    run_id: str
    silver: str
    counts: BatchCounts  # the run's micro-batches, from their metrics rows
    wrote: bool  # whether the run wrote anything (micro-batches, promoted or expired rows)
    previous_state: dict[str, Any] | None
    full_refresh: bool


def silver_checks(run: SilverRun, progress: Callable[[str], None]) -> CheckOutcome:
    lake, entity, name = run.lake, run.entity, run.entity.name
    now = datetime.now(UTC)
    started = time.perf_counter()
    outcome = CheckOutcome()
    results: list[dc.CheckResult] = []
    newest_seen: dict[str, datetime | None] = {}
    # the run's rows of silver, read once for freshness of silver and for unique keys
    # (by Spark where the Delta log's statistics and the table's files cannot tell them)
    written = functools.cache(
        lambda: dc.touched_keys(lake.read(run.silver), entity.key, entity.sequence, RUN_ID,
                                run.run_id)
    )  # fmt: skip

    for check in run.rules.dataset_checks:
        if check.kind == "freshness":
            if check.of not in newest_seen:
                if check.of == "silver":
                    # a key's updated_at only grows: the newest is the last run's or one of
                    # the rows this run wrote; locally the newest of all of silver, from the
                    # files' statistics or the files (Lakehouse.newest_timestamp)
                    key = NEWEST_UPDATED
                    seen = dc.parse_instant((run.previous_state or {}).get(key))
                    known, value = lake.newest_timestamp(run.silver, entity.sequence)
                    value = dc.later(seen, value if known else written().newest)
                else:
                    key = NEWEST_INGESTED
                    value = newest(lake, bronze_table(name), INGESTED_AT, run.previous_state, key)
                newest_seen[check.of] = value
                outcome.state[key] = value and value.isoformat()
            results.append(dc.freshness(check, name, newest_seen[check.of], now))
        elif check.kind == "volume":
            assert check.runs is not None
            rows = 0 if run.full_refresh else run.counts.checked
            history = run_history(lake, name, run.run_id, check.runs) if rows else []
            results.append(dc.volume(check, name, rows, history))
        elif check.kind == "unique_key":
            checked, duplicates = unique_keys(lake, run, written)
            results.append(dc.unique_key(check, name, entity.key, checked, duplicates))
        elif check.kind == "reconciliation":
            results.append(dc.reconciliation(check, name, reconcile(run)))
    release_arrow_memory()
    outcome.details = record(lake, f"silver_{name}", run.run_id, results, progress, run.wrote)
    progress(
        f"  silver_{name}: {len(results)} dataset checks in {time.perf_counter() - started:.1f}s"
    )
    return outcome


def unique_keys(
    lake: Lakehouse, run: SilverRun, written: Callable[[], dc.Touched]
) -> tuple[int, dc.Duplicates]:
    """The rows of silver holding a key the run wrote, and those keys held more than once:
    locally from the key and run columns of silver's files read with Arrow, else by Spark
    over the key range of the rows the run wrote."""
    key = run.entity.key
    local = lake.read_live(run.silver, [key, RUN_ID])
    if local is not None:
        return dc.duplicate_keys_among(local, key, RUN_ID, run.run_id)
    rows = written()
    if not rows.rows:
        return 0, dc.Duplicates(0, 0, None)
    return dc.duplicate_keys(lake.read(run.silver), key, RUN_ID, run.run_id, rows.low, rows.high)


def reconcile(run: SilverRun) -> dc.Reconciliation:
    """The terms, summed over the run's micro-batches from their metrics rows: each batch
    counted them itself and recorded them in the commit that records it, so a batch
    replayed after a crash is counted once, with what each attempt wrote."""
    counts = run.counts
    return dc.Reconciliation(
        bronze_rows=counts.checked,
        upserted=counts.upserted,
        quarantined=counts.quarantined,
        deferred=counts.deferred,
        superseded_in_batch=counts.passing - counts.merge_keys,
        superseded_by_silver=counts.superseded_by_silver,
        behind_tombstones=counts.behind_tombstones,
        deletes_absent=counts.deletes_absent,
    )


def silver_checks_when_skipped(
    rules: RuleSet, previous: Consumed | None, progress: Callable[[str], None]
) -> dict[str, object]:
    """A skipped silver task's freshness, from the newest values its last run recorded
    (nothing changed since, so they are still exact): no Spark, nothing written to
    ops_quality_metrics; warn goes to the run record, fail fails the task."""
    state = previous.state if previous is not None else {}
    now = datetime.now(UTC)
    results = []
    for check in rules.dataset_checks:
        if check.kind != "freshness":
            continue
        key = NEWEST_UPDATED if check.of == "silver" else NEWEST_INGESTED
        if key not in state:
            continue  # recorded by a version before these checks: judged at the next run
        results.append(dc.freshness(check, rules.entity, dc.parse_instant(state[key]), now))
    return {"checks": dc.enforce(results, progress)} if results else {}


# -- gold -----------------------------------------------------------------------------------------
def gold_checks(
    lake: Lakehouse,
    checks: tuple[dc.DatasetCheck, ...],
    run_id: str,
    details: DataFrame,
    silver: dict[str, DataFrame],
    entities: dict[str, Entity],
    scope: str,
    progress: Callable[[str], None],
    few: bool = False,
    versions: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Referential integrity of ``details`` (gold_order_details, or the rows of the orders
    this run rebuilt) against the silver tables gold was built from. A line item's parent
    deleted under ``on_delete: keep`` (conf/pipeline.yml) is no orphan: its key is in the
    parent's tombstones, and the line item outlives it by design. ``few``: ``details`` are
    the rows of few orders, whose references are listed to read only the parents they name.
    ``versions``: the silver versions gold read, given when ``details`` is all of
    gold_order_details: locally the references and the parents' keys are then read from the
    tables' files with Arrow (no join in Spark)."""
    results = []
    local = None
    if versions is not None and checks:
        local = lake.read_live(ORDER_DETAILS, sorted({str(c.column) for c in checks}))
    details = lake.small(details) if few else details  # read once, checked per reference
    for check in checks:
        assert check.parent is not None and check.column is not None
        key = entities[check.parent].key
        keep = entities["line_items"].on_parent_delete.get(check.column) == "keep"
        found = None
        if local is not None and versions is not None:
            found = orphans_read_locally(lake, local, check, key, versions[check.parent], keep)
        if found is None:
            accepted = silver[check.parent].select(key)
            if few:
                accepted = named_by(accepted, key, details, check.column)
            if keep:
                tombstones = tombstone_table(check.parent)
                if lake.exists(tombstones):
                    accepted = accepted.unionByName(lake.read(tombstones).select(key))
            found = dc.orphans(details, check.column, accepted, key)
        checked, orphans, sample = found
        results.append(dc.references(check, ORDER_DETAILS, checked, orphans, sample, scope))
    release_arrow_memory()
    return record(lake, "gold", run_id, results, progress)


def orphans_read_locally(
    lake: Lakehouse, details: pa.Table, check: dc.DatasetCheck, key: str, version: int, keep: bool
) -> tuple[int, int, Any] | None:
    """``dc.orphans`` from the tables' files: the parent's keys at the silver version gold
    read, with its tombstones' under ``on_delete: keep``; None where a table cannot be read
    so (then Spark joins)."""
    import pyarrow as pa

    assert check.parent is not None and check.column is not None
    parents = lake.read_live(silver_table(check.parent), [key], version)
    if parents is None:
        return None
    chunks = list(parents.column(key).chunks)
    tombstones = tombstone_table(check.parent)
    if keep and lake.exists(tombstones) and not lake.known_empty(tombstones):
        dead = lake.read_live(tombstones, [key])
        if dead is None:
            return None
        chunks.extend(dead.column(key).cast(parents.schema.field(key).type).chunks)
    keys = pa.chunked_array(chunks, type=parents.schema.field(key).type)
    return dc.orphans_among(details, check.column, keys)
