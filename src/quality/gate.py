"""The quality gate: evaluate every rule of an entity in one pass over a batch and split
the batch by outcome. Pure DataFrame -> DataFrame transforms; no I/O here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from order_pipeline.common.contract import (
    DELETED,
    FAILED_DEFER,
    FAILED_FAIL,
    FAILED_QUARANTINE,
    QUALITY_WARNINGS,
    REASONS,
)
from order_pipeline.quality.checks import failed, failed_rule_names, fk_column, pd_column
from order_pipeline.quality.rules import Rule, RuleSet


class QualityFailure(RuntimeError):
    """A rule of severity ``fail`` matched; the run stops before anything is written."""


def with_parent_lookups(
    ruleset: RuleSet,
    parent_keys: dict[str, DataFrame],
    parent_tombstones: dict[str, DataFrame] | None = None,
    sequence: str | None = None,
) -> Callable[[DataFrame], DataFrame]:
    """Add, for each foreign-key rule, the matching parent key (null when not found), and
    for each parent_deleted rule the parent's delete at or after the row's ``sequence``."""

    def transform(df: DataFrame) -> DataFrame:
        for rule in ruleset.rules:
            if rule.kind == "parent_deleted":
                assert parent_tombstones is not None and sequence is not None
                tombs = parent_tombstones[rule.parent]
                key = f"{pd_column(rule)}_key"
                found = tombs.select(
                    F.col(tombs.columns[0]).alias(key),
                    F.col(tombs.columns[1]).alias(pd_column(rule)),
                )
                on = (F.col(rule.column) == F.col(key)) & (
                    F.col(pd_column(rule)) >= F.col(sequence)
                )
                df = df.join(found, on, "left").drop(key)
                continue
            if rule.kind != "foreign_key":
                continue
            keys = parent_keys[rule.parent]  # silver keys are unique: no distinct needed
            found = keys.select(F.col(keys.columns[0]).alias(fk_column(rule)))
            df = df.join(found, df[rule.column] == found[fk_column(rule)], "left")
        return df

    return transform


def applies_to_deletes(rule: Rule, identity: tuple[str, ...]) -> bool:
    """A delete carries its key and sequence only: the rules on its parsing and on those
    two columns check it, no other (a tombstone has no e-mail to validate, nor a parent)."""
    if rule.kind in ("malformed", "parse_issue"):
        return True
    return rule.kind in ("not_null", "not_blank") and rule.column in identity


def apply_quality_gate(
    ruleset: RuleSet,
    parent_keys: dict[str, DataFrame],
    parent_tombstones: dict[str, DataFrame] | None = None,
    identity: tuple[str, ...] = (),
) -> Callable[[DataFrame], DataFrame]:
    """Add the rules each row fails, grouped by severity, plus ``_reasons`` (all of them).
    A delete (``DELETED``) is checked by the rules ``applies_to_deletes`` only; ``identity``
    is (key, sequence): the sequence also dates parent deletes (parent_deleted rules)."""

    def transform(df: DataFrame) -> DataFrame:
        sequence = identity[1] if len(identity) > 1 else None
        looked_up = df.transform(
            with_parent_lookups(ruleset, parent_keys, parent_tombstones, sequence)
        )
        deleted = (
            F.coalesce(F.col(DELETED), F.lit(False)) if DELETED in df.columns else F.lit(False)
        )
        malformed = [r for r in ruleset.rules if r.kind == "malformed"]
        unparsed = F.lit(False)
        for rule in malformed:
            unparsed = unparsed | failed(rule)

        def names(severity: str) -> Column:
            # A record that did not parse fails its malformed rule and nothing else: rules
            # evaluated on the nulls left by a failed parse would only add noise.
            parsed = [r for r in ruleset.of(severity) if r.kind != "malformed"]
            unparsed_names = [r for r in ruleset.of(severity) if r.kind == "malformed"]
            on_deletes = tuple(r for r in parsed if applies_to_deletes(r, identity))
            return (
                F.when(unparsed, failed_rule_names(tuple(unparsed_names)))
                .when(deleted, failed_rule_names(on_deletes))
                .otherwise(failed_rule_names(tuple(parsed)))
            )

        checked = looked_up.withColumns(
            {
                FAILED_QUARANTINE: names("quarantine"),
                FAILED_DEFER: names("defer"),
                FAILED_FAIL: names("fail"),
                QUALITY_WARNINGS: names("warn"),
            }
        )
        fk_helpers = [fk_column(r) for r in ruleset.rules if r.kind == "foreign_key"] + [
            pd_column(r) for r in ruleset.rules if r.kind == "parent_deleted"
        ]
        return checked.withColumn(
            REASONS,
            F.concat(
                F.col(FAILED_FAIL),
                F.col(FAILED_QUARANTINE),
                F.col(FAILED_DEFER),
                F.col(QUALITY_WARNINGS),
            ),
        ).drop(*fk_helpers)

    return transform


@dataclass(frozen=True)
class GateOutcome:
    """One checked batch split four ways; every input row is in exactly one part."""

    failing: DataFrame  # a ``fail`` rule matched: the run must stop
    quarantined: DataFrame  # a ``quarantine`` rule matched
    deferred: DataFrame  # only ``defer`` rules matched: waits for its parent
    passed: DataFrame  # no blocking rule matched (warnings travel along)


def split_by_outcome(checked: DataFrame) -> GateOutcome:
    has_fail = F.size(FAILED_FAIL) > 0
    has_quarantine = F.size(FAILED_QUARANTINE) > 0
    has_defer = F.size(FAILED_DEFER) > 0
    return GateOutcome(
        failing=checked.where(has_fail),
        quarantined=checked.where(~has_fail & has_quarantine),
        deferred=checked.where(~has_fail & ~has_quarantine & has_defer),
        passed=checked.where(~has_fail & ~has_quarantine & ~has_defer),
    )


def raise_on_failing(ruleset: RuleSet, failing: DataFrame, columns: list[str]) -> None:
    sample = failing.select(*columns, FAILED_FAIL).limit(1).collect()
    if not sample:
        return
    row = sample[0].asDict()
    rule = row.pop(FAILED_FAIL)[0]
    raise QualityFailure(
        f"{ruleset.entity}: rule {rule!r} (severity fail) matched: "
        f"{ruleset.named(rule).description} Sample row: {row}"
    )
