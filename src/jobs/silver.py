"""Silver for one entity: stream bronze_<entity> through the quality gate into
silver_<entity>, exactly once; deferred rows waiting for their parents; replay of
quarantined rows.

``SilverBatch`` is the ``foreachBatch`` function. On serverless (Spark Connect) it is
pickled and runs in a separate Python process, so it holds only plain settings, works on
the batch's own session, and hands nothing back through Python state: what a run did is
read back by the task from what the batches wrote (their ops_quality_metrics rows).

Every append of a micro-batch carries Delta's idempotent-write identity (the stream's app
id, the batch id) as writer options, so a batch replayed after a crash skips what it
already committed. The silver MERGE only ever replaces a row by a strictly newer one, so
replaying it changes nothing even where the platform refuses the identity for MERGE.
The passes over deferred and quarantined rows are idempotent by construction too:
quarantine inserts are keyed, deletes are keyed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from order_pipeline.common.config import Entity, Profile
from order_pipeline.common.contract import (
    BATCH_ID,
    CHANGE_DATA_FEED,
    CORRUPT_RECORD,
    DEFERRED_AT,
    DEFERRED_ID,
    DELETED,
    DELETED_BY,
    EXPIRED,
    GX_RESULTS,
    METRICS_DDL,
    OPEN,
    OPS_TABLE_PROPERTIES,
    PARSE_ISSUES,
    QUALITY_METRICS,
    RAW_LINE,
    REPLAYED,
    RESCUED_DATA,
    SOURCE_FILE,
    bronze_ddl,
    bronze_table,
    deferred_ddl,
    deferred_table,
    personal_properties,
    quarantine_ddl,
    quarantine_table,
    silver_checkpoint,
    silver_ddl,
    silver_table,
    silver_task,
    tombstone_ddl,
    tombstone_table,
)
from order_pipeline.common.delta_log import earliest_instant
from order_pipeline.common.inputs import Consumed, Inputs, Versions, checkpoint_due
from order_pipeline.common.io import (
    KeyBounds,
    Lakehouse,
    Txn,
    WhenMatched,
    WhenNotMatched,
    key_bounds,
    key_range_match,
    sql_literal,
)
from order_pipeline.common.timing import StepTimer
from order_pipeline.jobs import checks
from order_pipeline.jobs.task import (
    FaultHook,
    TaskContext,
    TaskResult,
    context_from_args,
    full_refresh_way_out,
    no_fault,
    run_entry_point,
    task_parser,
)
from order_pipeline.quality.dataset_checks import Written, where_snapshots_go, written_by_merge
from order_pipeline.quality.gate import (
    GateOutcome,
    apply_quality_gate,
    raise_on_failing,
    split_by_outcome,
)
from order_pipeline.quality.metrics import (
    STREAM,
    BatchCounts,
    count_outcomes,
    metrics_rows,
    run_counts,
)
from order_pipeline.quality.quarantine import (
    deferred_as_candidates,
    quarantined_as_candidates,
    raw_text_is_faithful,
    to_deferred_rows,
    to_quarantine_rows,
)
from order_pipeline.quality.rules import RuleSet, load_rules, rules_path
from order_pipeline.transforms.latest import (
    TOMB_KEY,
    TOMB_SEQ,
    cascade_parent_deletes,
    latest_per_key,
    newer_condition,
    not_behind_tombstones,
    silver_values,
    tombstone_rows,
    with_deletes,
)
from order_pipeline.transforms.parse import parse_lines


class QuarantineRatioExceeded(RuntimeError):
    """Too large a share of a run's rows was quarantined: the scheduled run must alert."""


