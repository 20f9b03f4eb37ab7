"""Silver for one entity: the quality gate inside ``foreachBatch``, exactly-once writes,
deferred rows waiting for their parents, and replay of quarantined rows.

Every write of a micro-batch carries Delta's idempotent-write identity (the stream's app
id, the batch id), so a batch replayed after a crash skips what it already committed.
The passes over deferred and quarantined rows are idempotent by construction instead:
MERGE only ever replaces older snapshots, quarantine inserts are keyed, deletes are keyed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from order_pipeline.common.config import Entity, QualitySettings
from order_pipeline.common.io import (
    GX_RESULTS,
    QUALITY_METRICS,
    Lakehouse,
    Txn,
    deferred_table,
    quarantine_table,
    silver_table,
)
from order_pipeline.common.timing import StepTimer
from order_pipeline.common.upsert import latest_rows, merge_latest, silver_ddl
from order_pipeline.quality.gate import (
    GateOutcome,
    apply_quality_gate,
    raise_on_failing,
    split_by_outcome,
)
from order_pipeline.quality.metrics import METRICS_DDL, BatchCounts, count_outcomes, metrics_rows
from order_pipeline.quality.quarantine import (
    DEFERRED_AT,
    DEFERRED_ID,
    EXPIRED,
    OPEN,
    REPLAYED,
    deferred_as_candidates,
    deferred_ddl,
    quarantine_ddl,
    quarantined_as_candidates,
    to_deferred_rows,
    to_quarantine_rows,
)
from order_pipeline.quality.rules import RuleSet


class QuarantineRatioExceeded(RuntimeError):
    """Too large a share of a run's rows was quarantined: the scheduled run must alert."""


def no_fault(step: str, batch_id: int) -> None:
    """Default fault hook; tests replace it to crash at a named step."""


@dataclass
class SilverRun:
    """What one silver run did, for the run record and the ratio alert."""

    counts: BatchCounts = field(default_factory=BatchCounts)
    promoted: int = 0
    expired: int = 0
    batches: int = 0


