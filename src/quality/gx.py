"""The quality rules as Great Expectations (GX Core 1.x) expectations, validated per batch.

The quality gate itself runs on the compiled predicates of ``checks``; GX is a second,
independent reading of the same rules whose results land in ``ops_gx_results``, so a batch
can be audited with a standard tool. Each expectation carries its rule's name and severity in
``meta``, so every GX result traces back to a rule in conf/quality/<entity>.yml.

Rule kinds and their expectations (value checks pass on null, as in the predicates):

==============  ===============================================================================
not_null        ExpectColumnValuesToNotBeNull
regex           ExpectColumnValuesToMatchRegex (Spark ``rlike``: Java regex, unanchored search,
                the same call the predicate makes)
in_set          ExpectColumnValuesToBeInSet
range           ExpectColumnValuesToBeBetween (min_value/max_value, strict_min/strict_max;
                GX coerces bounds to float, so an integer bound beyond 2**53 is rounded)
malformed       two expectations: ExpectColumnValuesToBeNull on ``_corrupt_record``, and
                ExpectColumnValuesToBeNull on ``_rescued_data`` for the rows whose
                ``_corrupt_record`` is null; the two unexpected counts are disjoint, so their
                sum is the predicate's count (corrupt OR rescued)
expression      UnexpectedRowsExpectation, ``WHERE NOT coalesce((<expression>), true)``: a row
                fails only when the expression is false, as in the predicate. GX reports no
                element count for it, and collects up to 200 failing rows to the driver.
foreign_key     not mapped: it needs the parent silver table, which is not in the batch. It
                is reported with expectation ``skipped`` rather than left out.
==============  ===============================================================================
"""

from __future__ import annotations

import logging
import threading
import warnings
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame, SparkSession

from order_pipeline.common.contract import CORRUPT_RECORD, GX_RESULTS_DDL, PARSE_ISSUES
from order_pipeline.quality.rules import Rule, RuleSet

if TYPE_CHECKING:
    import great_expectations as gx

SKIPPED = "skipped"
NOT_MAPPED = {
    "foreign_key": "needs the parent silver table, which is not part of the batch; the "
    "quality gate checks it with a lookup join",
}
# BASIC gives element and unexpected counts; a partial list of 0 values spares one Spark
# job per expectation (GX collects the sample with a separate filter + limit).
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}
# The rule severities in GX's own terms, so GX tooling ranks failures the way we do.
GX_SEVERITY = {"fail": "critical", "quarantine": "critical", "warn": "warning", "defer": "info"}
DATA_SOURCE = "order_pipeline"
BATCH_DEFINITION = "whole_batch"
# GX 1.x's Spark query metrics (UnexpectedRowsExpectation) register the batch under this
# fixed temp-view name in the DataFrame's session; it is dropped after each validation.
GX_QUERY_VIEW = "tmp_view"
# GX keeps the most recent context in a process-wide project manager and uses the fixed
# view name above, so two validations in one process must not interleave.
_VALIDATION_LOCK = threading.Lock()


def _meta(rule: Rule, column: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"rule": rule.name, "severity": rule.severity, "kind": rule.kind}
    if column is not None:
        meta["column"] = column
    return meta


def _expression_query(expression: str) -> str:
    # GX fills in {batch} with str.format, so braces of the expression itself are doubled.
    escaped = expression.replace("{", "{{").replace("}", "}}")
    return f"SELECT * FROM {{batch}} WHERE NOT coalesce(({escaped}), true)"