def merge_latest(
    lake: Lakehouse,
    table: str,
    updates: DataFrame,
    entity: Entity,
    run_id: str,
    txn: Txn | None = None,
    append: bool = False,
    after_silver: Callable[[], None] | None = None,
    reconcile: bool = False,
    layout: Callable[[DataFrame], DataFrame] | None = None,
    bounds: KeyBounds | None = None,
) -> Written:
    """MERGE the latest snapshot per key into ``table``; a row only replaces an older one,
    a delete removes an older one, and the deletes become tombstones.

    The match condition also bounds the target key by the batch's smallest and largest key
    (``io.key_range_match``): silver is written in key ranges (``SilverBatch.in_key_ranges``),
    so a batch of recent keys does not read the whole table's history. ``append``: silver is
    empty, so the rows are appended instead (the first load).

    A snapshot a tombstone beats (its sequence not newer than the key's newest delete) is
    dropped first: that is what stops an older upsert landing after a delete, a replayed
    quarantine row or a promoted deferred row from bringing the key back. The tombstones
    are written after silver: a crash between the two leaves the delete to be redone by
    the replayed batch (silver no longer has the row, the tombstone is written then).

    Replaying this changes nothing, with or without ``txn``: a snapshot replaces or deletes a
    row only when it is strictly newer under ``latest.ordering_columns``, and a tombstone only
    moves to a strictly newer delete, so the second time nothing matches. That is what keeps
    silver exactly once where the platform refuses the idempotent-write session settings
    (serverless); where it allows them, ``txn`` makes the replayed MERGE a skipped commit as
    well.

    ``reconcile``: also count where the newest snapshots went (``Written``), for the run's
    reconciliation check: from the MERGE's own report, or against silver before the write
    where the batch holds deletes; the first load without deletes or tombstones writes each
    key's newest snapshot, as many as the batch has keys. Without it nothing is counted.

    ``layout``: how the first load's rows are laid out in files (``append``; the per-key
    reduction reuses its partitioning), applied to the write only, so that the batch's key
    range is read without it. ``bounds``: ``updates``' ``key_bounds`` when the caller
    already has them (the gate's own count of the batch), keys counted if ``reconcile``.
    """
    updates = with_deletes(updates)
    tombstones = tombstone_table(entity.name)
    lake.ensure(tombstones, tombstone_ddl(entity))
    laid_out = layout(updates) if append and layout is not None else updates
    latest = laid_out.transform(latest_per_key(entity))
    # no tombstone to beat (known from the log locally, as long as nothing was ever
    # deleted): the newest snapshot of each key is the source, one per key
    no_tombstones = lake.known_empty(tombstones)
    if not no_tombstones:
        latest = latest.transform(not_behind_tombstones(entity, lake.read(tombstones)))
    values = silver_values(entity, run_id)
    source = latest.alias("s").select(
        *[value.alias(name) for name, value in values.items()], DELETED, DELETED_BY
    )
    written = Written()
    newer = newer_condition(entity)
    if bounds is None:
        bounds = key_bounds(updates, entity.key, count_keys=reconcile)
    sources = None
    if reconcile:
        sources = bounds.keys if no_tombstones else source.count()
    key_range = (bounds.low, bounds.high)

    def snapshots_go() -> Written:
        return where_snapshots_go(source, None if append else lake.read(table), entity.key,
                                  newer, key_range)  # fmt: skip

    # Without deletes, each newest snapshot is either written or left to the not older one
    # silver holds, which the MERGE's own report tells apart; a delete of a key silver does
    # not hold writes nothing as well, so a batch with deletes is counted against silver
    # before the write, as is a first load (no MERGE to report) with deletes or tombstones;
    # without either, the first load writes the newest snapshot of each of its keys.
    if reconcile and append and no_tombstones and not bounds.deletes:
        assert bounds.keys is not None
        written = Written(rows=bounds.keys, upserted=bounds.keys)  # one newest row per key
    elif reconcile and (append or bounds.deletes):
        written = snapshots_go()
    if append:
        lake.append(source.where(~F.col(DELETED)).select(*values), table, txn)
    else:
        columns = {c: f"s.`{c}`" for c in values}
        reported = lake.merge(
            source,
            table,
            key_range_match(entity.key, bounds),
            [
                WhenMatched(condition=f"s.`{DELETED}` AND {newer}", delete=True),
                WhenMatched(condition=newer, set=columns),
                WhenNotMatched(condition=f"NOT s.`{DELETED}`", values=columns),
            ],
            txn=txn,
            idempotent_by_content=True,
        )
        upserted = sum(reported.get(f"num_{n}_rows", 0) for n in ("inserted", "updated", "deleted"))
        if reconcile and not bounds.deletes:
            # a MERGE skipped as already committed (txn) reports nothing and changed nothing:
            # silver already held its rows, counted against it as superseded
            assert sources is not None
            written = written_by_merge(sources, upserted) if reported else snapshots_go()
        written.upserted = upserted
    if after_silver is not None:
        after_silver()
    if not bounds.deletes:
        return written
    deletes = updates.where(F.col(DELETED))
    # the newest delete per key, winner or not: a delete that lost to a newer snapshot still
    # dates the key's deletion, which a parent's children are judged by (on_delete)
    key, sequence = entity.key, entity.sequence
    lake.merge(
        deletes.transform(latest_per_key(entity)).transform(tombstone_rows(entity, run_id)),
        tombstones,
        f"t.`{key}` = s.`{key}`",
        [WhenMatched(condition=f"s.`{sequence}` > t.`{sequence}`"), WhenNotMatched()],
        txn=txn,
        idempotent_by_content=True,
    )
    return written


