"""Dataset-level checks: properties of a whole table or of a run, beside the row rules.

Configured in ``conf/quality/<entity>.yml`` (freshness, volume, unique_key, reconciliation;
the silver task evaluates them) and ``conf/quality/gold.yml`` (references; the gold task),
each with a severity: ``warn`` records the result and goes on, ``fail`` records it and then
fails the task with a message naming the check, the entity and the figures.

Pure: the configuration model, the verdicts from measured figures, the ops_quality_metrics
rows of the results, and the small aggregations the jobs run over DataFrames they hand in.
Reading and writing tables is the jobs' business.

A result is one ops_quality_metrics row (``source`` = ``dataset``, ``batch_id`` null,
``rule`` = the check's name), in the table's existing columns:

    kind            rows_checked                         rows_failed
    freshness       1 (the table's newest row)           1 when it is older than max_age
    volume          rows this run read from bronze       rows beyond the allowed range
    unique_key      silver rows of the keys the run      rows beyond the first of a key
                    wrote
    reconciliation  bronze rows this run read            rows not accounted for
    references      gold_order_details rows checked      rows whose parent is missing

Every figure behind a verdict (ages, limits, medians, the reconciliation's terms) is in
the task's run record (ops_task_runs.details.checks) and in a failure's message.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from order_pipeline.common.config import ConfigError, SettingError, conf_dir, parse_duration
from order_pipeline.common.contract import DELETED

if TYPE_CHECKING:
    import pyarrow as pa

DATASET = "dataset"  # ops_quality_metrics.source of dataset checks' rows
SEVERITIES = ("warn", "fail")
ENTITY_KINDS = ("freshness", "volume", "unique_key", "reconciliation")
GOLD_KINDS = ("references",)
FRESHNESS_OF = ("silver", "bronze")  # newest updated_at in silver, newest ingest in bronze
CHECK_KEYS = {"name", "kind", "severity", "description", "of", "max_age", "runs", "factor",
              "column", "parent"}  # fmt: skip


class DatasetCheckFailed(RuntimeError):
    """A dataset check of severity ``fail`` found a violation; its result was recorded."""


@dataclass(frozen=True)
class DatasetCheck:
    name: str
    kind: str
    severity: str
    description: str = ""
    of: str | None = None  # freshness: silver or bronze
    max_age_seconds: int | None = None  # freshness
    runs: int | None = None  # volume: the median of the last N runs that read rows
    factor: float | None = None  # volume: "far" is above median*factor or below median/factor
    column: str | None = None  # references: the gold_order_details column
    parent: str | None = None  # references: the entity whose silver key it refers to

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise SettingError("severity", f"must be one of {SEVERITIES}, got {self.severity!r}")
        if self.kind == "freshness":
            if self.of not in FRESHNESS_OF:
                raise SettingError("of", f"a freshness check is of one of {FRESHNESS_OF}")
            if self.max_age_seconds is None or self.max_age_seconds <= 0:
                raise SettingError("max_age", "a freshness check needs a max_age like '2 days'")
        if self.kind == "volume":
            if not isinstance(self.runs, int) or isinstance(self.runs, bool) or self.runs < 1:
                raise SettingError("runs", f"a volume check needs runs >= 1, got {self.runs!r}")
            if not isinstance(self.factor, int | float) or self.factor <= 1:
                raise SettingError(
                    "factor", f"a volume check needs a factor above 1, got {self.factor!r}"
                )
        if self.kind == "references":
            if not self.column:
                raise SettingError("column", "a references check needs the column to check")
            if not self.parent:
                raise SettingError("parent", "a references check needs the parent entity")


def gold_checks_path() -> Path:
    return conf_dir() / "quality" / "gold.yml"


def load_dataset_checks(
    data: dict[str, Any], path: Path, kinds: tuple[str, ...]
) -> tuple[DatasetCheck, ...]:
    """The ``dataset_checks`` list of a conf/quality file; ConfigError names file and key."""
    raw = data.get("dataset_checks") or []
    if not isinstance(raw, list):
        raise ConfigError(path, "dataset_checks", "expected a list of checks")
    checks: list[DatasetCheck] = []
    for index, spec in enumerate(raw):
        where = f"dataset_checks[{index}]"
        if not isinstance(spec, dict):
            raise ConfigError(path, where, "expected a mapping")
        where = f"dataset_checks[{index}] ({spec.get('name', '?')})"
        if unknown := sorted(set(map(str, spec)) - CHECK_KEYS):
            raise ConfigError(path, f"{where}.{unknown[0]}", "unknown key")
        for key in ("name", "kind", "severity"):
            if not spec.get(key):
                raise ConfigError(path, f"{where}.{key}", "required key is missing")
        if spec["kind"] not in kinds:
            raise ConfigError(
                path, f"{where}.kind", f"unknown check {spec['kind']!r}; known here: {kinds}"
            )
        values = {k: v for k, v in spec.items() if k != "max_age"}
        if "max_age" in spec:
            values["max_age_seconds"] = parse_duration(spec["max_age"], path, f"{where}.max_age")
        try:
            checks.append(DatasetCheck(**values))
        except SettingError as exc:
            raise ConfigError(path, f"{where}.{exc.key}", exc.problem) from exc
    names = [c.name for c in checks]
    if duplicated := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(path, "dataset_checks", f"duplicate check names {duplicated}")
    return tuple(checks)


def load_gold_checks(inputs: Iterable[str], path: Path | None = None) -> tuple[DatasetCheck, ...]:
    """conf/quality/gold.yml's checks (none when the file does not exist)."""
    from order_pipeline.common.config import read_yaml

    path = path or gold_checks_path()
    if not path.is_file():
        return ()
    checks = load_dataset_checks(read_yaml(path), path, GOLD_KINDS)
    known = set(inputs)
    for index, check in enumerate(checks):
        if check.parent not in known:
            raise ConfigError(
                path,
                f"dataset_checks[{index}] ({check.name}).parent",
                f"{check.parent!r} is not one of gold's inputs {sorted(known)}",
            )
        if check.column not in ("order_id", "product_id", "customer_id"):
            raise ConfigError(
                path,
                f"dataset_checks[{index}] ({check.name}).column",
                f"{check.column!r} is not a key column of gold_order_details",
            )
    return checks