@dataclass
class Silver:
    lake: Lakehouse
    entity: Entity
    entities: dict[str, Entity]
    rules: RuleSet
    run_id: str
    quality: QualitySettings
    progress: Callable[[str], None] = print
    fault_hook: Callable[[str, int], None] = no_fault
    run: SilverRun = field(default_factory=SilverRun)
    _silver_empty: bool | None = field(default=None, init=False, repr=False)

    @property
    def silver(self) -> str:
        return silver_table(self.entity.name)

    @property
    def quarantine(self) -> str:
        return quarantine_table(self.entity.name)

    @property
    def deferred(self) -> str:
        return deferred_table(self.entity.name)

    def silver_is_empty(self) -> bool:
        """Whether silver has no rows yet (asked once per run: only this run writes it)."""
        if self._silver_empty is None:
            self._silver_empty = self.lake.delta(self.silver).detail().first()["numFiles"] == 0
        return self._silver_empty

    def ensure_tables(self) -> None:
        # the gold build reads what changed from the change data feed (gold.CHANGE_DATA_FEED)
        cdf = {"delta.enableChangeDataFeed": "true"}
        self.lake.ensure(self.silver, silver_ddl(self.entity), properties=cdf)
        self.lake.ensure(self.quarantine, quarantine_ddl(self.entity))
        self.lake.ensure(self.deferred, deferred_ddl(self.entity))
        self.lake.ensure(QUALITY_METRICS, METRICS_DDL)

    def parent_keys(self, spark: SparkSession) -> dict[str, DataFrame]:
        keys = {}
        for parent in {r.parent for r in self.rules.rules if r.kind == "foreign_key"}:
            key = self.entities[parent].key
            table = silver_table(parent)
            if spark.catalog.tableExists(table):
                keys[parent] = spark.table(table).select(key)
            else:
                keys[parent] = spark.createDataFrame([], f"`{key}` string")
        return keys

    def check(self, df: DataFrame) -> DataFrame:
        return df.transform(apply_quality_gate(self.rules, self.parent_keys(df.sparkSession)))

    # -- the micro-batch ----------------------------------------------------------------
    def process_batch(self, batch: DataFrame, batch_id: int, app_id: str) -> None:
        steps = StepTimer()
        checked = self.lake.cache(self.check(batch))
        try:
            outcome = split_by_outcome(checked)
            with steps("check"):
                counts = count_outcomes(self.rules, checked)
            if counts.failing:
                raise_on_failing(self.rules, outcome.failing, self.entity.columns)
            self.fault_hook("checked", batch_id)
            self.write_batch(outcome, counts, batch_id, Txn(app_id, batch_id), steps)
            if self.quality.gx_validation:
                with steps("gx"):
                    self.validate_with_gx(batch, batch_id, Txn(app_id, batch_id))
            self.run.counts.add(counts)
            self.run.batches += 1
            self.progress(
                f"  {self.silver}: batch {batch_id}: {counts.checked} checked, {counts.passed} "
                f"passed, {counts.quarantined} quarantined, {counts.deferred} deferred ({steps})"
            )
            self.fault_hook("batch_done", batch_id)
        finally:
            self.lake.release(checked)

    def write_batch(
        self,
        outcome: GateOutcome,
        counts: BatchCounts,
        batch_id: int,
        txn: Txn,
        steps: StepTimer | None = None,
    ) -> None:
        steps = steps or StepTimer()
        if counts.passed:
            with steps("merge"):
                if self.silver_is_empty():
                    rows = self.in_key_ranges(outcome.passed, counts.passed)
                    self.lake.append(
                        rows.transform(latest_rows(self.entity, self.run_id)), self.silver, txn
                    )
                else:
                    merge_latest(self.silver, outcome.passed, self.entity, self.run_id, txn)
                self._silver_empty = False
        self.fault_hook("merged", batch_id)
        if counts.quarantined:
            rows = outcome.quarantined.transform(
                to_quarantine_rows(self.entity, batch_id, self.run_id)
            )
            with steps("quarantine"):
                self.lake.append(rows, self.quarantine, txn)
        self.fault_hook("quarantined", batch_id)
        if counts.deferred:
            rows = outcome.deferred.transform(to_deferred_rows(self.entity, batch_id, self.run_id))
            with steps("deferred"):
                self.lake.append(rows, self.deferred, txn)
        metrics = metrics_rows(
            outcome.passed.sparkSession, self.rules, counts, self.run_id, batch_id, "stream"
        )
        with steps("metrics"):
            self.lake.append(metrics, QUALITY_METRICS, txn)

    def in_key_ranges(self, passed: DataFrame, rows: int) -> DataFrame:
        """The first load in files of ``silver_file_rows`` rows, each holding one key range
        (the per-key aggregation reuses the range partitioning): later MERGEs bound the
        key and skip every file outside the batch's range (``upsert.key_match``)."""
        files = max(1, math.ceil(rows / self.lake.profile.silver_file_rows))
        return passed.repartitionByRange(files, F.col(self.entity.key))

    def validate_with_gx(self, batch: DataFrame, batch_id: int, txn: Txn) -> None:
        from order_pipeline.quality.gx import gx_result_rows, validate_batch

        result = validate_batch(self.rules, batch)
        rows = gx_result_rows(batch.sparkSession, self.rules, result, self.run_id, batch_id)
        self.lake.ensure(GX_RESULTS, rows.schema)
        self.lake.append(rows, GX_RESULTS, txn)

    # -- deferred rows ------------------------------------------------------------------
    def resolve_deferred(self, now: datetime | None = None) -> tuple[int, int]:
        """Promote deferred rows whose parents arrived; expire those older than the limit.
        Returns (promoted, expired)."""
        if not self.rules.of("defer"):
            return 0, 0  # nothing of this entity is ever deferred
        pending = self.lake.read(self.deferred)
        if pending.isEmpty():
            return 0, 0
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(seconds=self.quality.defer_max_age_seconds)
        checked = self.lake.cache(
            self.check(pending.transform(deferred_as_candidates(self.entity)))
        )
        try:
            outcome = split_by_outcome(checked)
            counts = count_outcomes(self.rules, checked)
            if counts.failing:
                raise_on_failing(self.rules, outcome.failing, self.entity.columns)
            expired = outcome.deferred.where(F.col(DEFERRED_AT) <= F.lit(cutoff))
            promoted_n, requarantined_n = counts.passed, counts.quarantined
            expired_n = expired.count() if counts.deferred else 0
            if promoted_n:
                merge_latest(self.silver, outcome.passed, self.entity, self.run_id)
            to_quarantine = expired.transform(
                to_quarantine_rows(self.entity, F.col("_batch_id"), self.run_id, EXPIRED)
            ).unionByName(
                outcome.quarantined.transform(
                    to_quarantine_rows(self.entity, F.col("_batch_id"), self.run_id, OPEN)
                )
            )
            if expired_n or requarantined_n:
                self.insert_quarantine_once(to_quarantine)
            resolved = (
                outcome.passed.select(DEFERRED_ID)
                .unionByName(expired.select(DEFERRED_ID))
                .unionByName(outcome.quarantined.select(DEFERRED_ID))
                .distinct()
            )
            if promoted_n or expired_n or requarantined_n:
                self.lake.delta(self.deferred).alias("t").merge(
                    resolved.alias("s"), f"t.{DEFERRED_ID} = s.{DEFERRED_ID}"
                ).whenMatchedDelete().execute()
        finally:
            self.lake.release(checked)
        self.run.promoted += promoted_n
        self.run.expired += expired_n
        return promoted_n, expired_n

    def insert_quarantine_once(self, rows: DataFrame) -> None:
        """Insert quarantine rows unless the same id is already there (safe to repeat)."""
        self.lake.delta(self.quarantine).alias("t").merge(
            rows.dropDuplicates(["quarantine_id"]).alias("s"), "t.quarantine_id = s.quarantine_id"
        ).whenNotMatchedInsertAll().execute()

    # -- replay -------------------------------------------------------------------------
    def replay(
        self, rule: str | None = None, statuses: tuple[str, ...] = (OPEN,)
    ) -> tuple[int, int]:
        """Re-check quarantined rows against the current rules and parents; MERGE those
        that pass through the same path as the stream and mark them replayed.
        Returns (checked, replayed)."""
        selected = self.lake.read(self.quarantine).where(F.col("status").isin(*statuses))
        if rule is not None:
            self.rules.named(rule)  # an unknown rule name is an error, not an empty replay
            selected = selected.where(F.array_contains("reasons", rule))
        candidates = selected.transform(quarantined_as_candidates(self.entity))
        checked = self.lake.cache(self.check(candidates))
        try:
            n_checked = checked.count()
            passed = split_by_outcome(checked).passed
            n_passed = passed.count()
            if n_passed:
                merge_latest(self.silver, passed, self.entity, self.run_id)
                ids = passed.select("quarantine_id").distinct()
                self.lake.delta(self.quarantine).alias("t").merge(
                    ids.alias("s"), "t.quarantine_id = s.quarantine_id"
                ).whenMatchedUpdate(
                    condition=F.col("t.status").isin(*statuses),
                    set={
                        "status": F.lit(REPLAYED),
                        "status_changed_at": F.current_timestamp(),
                        "status_run_id": F.lit(self.run_id),
                    },
                ).execute()
        finally:
            self.lake.release(checked)
        return n_checked, n_passed

    # -- the run ------------------------------------------------------------------------
    def check_quarantine_ratio(self) -> str | None:
        """Fail (or warn, per config) when the run quarantined too large a share."""
        counts = self.run.counts
        if not counts.checked:
            return None
        ratio = counts.quarantined / counts.checked
        if ratio <= self.rules.max_quarantine_ratio:
            return None
        message = (
            f"{self.entity.name}: {counts.quarantined} of {counts.checked} rows "
            f"({ratio:.1%}) quarantined in run {self.run_id}, above the limit of "
            f"{self.rules.max_quarantine_ratio:.1%} (conf/quality/{self.entity.name}.yml)"
        )
        if self.rules.on_ratio_breach == "fail":
            raise QuarantineRatioExceeded(message)
        self.progress(f"WARNING: {message}")
        return message