def expectations_for(rule: Rule) -> list[gx.expectations.Expectation]:
    """Every expectation that checks ``rule``: none for a kind GX cannot check on a batch
    alone (foreign_key), one otherwise."""
    import great_expectations as gx

    expect = gx.expectations
    severity = GX_SEVERITY[rule.severity]
    column = rule.column
    if rule.kind == "not_null":
        return [
            expect.ExpectColumnValuesToNotBeNull(
                column=column, meta=_meta(rule, column), severity=severity
            )
        ]
    if rule.kind == "regex":
        return [
            expect.ExpectColumnValuesToMatchRegex(
                column=column, regex=rule.pattern, meta=_meta(rule, column), severity=severity
            )
        ]
    if rule.kind == "in_set":
        return [
            expect.ExpectColumnValuesToBeInSet(
                column=column,
                value_set=list(rule.values),
                meta=_meta(rule, column),
                severity=severity,
            )
        ]
    if rule.kind == "range":
        return [
            expect.ExpectColumnValuesToBeBetween(
                column=column,
                min_value=rule.min,
                max_value=rule.max,
                strict_min=rule.strict_min,
                strict_max=rule.strict_max,
                meta=_meta(rule, column),
                severity=severity,
            )
        ]
    if rule.kind == "malformed":
        return [
            expect.ExpectColumnValuesToBeNull(
                column=CORRUPT_RECORD, meta=_meta(rule, CORRUPT_RECORD), severity=severity
            )
        ]
    if rule.kind == "not_blank":
        return [
            expect.ExpectColumnValuesToNotMatchRegex(
                column=column, regex=r"^\s*$", meta=_meta(rule, column), severity=severity
            )
        ]
    if rule.kind == "parse_issue":
        return [
            expect.UnexpectedRowsExpectation(
                unexpected_rows_query=_expression_query(
                    f"NOT exists({PARSE_ISSUES}, i -> startswith(i, '{rule.issue}:'))"
                ),
                description=rule.description or f"no {rule.issue} found in parsing",
                meta=_meta(rule),
                severity=severity,
            )
        ]
    if rule.kind == "expression":
        return [
            expect.UnexpectedRowsExpectation(
                unexpected_rows_query=_expression_query(rule.expression),
                description=rule.description or rule.expression,
                meta=_meta(rule),
                severity=severity,
            )
        ]
    return []


def expectation_for(rule: Rule) -> gx.expectations.Expectation | None:
    """The expectation for ``rule``, or None when the kind is not mapped (foreign_key).

    A ``malformed`` rule needs two expectations (see ``expectations_for``); this returns the
    first, the one on ``_corrupt_record``."""
    found = expectations_for(rule)
    return found[0] if found else None


def _quiet_gx() -> None:
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:  # leave an explicit logging setup alone
        gx_logger.setLevel(logging.WARNING)


def _new_context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _entry(rule: Rule, **values: Any) -> dict[str, Any]:
    entry = {
        "rule": rule.name,
        "severity": rule.severity,
        "kind": rule.kind,
        "expectation": SKIPPED,
        "column": None,
        "status": SKIPPED,
        "success": None,
        "element_count": None,
        "unexpected_count": None,
        "exception": None,
        "reason": None,
    }
    entry.update(values)
    return entry