# -- verdicts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    check: DatasetCheck
    entity: str
    rows_checked: int
    rows_failed: int
    summary: str  # the figures, in words
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.rows_failed == 0

    def message(self) -> str:
        verdict = "passed" if self.passed else f"failed (severity {self.check.severity})"
        return f"{self.entity}: dataset check {self.check.name!r} ({self.check.kind}) {verdict}: {self.summary}"

    def as_detail(self) -> dict[str, Any]:
        return {
            "check": self.check.name,
            "kind": self.check.kind,
            "severity": self.check.severity,
            "passed": self.passed,
            "rows_checked": self.rows_checked,
            "rows_failed": self.rows_failed,
            **self.figures,
        }


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def freshness(
    check: DatasetCheck, entity: str, newest: datetime | None, now: datetime
) -> CheckResult:
    """The newest value older than ``max_age`` (no value at all: nothing ever arrived)."""
    assert check.max_age_seconds is not None
    what = "newest updated_at in silver" if check.of == "silver" else "newest ingest into bronze"
    limit = check.max_age_seconds
    figures: dict[str, Any] = {"of": check.of, "newest": newest and newest.isoformat(),
                               "max_age_seconds": limit, "now": now.isoformat()}  # fmt: skip
    if newest is None:
        return CheckResult(check, entity, 1, 1, f"no {what} at all (limit {_hours(limit)})",
                           {**figures, "age_seconds": None})  # fmt: skip
    age = (now - newest).total_seconds()
    figures["age_seconds"] = round(age, 3)
    stale = age > limit
    summary = (
        f"{what} is {newest.isoformat()}, {_hours(age)} old "
        f"({'over' if stale else 'within'} the limit of {_hours(limit)})"
    )
    return CheckResult(check, entity, 1, int(stale), summary, figures)


def volume(check: DatasetCheck, entity: str, rows: int, history: list[int]) -> CheckResult:
    """This run's rows against the median of the last ``runs`` earlier runs that read rows
    (newest first in ``history``); nothing is judged until that many exist, nor a run that
    read nothing (a run with nothing new is the freshness checks' business)."""
    assert check.runs is not None and check.factor is not None
    recent = [n for n in history if n > 0][: check.runs]
    figures: dict[str, Any] = {"rows": rows, "recent_runs": recent, "runs": check.runs,
                               "factor": check.factor}  # fmt: skip
    if rows == 0:
        return CheckResult(check, entity, 0, 0, "this run read no rows: not judged", figures)
    if len(recent) < check.runs:
        return CheckResult(
            check, entity, rows, 0,
            f"{rows} rows; only {len(recent)} of the {check.runs} earlier runs needed: not judged",
            figures,
        )  # fmt: skip
    median = statistics.median(recent)
    low, high = median / check.factor, median * check.factor
    figures.update(median=median, low=low, high=high)
    outside = max(0, round(rows - high), round(low - rows))
    summary = (
        f"{rows} rows read from bronze against a median of {median:g} over the last "
        f"{check.runs} runs (allowed {low:g} to {high:g}, factor {check.factor:g})"
    )
    return CheckResult(check, entity, rows, outside, summary, figures)