def parent_tombstones(
    lake: Lakehouse, entity: Entity, entities: dict[str, Entity]
) -> dict[str, DataFrame]:
    """Every parent's tombstones as (TOMB_KEY, TOMB_SEQ) (empty before any delete)."""
    tombs = {}
    for parent in sorted(set(entity.parents.values())):
        spec = entities[parent]
        table = tombstone_table(parent)
        if lake.exists(table) and not lake.known_empty(table):
            tombs[parent] = lake.read(table).select(
                F.col(spec.key).alias(TOMB_KEY), F.col(spec.sequence).alias(TOMB_SEQ)
            )
        else:
            tombs[parent] = lake.spark.createDataFrame(
                [],
                f"`{TOMB_KEY}` {spec.fields[spec.key]}, `{TOMB_SEQ}` {spec.fields[spec.sequence]}",
            )
    return tombs


def parent_keys(
    lake: Lakehouse,
    rules: RuleSet,
    entities: dict[str, Entity],
    tombstones: dict[str, DataFrame] | None = None,
) -> dict[str, DataFrame]:
    """The silver keys of every parent a foreign-key rule names (empty before it exists),
    and, for a relation whose on_delete is keep, the parent's deleted keys: a child of a
    deleted parent is kept, not deferred."""
    keys = {}
    entity = entities[rules.entity]
    for rule in rules.rules:
        if rule.kind != "foreign_key":
            continue
        parent = rule.parent
        assert parent is not None
        key = entities[parent].key
        table = silver_table(parent)
        if lake.exists(table):
            keys[parent] = lake.read(table).select(key)
        else:
            keys[parent] = lake.spark.createDataFrame([], f"`{key}` string")
        if tombstones is not None and entity.on_parent_delete.get(rule.column) == "keep":
            deleted = tombstones[parent].select(F.col(TOMB_KEY).alias(key))
            keys[parent] = keys[parent].unionByName(deleted).distinct()
    return keys


def check(lake: Lakehouse, rules: RuleSet, entities: dict[str, Entity], df: DataFrame) -> DataFrame:
    """The quality gate over ``df``, after the deletes of parents reached it: rows of a
    deleted parent's cascade relation become deletes, those of a quarantine relation fail
    its parent_deleted rule, those of a keep relation find their parent."""
    entity = entities[rules.entity]
    tombs = parent_tombstones(lake, entity, entities)
    cascaded = df.transform(cascade_parent_deletes(entity, tombs))
    return cascaded.transform(
        apply_quality_gate(
            rules,
            parent_keys(lake, rules, entities, tombs),
            tombs,
            identity=(entity.key, entity.sequence),
        )
    )