def _exception_message(info: dict[str, Any] | None) -> str | None:
    """GX reports an expectation's own error flat, and a failed metric keyed by metric."""
    if not info:
        return None
    found = (
        [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    )
    messages = [f.get("exception_message") or "error" for f in found if f.get("raised_exception")]
    return "; ".join(messages) or None


def _validated_entry(rule: Rule, result: Any) -> dict[str, Any]:
    config = result.expectation_config
    details = result.result or {}
    error = _exception_message(result.exception_info)
    # UnexpectedRowsExpectation reports its unexpected rows as observed_value.
    unexpected = details.get("unexpected_count", details.get("observed_value"))
    return _entry(
        rule,
        expectation=config.type,
        column=config.kwargs.get("column"),
        status="error" if error else "validated",
        success=bool(result.success),
        element_count=details.get("element_count"),
        unexpected_count=None if unexpected is None else int(unexpected),
        exception=error,
    )


def validate_batch(rules: RuleSet, df: DataFrame, can_persist: bool = True) -> dict[str, Any]:
    """Validate ``df`` against the GX reading of ``rules`` in a throwaway GX context
    (caching it for GX's passes where the platform allows: ``can_persist``).

    Returns plain data: ``results`` has, in rule order, one entry per expectation (rule,
    severity, kind, expectation type, column, status ``validated`` or ``error``, success,
    element_count, unexpected_count, exception) and one ``skipped`` entry (with a reason)
    per rule GX does not check; ``success`` and ``statistics`` are GX's over the
    expectations that ran, plus ``skipped_rules``; ``element_count`` is the batch's rows.
    The rescued-data half of ``malformed`` has a row condition, so its element_count is
    the rows whose ``_corrupt_record`` is null."""
    import great_expectations as gx

    _quiet_gx()
    mapped = [(rule, expectations_for(rule)) for rule in rules.rules]
    suite = [expectation for _, expectations in mapped for expectation in expectations]
    validated_at = datetime.now(UTC)
    outcome = None
    if suite:
        with _VALIDATION_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cached_here = can_persist and _cache(df)
            try:
                outcome = _run_suite(rules.entity, df, suite)
            finally:
                if cached_here:
                    df.unpersist()
    by_key = {
        (r.expectation_config.meta["rule"], r.expectation_config.meta.get("column")): r
        for r in (outcome.results if outcome is not None else ())
    }
    entries: list[dict[str, Any]] = []
    row_counts: list[int] = []
    for rule, expectations in mapped:
        if not expectations:
            entries.append(_entry(rule, reason=NOT_MAPPED.get(rule.kind, "not mapped")))
        for expectation in expectations:
            entry = _validated_entry(rule, by_key[(rule.name, expectation.meta.get("column"))])
            entries.append(entry)
            whole_batch = getattr(expectation, "row_condition", None) is None
            if whole_batch and entry["element_count"] is not None:
                row_counts.append(entry["element_count"])

    statistics: dict[str, Any] = {
        "evaluated_expectations": 0, "successful_expectations": 0,
        "unsuccessful_expectations": 0, "success_percent": None,
    }  # fmt: skip
    if outcome is not None:
        statistics.update(outcome.statistics)
    statistics["skipped_rules"] = sum(1 for e in entries if e["status"] == SKIPPED)
    return {
        "entity": rules.entity,
        "success": bool(outcome.success) if outcome is not None else True,
        "statistics": statistics,
        # UnexpectedRowsExpectation reports no element count; any column check has it.
        "element_count": row_counts[0] if row_counts else df.count(),
        "validated_at": validated_at,
        "gx_version": gx.__version__,
        "results": entries,
    }


def _cache(df: DataFrame) -> bool:
    """Cache the batch for GX's passes over it (about ten Spark jobs for a suite: metric
    bundles, row counts, queries); True when this call cached it and must unpersist."""
    from pyspark.errors import PySparkException

    try:
        if df.is_cached:
            return False
        df.persist()
    except PySparkException:  # e.g. serverless compute, which has no DataFrame cache
        return False
    return True


def _run_suite(entity: str, df: DataFrame, expectations: list[Any]) -> Any:
    import great_expectations as gx

    uses_query_view = any(e.expectation_type == "unexpected_rows_expectation" for e in expectations)
    context = _new_context()
    source = context.data_sources.add_spark(name=DATA_SOURCE, persist=False)
    try:
        # GX would otherwise run its SQL on SparkSession.builder.getOrCreate(), which inside
        # foreachBatch is not the session that owns the batch (and the temp view).
        source.get_execution_engine().spark = df.sparkSession
        batch = (
            source.add_dataframe_asset(name=entity)
            .add_batch_definition_whole_dataframe(BATCH_DEFINITION)
            .get_batch(batch_parameters={"dataframe": df})
        )
        suite = gx.ExpectationSuite(name=f"{entity}_rules", expectations=expectations)
        return batch.validate(suite, result_format=RESULT_FORMAT)
    finally:
        # Nothing that holds the batch may outlive the call: GX's project manager keeps the
        # context, the context keeps the data source, its engine keeps the DataFrame.
        context.data_sources.delete(DATA_SOURCE)
        if uses_query_view:
            df.sparkSession.catalog.dropTempView(GX_QUERY_VIEW)


def gx_result_rows(
    spark: SparkSession, rules: RuleSet, result: dict[str, Any], run_id: str, batch_id: int
) -> DataFrame:
    """Rows for ops_gx_results (the caller appends them): one per expectation and one per
    skipped rule, so every rule of ``rules`` is accounted for in every batch."""
    validated_at = result["validated_at"]
    entries = list(result["results"])
    reported = {e["rule"] for e in entries}
    entries += [
        _entry(rule, reason="not in the validation result")
        for rule in rules.rules
        if rule.name not in reported
    ]
    rows = [
        (rules.entity, run_id, batch_id, e["rule"], e["severity"], e["expectation"],
         e["success"], e["element_count"], e["unexpected_count"], validated_at)
        for e in entries
    ]  # fmt: skip
    return spark.createDataFrame(rows, GX_RESULTS_DDL)
