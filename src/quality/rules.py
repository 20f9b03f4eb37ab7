"""The rule model: quality rules per entity, loaded from conf/quality/<entity>.yml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from order_pipeline.common.config import (
    ConfigError,
    Entity,
    SettingError,
    conf_dir,
    number,
    read_yaml,
    require,
)
from order_pipeline.common.contract import PARSE_ISSUE_CODES
from order_pipeline.quality.dataset_checks import ENTITY_KINDS, DatasetCheck, load_dataset_checks

KINDS = ("malformed", "not_null", "regex", "in_set", "range", "foreign_key", "expression",
         "parse_issue", "not_blank", "parent_deleted")  # fmt: skip
SEVERITIES = ("quarantine", "warn", "fail", "defer")
RATIO_ACTIONS = ("fail", "warn")


@dataclass(frozen=True)
class Rule:
    """One named check. Value checks (regex, in_set, range) pass on null: whether a value
    may be null is the business of a not_null rule, as in Great Expectations."""

    name: str
    kind: str
    severity: str
    description: str = ""
    column: str | None = None
    pattern: str | None = None
    values: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    strict_min: bool = False
    strict_max: bool = False
    parent: str | None = None
    expression: str | None = None
    issue: str | None = None  # parse_issue: one of contract.PARSE_ISSUE_CODES

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SettingError("kind", f"must be one of {KINDS}, got {self.kind!r}")
        if self.severity not in SEVERITIES:
            raise SettingError("severity", f"must be one of {SEVERITIES}, got {self.severity!r}")
        needs_column = self.kind not in ("malformed", "expression", "parse_issue")
        if needs_column and not self.column:
            raise SettingError("column", f"a {self.kind} rule needs a column")
        if self.kind == "regex" and not self.pattern:
            raise SettingError("pattern", "a regex rule needs a pattern")
        if self.kind == "in_set" and not self.values:
            raise SettingError("values", "an in_set rule needs a non-empty list of values")
        if self.kind == "range" and self.min is None and self.max is None:
            raise SettingError("min", "a range rule needs min, max or both")
        if self.kind in ("foreign_key", "parent_deleted") and not self.parent:
            raise SettingError("parent", "a foreign_key rule needs the parent entity")
        if self.kind == "foreign_key" and self.severity not in ("defer", "quarantine", "warn"):
            raise SettingError("severity", "a foreign_key rule is defer, quarantine or warn")
        if self.kind == "parse_issue" and self.issue not in PARSE_ISSUE_CODES:
            raise SettingError(
                "issue", f"a parse_issue rule names one of {PARSE_ISSUE_CODES}, got {self.issue!r}"
            )
        if self.kind == "expression" and not self.expression:
            raise SettingError("expression", "an expression rule needs a SQL boolean expression")


@dataclass(frozen=True)
class RuleSet:
    entity: str
    rules: tuple[Rule, ...]
    max_quarantine_ratio: float = 1.0
    on_ratio_breach: str = "fail"
    dataset_checks: tuple[DatasetCheck, ...] = ()  # quality/dataset_checks.py

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_quarantine_ratio <= 1.0:
            raise SettingError("max_quarantine_ratio", "must be between 0 and 1")
        if self.on_ratio_breach not in RATIO_ACTIONS:
            raise SettingError("on_ratio_breach", f"must be one of {RATIO_ACTIONS}")
        names = [r.name for r in self.rules]
        duplicated = {n for n in names if names.count(n) > 1}
        if duplicated:
            raise SettingError("rules", f"duplicate rule names {sorted(duplicated)}")

    def of(self, *severities: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.severity in severities)

    def checks(self, kind: str) -> bool:
        """Whether a dataset check of ``kind`` is configured."""
        return any(c.kind == kind for c in self.dataset_checks)

    def named(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(f"{self.entity} has no rule {name!r}; known: {[r.name for r in self.rules]}")


RULE_KEYS = set(Rule.__dataclass_fields__)


def rules_path(entity: Entity) -> Path:
    return conf_dir() / "quality" / f"{entity.name}.yml"


def load_rules(
    entity: Entity, entities: dict[str, Entity] | None = None, path: Path | None = None
) -> RuleSet:
    path = path or rules_path(entity)
    data = read_yaml(path)
    raw_rules = require(data, "rules", path)
    if not isinstance(raw_rules, list):
        raise ConfigError(path, "rules", "expected a list of rules")
    rules = []
    for index, spec in enumerate(raw_rules):
        where = f"rules[{index}]"
        if not isinstance(spec, dict):
            raise ConfigError(path, where, "expected a mapping")
        where = f"rules[{index}] ({spec.get('name', '?')})"
        unknown = set(spec) - RULE_KEYS
        if unknown:
            raise ConfigError(path, f"{where}.{sorted(unknown)[0]}", "unknown key")
        spec = dict(spec)
        if "values" in spec:
            spec["values"] = tuple(spec["values"] or ())
        try:
            rule = Rule(**spec)
        except TypeError as exc:
            raise ConfigError(path, where, str(exc)) from exc
        except SettingError as exc:
            raise ConfigError(path, f"{where}.{exc.key}", exc.problem) from exc
        if rule.column and rule.column not in entity.fields:
            raise ConfigError(
                path, f"{where}.column", f"{rule.column!r} is not a field of {entity.name}"
            )
        if rule.parent and entities is not None and rule.parent not in entities:
            raise ConfigError(path, f"{where}.parent", f"unknown entity {rule.parent!r}")
        if rule.kind == "foreign_key" and entity.parents.get(rule.column) != rule.parent:
            raise ConfigError(
                path,
                f"{where}.parent",
                f"conf/pipeline.yml says {entity.name}.{rule.column} refers to "
                f"{entity.parents.get(rule.column)!r}, not {rule.parent!r} (entities."
                f"{entity.name}.parents is the one statement of the entity graph)",
            )
        rules.append(rule)
    checked = {r.column for r in rules if r.kind == "foreign_key"}
    for column, parent in entity.parents.items():
        if column not in checked:
            raise ConfigError(
                path,
                "rules",
                f"no foreign_key rule checks {entity.name}.{column} -> {parent}, a parent "
                f"declared in conf/pipeline.yml (entities.{entity.name}.parents)",
            )
    # a relation whose on_delete is quarantine (conf/pipeline.yml) is a rule of its own,
    # so its rows are counted per batch like any other rule's
    for column, on_delete in entity.on_parent_delete.items():
        if on_delete == "quarantine":
            rules.append(
                Rule(
                    name=f"{column}_parent_deleted",
                    kind="parent_deleted",
                    severity="quarantine",
                    column=column,
                    parent=entity.parents[column],
                    description=f"The {entity.parents[column]} this row refers to was deleted "
                    f"(conf/pipeline.yml: {entity.name}.parents.{column}.on_delete quarantine).",
                )
            )
    dataset_checks = load_dataset_checks(data, path, ENTITY_KINDS)
    try:
        return RuleSet(
            entity=entity.name,
            rules=tuple(rules),
            dataset_checks=dataset_checks,
            max_quarantine_ratio=number(
                data.get("max_quarantine_ratio", 1.0), "max_quarantine_ratio"
            ),
            on_ratio_breach=str(data.get("on_ratio_breach", "fail")),
        )
    except SettingError as exc:
        raise ConfigError(path, exc.key, exc.problem) from exc