@dataclass
class SilverBatch:
    """The ``foreachBatch`` function of a silver stream: gate one micro-batch and write its
    parts exactly once. Plain settings only, so that it pickles for Spark Connect."""

    profile: Profile
    entity: Entity
    entities: dict[str, Entity]
    rules: RuleSet
    run_id: str
    app_id: str
    quarantine: str  # the quarantine table's (possibly schema-qualified) name
    progress: Callable[[str], None] = print
    fault_hook: FaultHook = no_fault
    # Whether silver had no rows when last looked at. Only this stream writes silver while
    # it runs, so once seen non-empty it stays so; a fresh copy (another process, a
    # restarted query) looks again.
    _silver_empty: bool | None = field(default=None, repr=False)

    @property
    def silver(self) -> str:
        return silver_table(self.entity.name)

    @property
    def deferred(self) -> str:
        return deferred_table(self.entity.name)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        lake = Lakehouse.for_batch(batch, self.profile)
        steps = StepTimer()
        checked = lake.cache(check(lake, self.rules, self.entities, batch))
        try:
            outcome = split_by_outcome(checked)
            with steps("check"):
                counts = count_outcomes(
                    self.rules, checked, self.reconciled_key, range_of=self.entity.key
                )
            if counts.failing:
                raise_on_failing(self.rules, outcome.failing, self.entity.columns)
            self.fault_hook("checked", batch_id)
            self.write(lake, outcome, counts, batch_id, Txn(self.app_id, batch_id), steps)
            if self.profile.quality.gx_validation:
                with steps("gx"):
                    self.validate_with_gx(lake, batch, batch_id, Txn(self.app_id, batch_id))
            self.progress(
                f"  {self.silver}: batch {batch_id}: {counts.checked} checked, {counts.passed} "
                f"passed, {counts.quarantined} quarantined, {counts.deferred} deferred ({steps})"
            )
            self.fault_hook("batch_done", batch_id)
        finally:
            lake.release(checked)

    @property
    def reconciled_key(self) -> str | None:
        """The key, when the run is reconciled: its batches then count passing rows and
        their keys (quality/dataset_checks.Reconciliation)."""
        return self.entity.key if self.rules.checks("reconciliation") else None

    def silver_is_empty(self, lake: Lakehouse) -> bool:
        if self._silver_empty is None:
            self._silver_empty = lake.is_empty(self.silver)
        return self._silver_empty

    def write(
        self,
        lake: Lakehouse,
        outcome: GateOutcome,
        counts: BatchCounts,
        batch_id: int,
        txn: Txn,
        steps: StepTimer,
    ) -> None:
        if counts.passed:
            with steps("merge"):
                empty = self.silver_is_empty(lake)
                reconcile = self.reconciled_key is not None
                written = merge_latest(
                    lake,
                    self.silver,
                    outcome.passed,
                    self.entity,
                    self.run_id,
                    txn,
                    append=empty,
                    after_silver=lambda: self.fault_hook("silver_merged", batch_id),
                    reconcile=reconcile,
                    layout=lambda rows: self.in_key_ranges(rows, counts.passed),
                    bounds=self.passing_bounds(counts),
                )
                if reconcile:
                    counts.upserted = written.upserted
                    counts.superseded_by_silver = written.superseded_by_silver
                    counts.deletes_absent = written.deletes_absent
                    counts.behind_tombstones = counts.merge_keys - written.rows
                self._silver_empty = False
        self.fault_hook("merged", batch_id)
        if counts.quarantined:
            rows = outcome.quarantined.transform(
                to_quarantine_rows(self.entity, batch_id, self.run_id)
            )
            with steps("quarantine"):
                lake.append(rows, self.quarantine, txn)
        self.fault_hook("quarantined", batch_id)
        if counts.deferred:
            rows = outcome.deferred.transform(to_deferred_rows(self.entity, batch_id, self.run_id))
            with steps("deferred"):
                lake.append(rows, self.deferred, txn)
        # The metrics rows are the batch's report to its task (see Silver.stream_counts):
        # written last, under the same identity, so they exist exactly when the batch did.
        metrics = metrics_rows(lake.spark, self.rules, counts, self.run_id, batch_id, STREAM)
        with steps("metrics"):
            lake.append(metrics, QUALITY_METRICS, txn)

    def passing_bounds(self, counts: BatchCounts) -> KeyBounds | None:
        """The passing rows' ``key_bounds``, from what the gate counted over them in the same
        pass (``count_outcomes``): no job of its own. Their keys are the distinct non-null
        ones the gate counted, and a null key as one more."""
        if counts.passing_range is None:
            return None
        low, high, deletes, null_key = counts.passing_range
        keys = counts.merge_keys + int(null_key) if self.reconciled_key is not None else None
        return KeyBounds(low, high, deletes, keys)

    def in_key_ranges(self, passed: DataFrame, rows: int) -> DataFrame:
        """The first load in files of ``silver_file_rows`` rows, each holding one key range
        (the per-key aggregation reuses the range partitioning): later MERGEs bound the
        key and skip every file outside the batch's range (``upsert.key_match``)."""
        files = max(1, math.ceil(rows / self.profile.silver_file_rows))
        return passed.repartitionByRange(files, F.col(self.entity.key))

    def validate_with_gx(self, lake: Lakehouse, batch: DataFrame, batch_id: int, txn: Txn) -> None:
        from order_pipeline.quality.gx import gx_result_rows, validate_batch

        result = validate_batch(self.rules, batch, lake.caches)
        rows = gx_result_rows(lake.spark, self.rules, result, self.run_id, batch_id)
        lake.ensure(GX_RESULTS, rows.schema, properties=OPS_TABLE_PROPERTIES)
        lake.append(rows, GX_RESULTS, txn)