def unique_key(
    check: DatasetCheck, entity: str, key: str, checked: int, dup: Duplicates
) -> CheckResult:
    summary = (
        f"{checked} silver rows of the keys this run wrote; {dup.extra_rows} rows beyond the "
        f"first of a {key} ({dup.keys} keys held more than once"
        + (f", e.g. {dup.sample!r})" if dup.sample is not None else ")")
    )
    figures = {"key": key, "duplicated_keys": dup.keys, "sample_key": dup.sample}
    return CheckResult(check, entity, checked, dup.extra_rows, summary, figures)


@dataclass(frozen=True)
class Reconciliation:
    """Where the bronze rows a silver run's micro-batches read went, each term counted on
    its own (none is the remainder of the others):

    - ``bronze_rows``: the rows of the run's micro-batches;
    - ``quarantined`` / ``deferred``: rows a quarantine rule (or only a defer rule) matched;
    - ``upserted``: silver rows the batches' MERGEs inserted, updated or deleted, as the
      MERGE reports them (a first load's append writes one row per distinct key);
    - ``superseded_in_batch``: passing rows that lost to a newer (or equal) snapshot of
      their key in the same micro-batch (the passing rows counted, less their distinct keys);
    - ``superseded_by_silver``: a batch's newest snapshot of a key of which silver already
      held a newer or equal one (counted against silver before the MERGE, by the MERGE's
      own condition);
    - ``behind_tombstones``: a batch's newest snapshot of a key whose tombstone (a delete at
      a sequence not older) beats it: it cannot bring the deleted key back;
    - ``deletes_absent``: a batch's newest snapshot of a key is a delete and silver held no
      row of the key: it becomes a tombstone only.

    Rows the deferred pass promotes or expires, and replayed quarantine rows, were read from
    bronze by an earlier run: they are that run's ``deferred`` / ``quarantined``.
    """

    bronze_rows: int
    upserted: int
    quarantined: int
    deferred: int
    superseded_in_batch: int
    superseded_by_silver: int
    behind_tombstones: int = 0
    deletes_absent: int = 0

    @property
    def accounted(self) -> int:
        return (self.upserted + self.quarantined + self.deferred + self.superseded_in_batch
                + self.superseded_by_silver + self.behind_tombstones
                + self.deletes_absent)  # fmt: skip


def reconciliation(check: DatasetCheck, entity: str, terms: Reconciliation) -> CheckResult:
    diff = terms.bronze_rows - terms.accounted
    summary = (
        f"{terms.bronze_rows} bronze rows read = {terms.upserted} upserted into silver + "
        f"{terms.quarantined} quarantined + {terms.deferred} deferred + "
        f"{terms.superseded_in_batch} superseded in their batch + {terms.superseded_by_silver} "
        f"superseded by silver + {terms.behind_tombstones} behind a tombstone + "
        f"{terms.deletes_absent} deletes of absent keys = {terms.accounted}"
        + (
            ""
            if diff == 0
            else f": {abs(diff)} rows {'unaccounted for' if diff > 0 else 'too many'}"
        )
    )
    figures = {"terms": terms.__dict__, "difference": diff}
    return CheckResult(check, entity, terms.bronze_rows, abs(diff), summary, figures)


def references(
    check: DatasetCheck, table: str, checked: int, orphans: int, sample: str | None, scope: str
) -> CheckResult:
    summary = (
        f"{orphans} of {checked} {table} rows ({scope}) have no row in silver_{check.parent} "
        f"for their {check.column}" + (f", e.g. {sample!r}" if sample is not None else "")
    )
    figures = {"table": table, "column": check.column, "parent": check.parent,
               "scope": scope, "sample": sample}  # fmt: skip
    return CheckResult(check, "gold", checked, orphans, summary, figures)


# -- aggregations the jobs run ------------------------------------------------------------------
@dataclass(frozen=True)
class Duplicates:
    keys: int
    extra_rows: int
    sample: Any


