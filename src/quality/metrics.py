"""ops_quality_metrics: rows checked and failed per rule and batch (the counterpart of
Delta Live Tables' expectation metrics), computed in one aggregation over a checked batch."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from order_pipeline.common.contract import (
    DELETED,
    FAILED_DEFER,
    FAILED_FAIL,
    FAILED_QUARANTINE,
    METRICS_DDL,
    REASONS,
)
from order_pipeline.common.frames import local_frame
from order_pipeline.quality.rules import RuleSet

OUTCOMES = ("quarantined", "deferred", "failing")
# measured on the passing rows of a micro-batch, for the run's reconciliation
# (quality/dataset_checks.Reconciliation): the rows, their distinct keys (the MERGE's source
# rows), those of which silver already held a newer or equal snapshot, the silver rows
# the batch's MERGE (or first-load append) wrote, those a tombstone beat and the deletes of
# keys silver did not hold
PASSING_OUTCOMES = ("passing", "merge_keys", "superseded_by_silver", "upserted",
                    "behind_tombstones", "deletes_absent")  # fmt: skip
OUTCOME_PREFIX = "outcome:"
STREAM = "stream"  # metrics rows of micro-batches (other sources: replay, deferred passes)


@dataclass
class BatchCounts:
    checked: int = 0
    quarantined: int = 0
    deferred: int = 0
    failing: int = 0
    per_rule: dict[str, int] = field(default_factory=dict)
    passing: int = 0
    merge_keys: int = 0
    superseded_by_silver: int = 0
    upserted: int = 0
    behind_tombstones: int = 0
    deletes_absent: int = 0
    # the passing rows' smallest and largest key, deletes and whether a key is null, when
    # counted (count_outcomes' ``range_of``): what the MERGE needs, found in the same pass
    passing_range: tuple[object, object, int, bool] | None = field(default=None, repr=False)

    @property
    def passed(self) -> int:
        return self.checked - self.quarantined - self.deferred - self.failing

    def add(self, other: BatchCounts) -> None:
        self.checked += other.checked
        self.quarantined += other.quarantined
        self.deferred += other.deferred
        self.failing += other.failing
        for name in PASSING_OUTCOMES:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for rule, n in other.per_rule.items():
            self.per_rule[rule] = self.per_rule.get(rule, 0) + n


def count_outcomes(
    ruleset: RuleSet, checked: DataFrame, key: str | None = None, range_of: str | None = None
) -> BatchCounts:
    """The batch's outcomes in one aggregation; with the entity's ``key``, the passing rows
    are also counted as such (not as the remainder) with their distinct keys; with
    ``range_of`` (the entity's key) also the passing rows' ``passing_range``."""
    has = {name: F.size(F.col(name)) > 0 for name in (FAILED_FAIL, FAILED_QUARANTINE, FAILED_DEFER)}
    aggregates = [
        F.count(F.lit(1)).alias("checked"),
        F.count_if(has[FAILED_FAIL]).alias("failing"),
        F.count_if(~has[FAILED_FAIL] & has[FAILED_QUARANTINE]).alias("quarantined"),
        F.count_if(~has[FAILED_FAIL] & ~has[FAILED_QUARANTINE] & has[FAILED_DEFER]).alias(
            "deferred"
        ),
    ]
    aggregates += [
        F.count_if(F.array_contains(REASONS, rule.name)).alias(f"rule_{i}")
        for i, rule in enumerate(ruleset.rules)
    ]
    passing = ~has[FAILED_FAIL] & ~has[FAILED_QUARANTINE] & ~has[FAILED_DEFER]
    if key is not None:
        aggregates += [
            F.count_if(passing).alias("passing"),
            F.count_distinct(F.when(passing, F.col(key))).alias("merge_keys"),
        ]
    if range_of is not None:
        has_deletes = DELETED in checked.columns
        deleted = F.coalesce(F.col(DELETED), F.lit(False)) if has_deletes else F.lit(False)
        aggregates += [
            F.min(F.when(passing, F.col(range_of))).alias("range_low"),
            F.max(F.when(passing, F.col(range_of))).alias("range_high"),
            F.count_if(passing & deleted).alias("range_deletes"),
            F.count_if(passing & F.col(range_of).isNull()).alias("range_nulls"),
        ]
    row = checked.agg(*aggregates).first()
    passing_range = (
        (row["range_low"], row["range_high"], int(row["range_deletes"]), row["range_nulls"] > 0)
        if range_of is not None
        else None
    )
    return BatchCounts(
        checked=row["checked"],
        quarantined=row["quarantined"],
        deferred=row["deferred"],
        failing=row["failing"],
        per_rule={rule.name: row[f"rule_{i}"] for i, rule in enumerate(ruleset.rules)},
        passing=row["passing"] if key is not None else 0,
        merge_keys=row["merge_keys"] if key is not None else 0,
        passing_range=passing_range,
    )


def metrics_rows(
    spark: SparkSession,
    ruleset: RuleSet,
    counts: BatchCounts,
    run_id: str,
    batch_id: int,
    source: str,
) -> DataFrame:
    now = datetime.now(UTC)
    rows = [
        (ruleset.entity, run_id, batch_id, source, rule.name, rule.severity, counts.checked,
         counts.per_rule.get(rule.name, 0), now)
        for rule in ruleset.rules
    ]  # fmt: skip
    rows += [
        (ruleset.entity, run_id, batch_id, source, f"{OUTCOME_PREFIX}{outcome}", "outcome", counts.checked,
         getattr(counts, outcome), now)
        for outcome in (*OUTCOMES, *PASSING_OUTCOMES)
    ]  # fmt: skip
    return local_frame(spark, rows, METRICS_DDL)


def run_counts(ruleset: RuleSet, rows: Iterable[Row]) -> tuple[BatchCounts, int]:
    """A run's totals from its metrics rows (``batch_id``, ``rule``, ``rows_checked``,
    ``rows_failed``: one row per rule and outcome of each batch), and its batch count."""
    batches: dict[int, BatchCounts] = {}
    for row in rows:
        counts = batches.setdefault(row["batch_id"], BatchCounts(checked=row["rows_checked"]))
        rule = row["rule"]
        if rule.startswith(OUTCOME_PREFIX):
            outcome = rule.removeprefix(OUTCOME_PREFIX)
            if outcome in (*OUTCOMES, *PASSING_OUTCOMES):
                setattr(counts, outcome, row["rows_failed"])
        elif rule in {r.name for r in ruleset.rules}:
            counts.per_rule[rule] = row["rows_failed"]
    total = BatchCounts()
    for counts in batches.values():
        total.add(counts)
    return total, len(batches)