@dataclass
class Silver:
    """The driver's side of silver: tables, the batch function, deferred rows, replay and
    the run's summary."""

    lake: Lakehouse
    entity: Entity
    entities: dict[str, Entity]
    rules: RuleSet
    run_id: str
    progress: Callable[[str], None] = print
    fault_hook: FaultHook = no_fault

    @property
    def profile(self) -> Profile:
        return self.lake.profile

    @property
    def silver(self) -> str:
        return silver_table(self.entity.name)

    @property
    def quarantine(self) -> str:
        return self.lake.quarantine(self.entity.name)

    @property
    def deferred(self) -> str:
        return deferred_table(self.entity.name)

    @property
    def tombstones(self) -> str:
        return tombstone_table(self.entity.name)

    def ensure_tables(self) -> None:
        # the gold build reads what changed from the change data feed
        # personal fields stay out of the statistics Delta keeps in its log (contract.py)
        entity = self.entity
        silver = silver_ddl(entity)
        self.lake.ensure(
            self.silver, silver, properties=personal_properties(entity, silver, CHANGE_DATA_FEED)
        )
        quarantine, deferred = quarantine_ddl(entity), deferred_ddl(entity)
        self.lake.ensure(
            self.quarantine, quarantine, properties=personal_properties(entity, quarantine)
        )
        self.lake.ensure(self.deferred, deferred, properties=personal_properties(entity, deferred))
        self.lake.ensure(self.tombstones, tombstone_ddl(self.entity))
        self.lake.ensure(QUALITY_METRICS, METRICS_DDL, properties=OPS_TABLE_PROPERTIES)

    def batch_function(self, app_id: str) -> SilverBatch:
        return SilverBatch(
            profile=self.profile,
            entity=self.entity,
            entities=self.entities,
            rules=self.rules,
            run_id=self.run_id,
            app_id=app_id,
            quarantine=self.quarantine,
            progress=self.progress,
            fault_hook=self.fault_hook,
        )

    def check(self, df: DataFrame) -> DataFrame:
        return check(self.lake, self.rules, self.entities, df)

    def stream_counts(self, app_id: str, after: int | None) -> tuple[BatchCounts, int]:
        """What this run's micro-batches did, read back from their metrics rows: the rows
        checked, passed, quarantined and deferred, and the number of batches, of every attempt
        of the run. Locally the rows are read from the files that the metrics commits of the
        stream's identity ``app_id`` added after version ``after`` (the version before the
        run's first attempt started the stream), with no Spark job; else by Spark."""
        columns = ["entity", "run_id", "source", "batch_id", "rule", "rows_checked", "rows_failed"]
        written = (
            self.lake.rows_written_by(QUALITY_METRICS, after, app_id, columns)
            if after is not None
            else None
        )
        if written is not None:
            mine = (self.entity.name, self.run_id, STREAM)
            rows = [r for r in written if (r["entity"], r["run_id"], r["source"]) == mine]
            return run_counts(self.rules, rows)
        rows = (
            self.lake.read(QUALITY_METRICS)
            .where(
                (F.col("entity") == self.entity.name)
                & (F.col("run_id") == self.run_id)
                & (F.col("source") == STREAM)
            )
            .select(*columns[3:])
            .collect()
        )
        return run_counts(self.rules, rows)

    # -- deferred rows ------------------------------------------------------------------
    def resolve_deferred(self, now: datetime | None = None) -> tuple[int, int]:
        """Promote deferred rows whose parents arrived; expire those older than the limit.
        Returns (promoted, expired)."""
        if not self.rules.of("defer"):
            return 0, 0  # nothing of this entity is ever deferred
        pending = self.lake.read(self.deferred)
        # how many rows wait, locally from the Delta log (no Spark job), else unknown
        state = self.lake.log_state(self.deferred)
        waiting = state.rows if state is not None else None
        if waiting == 0 or (waiting is None and pending.isEmpty()):
            return 0, 0
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(seconds=self.profile.quality.defer_max_age_seconds)
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
                merge_latest(self.lake, self.silver, outcome.passed, self.entity, self.run_id)
            self.fault_hook("deferred_promoted", None)
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
                self.lake.merge(
                    resolved,
                    self.deferred,
                    f"t.{DEFERRED_ID} = s.{DEFERRED_ID}",
                    [WhenMatched(delete=True)],
                )
            self.fault_hook("deferred_removed", None)
        finally:
            self.lake.release(checked)
        return promoted_n, expired_n

    def deferred_backlog(self) -> dict[str, object]:
        """How many rows wait for a parent, and since when the oldest does."""
        none: dict[str, object] = {"waiting": 0, "oldest_deferred_at": None}
        if not self.rules.of("defer"):
            return none
        state = self.lake.log_state(self.deferred)
        if state is not None and state.live_files == 0:
            return none
        # locally: no Spark job
        local = self.lake.live_rows(state, self.deferred, [DEFERRED_AT]) if state else None
        if local is not None:
            waiting, oldest = local.num_rows, earliest_instant(local.column(DEFERRED_AT))
        else:
            row = (
                self.lake.read(self.deferred)
                .agg(
                    F.count(F.lit(1)).alias("waiting"),
                    F.unix_micros(F.min(DEFERRED_AT)).alias("oldest"),  # an instant
                )
                .first()
            )
            waiting, micros = int(row["waiting"]), row["oldest"]
            oldest = None if micros is None else datetime.fromtimestamp(micros / 1e6, UTC)
        return {
            "waiting": waiting,
            "oldest_deferred_at": oldest.isoformat() if oldest is not None else None,
        }

    def insert_quarantine_once(self, rows: DataFrame) -> None:
        """Insert quarantine rows unless the same id is already there (safe to repeat)."""
        self.lake.merge(
            rows.dropDuplicates(["quarantine_id"]),
            self.quarantine,
            "t.quarantine_id = s.quarantine_id",
            [WhenNotMatched()],
        )

    # -- deletes of parents and tombstones -------------------------------------------------
    def apply_parent_deletes(self) -> tuple[int, int]:
        """Silver rows whose parent was deleted at or after their sequence, under a cascade
        or quarantine relation: cascaded ones are deleted (tombstones at the parent's delete),
        the others move to quarantine (reason <column>_parent_deleted) and leave silver.
        Returns (cascaded, quarantined). Safe to repeat: the quarantine insert is keyed, the
        silver delete matches the row quarantined only, and a cascade is a newest-wins delete."""
        relations = [c for c, r in self.entity.on_parent_delete.items() if r != "keep"]
        if not relations:
            return 0, 0
        tombs = parent_tombstones(self.lake, self.entity, self.entities)
        # pinned: the rows found must not change when the MERGEs below remove them (the
        # frames are recomputed for each write where the batch is not cached)
        current = self.lake.read(self.silver, self.lake.version(self.silver))
        reached = [
            current.join(
                tombs[self.entity.parents[c]],
                (F.col(c) == F.col(TOMB_KEY)) & (F.col(TOMB_SEQ) >= F.col(self.entity.sequence)),
                "left_semi",
            )
            for c in relations
        ]
        rows = reached[0]
        for more in reached[1:]:
            rows = rows.unionByName(more)
        candidates = rows.distinct().select(
            *self.entity.columns,
            F.lit(None).cast("string").alias(CORRUPT_RECORD),
            F.lit(None).cast("string").alias(RESCUED_DATA),
            F.array().cast("array<string>").alias(PARSE_ISSUES),
            F.lit(None).cast("string").alias(RAW_LINE),
            SOURCE_FILE,
            F.lit(None).cast("bigint").alias(BATCH_ID),
            F.lit(False).alias(DELETED),
        )
        checked = self.lake.cache(self.check(candidates))
        try:
            if checked.isEmpty():
                return 0, 0
            outcome = split_by_outcome(checked)
            cascaded = outcome.passed.where(F.col(DELETED))
            n_cascaded, n_quarantined = cascaded.count(), outcome.quarantined.count()
            if n_cascaded:
                merge_latest(self.lake, self.silver, cascaded, self.entity, self.run_id)
            if n_quarantined:
                self.insert_quarantine_once(
                    outcome.quarantined.transform(
                        to_quarantine_rows(self.entity, F.col(BATCH_ID), self.run_id, OPEN)
                    )
                )
                self.fault_hook("parent_deleted_quarantined", None)
                key, sequence = self.entity.key, self.entity.sequence
                self.lake.merge(
                    outcome.quarantined.select(key, sequence, SOURCE_FILE),
                    self.silver,
                    f"t.`{key}` = s.`{key}` AND t.`{sequence}` = s.`{sequence}` "
                    f"AND t.`{SOURCE_FILE}` <=> s.`{SOURCE_FILE}`",
                    [WhenMatched(delete=True)],
                )
        finally:
            self.lake.release(checked)
        return n_cascaded, n_quarantined

    def purge_tombstones(self, now: datetime | None = None) -> None:
        """Drop the tombstones older than conf/pipeline.yml's deletes.tombstone_retention."""
        retention = self.entity.tombstone_retention_seconds
        if retention is None:
            return
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=retention)
        self.lake.delete_where(self.tombstones, f"`{self.entity.sequence}` < {sql_literal(cutoff)}")

    # -- replay -------------------------------------------------------------------------
    def replay(
        self, rule: str | None = None, statuses: tuple[str, ...] = (OPEN,)
    ) -> tuple[int, int, int]:
        """Re-check quarantined rows against the current rules and parents; MERGE those
        that pass through the same path as the stream and mark them replayed.
        Returns (checked, replayed, kept because their raw text is not valid UTF-8)."""
        selected = self.lake.read(self.quarantine).where(F.col("status").isin(*statuses))
        if rule is not None:
            self.rules.named(rule)  # an unknown rule name is an error, not an empty replay
            selected = selected.where(F.array_contains("reasons", rule))
        reparse = parse_lines(self.entity, line="raw_record")
        candidates = selected.transform(quarantined_as_candidates(self.entity, reparse))
        checked = self.lake.cache(self.check(candidates))
        try:
            n_checked = checked.count()
            n_unfaithful = selected.where(~raw_text_is_faithful()).count()
            passed = split_by_outcome(checked).passed
            n_passed = passed.count()
            if n_passed:
                merge_latest(self.lake, self.silver, passed, self.entity, self.run_id)
                self.fault_hook("replay_merged", None)
                still = ", ".join(sql_literal(s) for s in statuses)
                self.lake.merge(
                    passed.select("quarantine_id").distinct(),
                    self.quarantine,
                    "t.quarantine_id = s.quarantine_id",
                    [
                        WhenMatched(
                            condition=f"t.status IN ({still})",
                            set={
                                "status": sql_literal(REPLAYED),
                                "status_changed_at": "current_timestamp()",
                                "status_run_id": sql_literal(self.run_id),
                            },
                        )
                    ],
                )
                self.fault_hook("replay_marked", None)
        finally:
            self.lake.release(checked)
        return n_checked, n_passed, n_unfaithful

    # -- the run ------------------------------------------------------------------------
    def check_quarantine_ratio(self, counts: BatchCounts) -> str | None:
        """Fail (or warn, per config) when the run quarantined too large a share."""
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