def newest_value(df: DataFrame, column: str, since: datetime | None = None) -> datetime | None:
    """The greatest value of a timestamp column; with ``since``, over the rows at or after
    it only (Delta then skips every file whose statistics end before it), None when none."""
    if since is not None:
        df = df.where(F.col(column) >= F.lit(since))
    return _instant(df.agg(F.unix_micros(F.max(column))).first()[0])


def _instant(micros: int | None) -> datetime | None:
    """A timestamp read as unix_micros (an instant, whatever the session's zone)."""
    return None if micros is None else datetime.fromtimestamp(micros / 1e6, UTC)


def later(*values: datetime | None) -> datetime | None:
    """The latest of the values that exist (None: none does)."""
    return max((v for v in values if v is not None), default=None)


@dataclass(frozen=True)
class Touched:
    """The rows of silver a run wrote: how many, their smallest and largest key (the range
    the unique-key check reads) and their newest sequence value (silver's freshness)."""

    rows: int
    low: Any
    high: Any
    newest: datetime | None


def touched_keys(
    silver: DataFrame, key: str, sequence: str, run_column: str, run_id: str
) -> Touched:
    """One pass over the rows of silver the run wrote (Delta skips the other files by the
    run column's statistics)."""
    row = (
        silver.where(F.col(run_column) == run_id)
        .agg(F.count(F.lit(1)), F.min(key), F.max(key), F.unix_micros(F.max(sequence)))
        .first()
    )
    return Touched(int(row[0]), row[1], row[2], _instant(row[3]))


def duplicate_keys(
    silver: DataFrame, key: str, run_column: str, run_id: str, low: Any, high: Any
) -> tuple[int, Duplicates]:
    """Among silver's rows whose key lies in [low, high] (the keys the run wrote: a filter
    Delta skips files by), the keys held more than once of which the run wrote a row. Keys
    the run did not write were judged by the run that last wrote them."""
    groups = (
        silver.where(F.col(key).between(F.lit(low), F.lit(high)))
        .groupBy(key)
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.max((F.col(run_column) == run_id).cast("int")).alias("touched"),
        )
        .where(F.col("touched") == 1)
    )
    row = groups.agg(
        F.sum("n"),
        F.count_if(F.col("n") > 1),
        F.sum(F.when(F.col("n") > 1, F.col("n") - 1)),
        F.min(F.when(F.col("n") > 1, F.col(key))),
    ).first()
    return int(row[0] or 0), Duplicates(int(row[1] or 0), int(row[2] or 0), row[3])


def duplicate_keys_among(
    rows: pa.Table, key: str, run_column: str, run_id: str
) -> tuple[int, Duplicates]:
    """``duplicate_keys`` over silver's live rows read as Arrow (``key`` and ``run_column``):
    among the rows holding a key the run wrote a row of, how many, and which keys are held
    more than once."""
    import pyarrow.compute as pc

    keys = rows.column(key)
    mine = pc.fill_null(pc.equal(rows.column(run_column), run_id), False)
    held = keys.filter(pc.is_in(keys, value_set=pc.unique(keys.filter(mine))))
    counts = pc.value_counts(held)
    over = pc.greater(counts.field("counts"), 1)
    repeated = counts.field("counts").filter(over)
    extra = int(pc.sum(repeated).as_py() or 0) - len(repeated)
    sample = pc.min(counts.field("values").filter(over)).as_py() if len(repeated) else None
    return len(held), Duplicates(len(repeated), extra, sample)


@dataclass
class Written:
    """Where a micro-batch's newest snapshot per key went (``silver.merge_latest``), the
    silver-side terms of the reconciliation."""

    rows: int = 0  # newest snapshots a tombstone did not beat (the others: behind_tombstones)
    upserted: int = 0  # silver rows inserted, updated or deleted
    superseded_by_silver: int = 0  # silver held a snapshot of the key not older
    deletes_absent: int = 0  # deletes of keys silver did not hold: a tombstone only