def build_silver(
    spark: SparkSession,
    ctx: TaskContext,
    progress: Callable[[str], None] = print,
    fault_hook: FaultHook = no_fault,
) -> Silver:
    entity = ctx.entity_spec()
    return Silver(
        lake=Lakehouse(spark, ctx.profile),
        entity=entity,
        entities=ctx.entities,
        rules=load_rules(entity, ctx.entities),
        run_id=ctx.run_id,
        progress=progress,
        fault_hook=fault_hook,
    )


def run(
    spark: SparkSession,
    ctx: TaskContext,
    progress: Callable[[str], None] = print,
    fault_hook: FaultHook = no_fault,
) -> TaskResult:
    silver = build_silver(spark, ctx, progress, fault_hook)
    lake, name = silver.lake, silver.entity.name
    checkpoint = silver_checkpoint(name)
    steps = StepTimer()  # where the task's time went, in its last progress line
    with steps("tables"):
        if ctx.full_refresh:
            for table in (silver.silver, silver.quarantine, silver.deferred, silver.tombstones):
                lake.drop(table)
            lake.reset_checkpoint(checkpoint)
        bronze = bronze_ddl(silver.entity)
        lake.ensure(
            bronze_table(name), bronze, properties=personal_properties(silver.entity, bronze)
        )
        silver.ensure_tables()
        app_id = lake.open_checkpoint(
            checkpoint,
            own=(silver.silver, silver.quarantine, silver.deferred),
            shared=(QUALITY_METRICS,),
            way_out=full_refresh_way_out(silver_task(name)),
            progress=progress,
            source=bronze_table(name),
        )
    batch = silver.batch_function(app_id)
    # the batches of every attempt of this run report to it (a retried task shares its run id)
    metrics_before = lake.version_before_run(QUALITY_METRICS, checkpoint, ctx.run_id)
    with steps("stream"):
        lake.run_stream(
            lake.read_stream(bronze_table(name)), checkpoint, batch, silver.silver, progress
        )
    # The batches may have run in another process (Spark Connect): what they did is read
    # back from the metrics rows they wrote, not from Python state.
    with steps("counts"):
        counts, batches = silver.stream_counts(app_id, metrics_before)
    versions = Versions.of(lake.profile, lake.spark)
    parents = parent_versions(silver.entity, versions)
    tombstones = tombstone_versions(silver.entity, versions)
    why = deferred_pass_due(ctx, parents, tombstones)
    promoted = expired = cascaded = parent_quarantined = 0
    before = ctx.previous.state.get("parent_tombstones") if ctx.previous is not None else None
    if before != tombstones:  # a parent deleted a key since the last pass, or a first pass
        with steps("parent deletes"):
            cascaded, parent_quarantined = silver.apply_parent_deletes()
    with steps("tombstones"):
        silver.purge_tombstones()
    if why is not None:
        with steps("deferred"):
            promoted, expired = silver.resolve_deferred()
    else:
        progress(
            f"  {silver.deferred}: no parent moved and no deferral expired since the last pass"
        )
    progress(
        f"  {silver.silver}: checked {counts.checked}, passed {counts.passed}, quarantined "
        f"{counts.quarantined}, deferred {counts.deferred}; earlier deferred rows promoted "
        f"{promoted}, expired {expired}"
    )
    with steps("checks"):
        found = checks.silver_checks(
            checks.SilverRun(lake, silver.entity, silver.rules, ctx.run_id, silver.silver, counts,
                             bool(counts.checked or promoted or expired),
                             ctx.previous.state if ctx.previous else None, ctx.full_refresh),
            progress,
        )  # fmt: skip
    alert = silver.check_quarantine_ratio(counts)
    with steps("backlog"):
        backlog = silver.deferred_backlog()
    progress(f"  {silver.silver}: task steps: {steps}")
    return TaskResult(
        rows_in=counts.checked,
        rows_out=counts.passed + promoted,
        details={
            "quarantined": counts.quarantined,
            "deferred": counts.deferred,
            "promoted": promoted,
            "expired": expired,
            "cascaded": cascaded,
            "parent_deleted_quarantined": parent_quarantined,
            "batches": batches,
            "ratio_warning": alert,
            "deferred_pass": why or "not needed",
            "checks": found.details,
        },
        state={
            "parents": parents,
            "parent_tombstones": tombstones,
            **backlog,
            **found.state,
        },
    )


# -- what a silver task consumes ---------------------------------------------------------
def parent_versions(entity: Entity, versions: Versions) -> dict[str, int | None]:
    return {p: versions(silver_table(p)) for p in sorted(set(entity.parents.values()))}


def tombstone_versions(entity: Entity, versions: Versions) -> dict[str, int | None]:
    """The Delta versions of the parents' tombstone tables: a parent's delete can reach this
    entity's rows in silver and in deferred (``Silver.apply_parent_deletes``)."""
    return {p: versions(tombstone_table(p)) for p in sorted(set(entity.parents.values()))}


def deferral_expired(ctx: TaskContext, oldest: str | None) -> bool:
    if oldest is None:
        return False
    expires = datetime.fromisoformat(oldest) + timedelta(
        seconds=ctx.profile.quality.defer_max_age_seconds
    )
    return datetime.now(UTC) >= expires


def deferred_pass_due(
    ctx: TaskContext,
    parents: dict[str, int | None],
    tombstones: dict[str, int | None] | None = None,
) -> str | None:
    """Why the deferred rows must be re-checked now, or None: only a parent that moved or a
    deferral that expired can change their outcome (rows deferred by this run's batches were
    checked against the parents as they are)."""
    previous = ctx.previous
    if previous is None or "waiting" not in previous.state:
        return "first pass since a full refresh or an upgrade"
    if not previous.state["waiting"]:
        return None
    if previous.state.get("parents") != parents:
        return "a parent table moved"
    if tombstones is not None and previous.state.get("parent_tombstones", {}) != tombstones:
        return "a parent deleted a key"
    if deferral_expired(ctx, previous.state.get("oldest_deferred_at")):
        return "a deferral expired"
    return None