def where_snapshots_go(
    winners: DataFrame,
    target: DataFrame | None,
    key: str,
    newer: str,
    key_range: tuple[object, object],
) -> Written:
    """Count the newest snapshot per key (``winners``, aliased ``s``, with ``DELETED``)
    against the target table (aliased ``t``; None when it is empty) before the write, by
    the MERGE's own ``newer`` condition: a matched snapshot that is not newer is left alone
    (superseded by silver), an unmatched delete deletes nothing. ``upserted`` is the rest,
    what the write will change; the MERGE's own report replaces it when there is one.

    One aggregate: the target is read only within ``key_range`` (the batch's smallest and
    largest key, known before), and the left join keeps each winner once (silver holds one
    row per key)."""
    s = winners.alias("s")
    deleted = F.col(f"s.`{DELETED}`")
    low, high = key_range
    if target is None or low is None:
        row = s.agg(F.count(F.lit(1)), F.count_if(deleted)).first()
        rows, deletes = int(row[0]), int(row[1])
        return Written(rows=rows, upserted=rows - deletes, deletes_absent=deletes)
    bounded = target.alias("t").where(F.col(f"t.`{key}`").between(F.lit(low), F.lit(high)))
    joined = s.join(bounded, F.col(f"s.`{key}`") == F.col(f"t.`{key}`"), "left")
    matched = F.col(f"t.`{key}`").isNotNull()
    row = joined.agg(
        F.count(F.lit(1)),
        F.count_if(matched & ~F.coalesce(F.expr(newer), F.lit(False))),
        F.count_if(~matched & deleted),
    ).first()
    rows, superseded, absent = int(row[0]), int(row[1]), int(row[2])
    return Written(rows, rows - superseded - absent, superseded, absent)


def written_by_merge(winners: int, upserted: int) -> Written:
    """Where a batch's newest snapshots went, none of them a delete, from what its MERGE
    reported: each was inserted or replaced an older row (``upserted``), or found silver
    holding one not older (superseded by silver)."""
    return Written(winners, upserted, winners - upserted, 0)


def orphans(
    details: DataFrame, column: str, parent_keys: DataFrame, parent_key: str
) -> tuple[int, int, str | None]:
    """Rows of ``details`` whose ``column`` has no row in ``parent_keys``: (checked, orphans,
    one orphan's value). A null reference is an orphan too."""
    parents = parent_keys.select(F.col(parent_key).alias("_parent")).distinct()
    joined = details.join(parents, details[column] == parents["_parent"], "left")
    row = joined.agg(
        F.count(F.lit(1)),
        F.count_if(F.col("_parent").isNull()),
        F.min(F.when(F.col("_parent").isNull(), F.col(column))),
    ).first()
    return int(row[0]), int(row[1]), row[2]


def orphans_among(
    details: pa.Table, column: str, parent_keys: pa.ChunkedArray
) -> tuple[int, int, Any]:
    """``orphans`` over columns read as Arrow: rows of ``details`` whose ``column`` is not
    among ``parent_keys`` (a null reference is an orphan too)."""
    import pyarrow.compute as pc

    references = details.column(column)
    found = pc.is_in(references, value_set=pc.unique(parent_keys.drop_null()))
    missing = references.filter(pc.invert(pc.fill_null(found, False)))
    sample = pc.min(missing).as_py() if len(missing) else None
    return len(references), len(missing), sample


# -- recording and enforcing ----------------------------------------------------------------------
def result_records(results: list[CheckResult], run_id: str) -> list[dict[str, object]]:
    """The ops_quality_metrics rows of a task's check results (batch_id null, source
    ``dataset``)."""
    now = datetime.now(UTC)
    return [
        {"entity": r.entity, "run_id": run_id, "batch_id": None, "source": DATASET,
         "rule": r.check.name, "severity": r.check.severity, "rows_checked": r.rows_checked,
         "rows_failed": r.rows_failed, "measured_at": now}
        for r in results
    ]  # fmt: skip


def results_identity(task: str, run_id: str, results: list[CheckResult]) -> str:
    """The idempotent-write identity of a task's result rows: the same verdicts in the same
    run (a retried task that found the same; times and ages aside) are appended once."""
    verdicts = [(r.entity, r.check.name, r.check.severity, r.rows_checked, r.rows_failed)
                for r in results]  # fmt: skip
    content = json.dumps([task, run_id, verdicts], sort_keys=True)
    return f"dataset-checks-{hashlib.sha256(content.encode()).hexdigest()}"


def enforce(results: list[CheckResult], progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Say each violation; raise DatasetCheckFailed naming every failing ``fail`` check
    (after the rows are recorded). Returns the results for the task's run record."""
    failing = []
    for result in results:
        if result.passed:
            continue
        if result.check.severity == "fail":
            failing.append(result.message())
        else:
            progress(f"WARNING: {result.message()}")
    if failing:
        raise DatasetCheckFailed("; ".join(failing))
    return [r.as_detail() for r in results]


def parse_instant(text: object) -> datetime | None:
    if not text:
        return None
    value = datetime.fromisoformat(str(text))
    return value if value.tzinfo else value.replace(tzinfo=UTC)