def inputs(ctx: TaskContext, versions: Versions, previous: Consumed | None) -> Inputs:
    """The bronze table's version and the entity's rules; due while an output is missing,
    the stream has a batch in flight, or deferred rows wait and a parent moved or one of them
    expired."""
    entity, profile = ctx.entity_spec(), ctx.profile
    name = entity.name
    checkpoint = Path(profile.checkpoint_root) / silver_checkpoint(name)
    due = None
    quarantine = quarantine_table(name)
    if profile.quarantine_schema and profile.quarantine_schema != profile.schema:
        quarantine = f"{profile.quarantine_schema}.{quarantine}"
    outputs = [silver_table(name), quarantine, deferred_table(name), tombstone_table(name)]
    if missing := [t for t in outputs if versions(t) is None]:
        due = f"{missing[0]} does not exist"
    else:
        due = checkpoint_due(checkpoint, ran_before=previous is not None) or deferred_pass_due(
            replace(ctx, previous=previous),
            parent_versions(entity, versions),
            tombstone_versions(entity, versions),
        )
    rules = hashlib.sha256(rules_path(entity).read_bytes()).hexdigest()
    values = {
        "bronze": versions(bronze_table(name)),
        "rules": rules,
        "contract": entity.ddl(),
        # a parent's delete reaches this entity's rows already in silver (apply_parent_deletes)
        "parent_tombstones": tombstone_versions(entity, versions),
    }
    ruleset = load_rules(entity, ctx.entities)
    return Inputs(
        values,
        due,
        when_skipped=lambda progress: checks.silver_checks_when_skipped(
            ruleset, previous, progress
        ),
    )


def main(argv: list[str] | None = None) -> int:
    args = task_parser(
        "Quality-gate bronze rows of one entity and MERGE them into silver.", True
    ).parse_args(argv)
    ctx = context_from_args(args)
    return run_entry_point(silver_task(ctx.entity_spec().name), ctx, run, inputs)


if __name__ == "__main__":
    raise SystemExit(main())
