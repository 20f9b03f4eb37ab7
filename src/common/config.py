"""Typed configuration loaded once from conf/: entities, profiles, job settings.

Every loader validates on load and raises ``ConfigError`` naming the file and the key at
fault, so a typo in YAML fails before any Spark work starts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

_SCALAR = (
    r"string|boolean|tinyint|byte|smallint|short|int|integer|bigint|long|float|double|date|"
    r"timestamp|timestamp_ntz|binary|decimal\(\s*\d+\s*,\s*\d+\s*\)"
)
# Spark SQL type names a contract field may have: scalars, and arrays of them
SPARK_TYPES = re.compile(rf"^(?:{_SCALAR}|array<\s*(?:{_SCALAR})\s*>)$", re.IGNORECASE)
TRIGGERS = ("available_now", "processing_time")
SOURCE_FORMATS = ("json", "cloudFiles")
PROFILES = ("local", "databricks")


DEFAULT_DATA_ROOT = os.environ.get("ORDER_PIPELINE_DATA_ROOT", ".local")


class SettingError(ValueError):
    """A setting's value is invalid; ``key`` names it (ConfigError adds the file)."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


class ConfigError(ValueError):
    """A configuration file or setting is invalid; the message names file and key."""

    def __init__(self, file: str | Path, key: str, problem: str) -> None:
        self.file = str(file)
        self.key = key
        super().__init__(f"{file}: {key}: {problem}")


def conf_dir() -> Path:
    """The conf/ folder: $ORDER_PIPELINE_CONF, else the repository's, else the packaged copy."""
    if env := os.environ.get("ORDER_PIPELINE_CONF"):
        return Path(env)
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "conf", here.parent.parent / "conf"):
        if (candidate / "pipeline.yml").is_file():
            return candidate
    raise ConfigError("conf/", "pipeline.yml", "no conf/ folder found; set ORDER_PIPELINE_CONF")


# libyaml's parser when PyYAML has it (the wheels do): the same documents, ~8x faster, and
# every task entry point reads several of these files (a `run --watch` poll reads 22)
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(path, "<file>", "file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(path, "<file>", f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(path, "<file>", "expected a mapping at the top level")
    return data


def require(data: dict[str, Any], key: str, file: Path, prefix: str = "") -> Any:
    if key not in data or data[key] is None:
        raise ConfigError(file, f"{prefix}{key}", "required key is missing")
    return data[key]


@dataclass(frozen=True)
class Entity:
    """One entity of the data contract: its key, sequence column and typed fields."""

    name: str
    key: str
    sequence: str
    fields: dict[str, str]
    # foreign-key column -> parent entity: the one statement of the entity graph (the
    # foreign_key rules and the job's task dependencies are checked against it)
    parents: dict[str, str] = field(default_factory=dict)
    # the fields that hold personal data: the one statement of it (masked where people look,
    # e.g. `order-pipeline quarantine`, unless they ask to see them)
    personal: tuple[str, ...] = ()
    # foreign-key column -> what a delete of its parent does to a child (ON_PARENT_DELETE)
    on_parent_delete: dict[str, str] = field(default_factory=dict)
    # the landed field that makes a record a tombstone of its key (``"_deleted": true``)
    delete_marker: str = "_deleted"
    # how long a tombstone is kept after its delete's sequence; None: for ever
    tombstone_retention_seconds: int | None = None

    def __post_init__(self) -> None:
        if self.key not in self.fields:
            raise SettingError("key", f"{self.key!r} is not one of the fields")
        if self.sequence not in self.fields:
            raise SettingError("sequence", f"{self.sequence!r} is not one of the fields")
        for name, spark_type in self.fields.items():
            if not SPARK_TYPES.match(spark_type):
                raise SettingError(f"fields.{name}", f"unsupported type {spark_type!r}")
        for column in self.parents:
            if column not in self.fields:
                raise SettingError(f"parents.{column}", f"{column!r} is not one of the fields")
        for column, rule in self.on_parent_delete.items():
            if column not in self.parents:
                raise SettingError(f"parents.{column}", f"{column!r} is not a foreign key")
            if rule not in ON_PARENT_DELETE:
                raise SettingError(
                    f"parents.{column}.on_delete",
                    f"must be one of {ON_PARENT_DELETE}, got {rule!r}",
                )
        if self.delete_marker in self.fields:
            raise SettingError("deletes.marker", f"{self.delete_marker!r} is a contract field")
        for position, name in enumerate(self.personal):
            if name not in self.fields:
                raise SettingError(f"personal[{position}]", f"{name!r} is not one of the fields")
            if name in self.personal[:position]:
                raise SettingError(f"personal[{position}]", f"{name!r} is named twice")

    @property
    def columns(self) -> list[str]:
        return list(self.fields)

    def ddl(self) -> str:
        return ", ".join(f"`{name}` {spark_type}" for name, spark_type in self.fields.items())


ENTITY_KEYS = {"key", "sequence", "fields", "parents", "personal"}
# What a parent's delete does to its children, per relation (conf/pipeline.yml parents):
# cascade: they are deleted as of the parent's delete; keep: they stay, pointing at a key that
# is gone; quarantine: they leave silver for quarantine, reason <column>_parent_deleted.
ON_PARENT_DELETE = ("cascade", "keep", "quarantine")
RELATION_KEYS = {"entity", "on_delete"}
DELETES_KEYS = {"marker", "tombstone_retention"}


def load_deletes(data: dict[str, Any], path: Path) -> tuple[str, int | None]:
    """The ``deletes`` section: the tombstone marker field and the tombstones' retention."""
    spec = data.get("deletes") or {}
    if not isinstance(spec, dict):
        raise ConfigError(path, "deletes", "expected a mapping (marker, tombstone_retention)")
    if unknown := sorted(set(map(str, spec)) - DELETES_KEYS):
        raise ConfigError(
            path, f"deletes.{unknown[0]}", f"unknown key; expected one of {sorted(DELETES_KEYS)}"
        )
    marker = spec.get("marker", "_deleted")
    if not isinstance(marker, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", marker):
        raise ConfigError(path, "deletes.marker", f"expected a field name, got {marker!r}")
    retention = spec.get("tombstone_retention")
    seconds = (
        None
        if retention is None
        else parse_duration(retention, path, "deletes.tombstone_retention")
    )
    return marker, seconds


def load_relations(raw: Any, path: Path, prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    """``parents``: column -> entity, or column -> {entity, on_delete}; returns the parents
    and the on-delete rule of each relation (keep where not said)."""
    if not isinstance(raw, dict):
        raise ConfigError(
            path, f"{prefix}parents", "expected a mapping of foreign-key column to parent entity"
        )
    parents, on_delete = {}, {}
    for column, spec in raw.items():
        if isinstance(spec, dict):
            if unknown := sorted(set(map(str, spec)) - RELATION_KEYS):
                raise ConfigError(
                    path,
                    f"{prefix}parents.{column}.{unknown[0]}",
                    f"unknown key; expected one of {sorted(RELATION_KEYS)}",
                )
            parents[str(column)] = str(require(spec, "entity", path, f"{prefix}parents.{column}."))
            on_delete[str(column)] = str(spec.get("on_delete", "keep"))
        else:
            parents[str(column)] = str(spec)
            on_delete[str(column)] = "keep"
    return parents, on_delete


def load_entities(path: Path | None = None) -> dict[str, Entity]:
    path = path or conf_dir() / "pipeline.yml"
    data = read_yaml(path)
    raw = require(data, "entities", path)
    marker, retention = load_deletes(data, path)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(path, "entities", "expected a non-empty mapping of entity name to spec")
    entities: dict[str, Entity] = {}
    for name, spec in raw.items():
        prefix = f"entities.{name}."
        if not isinstance(spec, dict):
            raise ConfigError(path, f"entities.{name}", "expected a mapping")
        # a misspelt key must fail: `personl:` would otherwise leave personal data unmasked
        if unknown := sorted(set(map(str, spec)) - ENTITY_KEYS):
            raise ConfigError(
                path, f"{prefix}{unknown[0]}", f"unknown key; expected one of {sorted(ENTITY_KEYS)}"
            )
        fields = require(spec, "fields", path, prefix)
        if not isinstance(fields, dict) or not fields:
            raise ConfigError(path, f"{prefix}fields", "expected a mapping of field to type")
        parents, on_delete = load_relations(spec.get("parents") or {}, path, prefix)
        if marker in fields:
            raise ConfigError(path, "deletes.marker", f"{marker!r} is a field of {name}")
        personal = spec.get("personal") or []
        if not isinstance(personal, list) or not all(isinstance(p, str) for p in personal):
            raise ConfigError(
                path, f"{prefix}personal", "expected a list of the fields that hold personal data"
            )
        try:
            entities[name] = Entity(
                name=name,
                key=require(spec, "key", path, prefix),
                sequence=spec.get("sequence", "updated_at"),
                fields={str(k): str(v) for k, v in fields.items()},
                parents=parents,
                personal=tuple(personal),
                on_parent_delete=on_delete,
                delete_marker=marker,
                tombstone_retention_seconds=retention,
            )
        except SettingError as exc:
            raise ConfigError(path, f"{prefix}{exc.key}", exc.problem) from exc
    for entity in entities.values():
        for column, parent in entity.parents.items():
            if parent not in entities:
                raise ConfigError(
                    path, f"entities.{entity.name}.parents.{column}", f"unknown entity {parent!r}"
                )
    dependency_order(entities, path)  # a cycle is an error here, not a hang later
    return entities


def dependency_order(entities: dict[str, Entity], source: str | Path = "pipeline.yml") -> list[str]:
    """Entity names, every parent before its children; among ready ones, the file's order."""
    done: list[str] = []
    pending = list(entities)
    while pending:
        ready = [e for e in pending if set(entities[e].parents.values()) <= set(done)]
        if not ready:
            raise ConfigError(source, "entities", f"parent cycle among {', '.join(pending)}")
        done.append(ready[0])
        pending.remove(ready[0])
    return done


@dataclass(frozen=True)
class QualitySettings:
    defer_max_age_seconds: int = 7 * 86400
    gx_validation: bool = False


LANDING_CHOICES = ("ingest", "skip")
RETENTION_CHOICES = ("off", "archive", "delete")


@dataclass(frozen=True)
class LandingSettings:
    """What the local landing source takes besides <entity>/*.json: files in sub-folders,
    gzip-compressed JSON Lines (*.json.gz). Whatever it does not take is reported."""

    subfolders: str = "ingest"
    compressed: str = "ingest"
    # Landing retention: an ingested file older than ``retention_after`` (its modification
    # time) is moved under ``archive_root`` (archive), removed (delete), or left (off).
    retention: str = "off"
    retention_after_seconds: float = 30 * 86400.0
    archive_root: str | None = None

    def __post_init__(self) -> None:
        for name in ("subfolders", "compressed"):
            if getattr(self, name) not in LANDING_CHOICES:
                raise SettingError(
                    f"landing.{name}",
                    f"must be one of {LANDING_CHOICES}, got {getattr(self, name)!r}",
                )
        if self.retention not in RETENTION_CHOICES:
            raise SettingError(
                "landing.retention",
                f"must be one of {RETENTION_CHOICES}, got {self.retention!r}",
            )
        if self.retention == "archive" and not self.archive_root:
            raise SettingError(
                "landing.archive_root", "retention: archive needs a folder to move to"
            )


@dataclass(frozen=True)
class GoldSettings:
    # An incremental gold build MERGEs the rows of the affected orders; above this share of
    # all orders, overwriting gold from silver is the cheaper way to the same tables.
    max_incremental_share: float = 1.0
    # The incremental build's MERGEs cost about the same whatever the change (a few seconds
    # each); below this many orders in silver a rebuild costs less even for one changed order.
    min_orders_for_incremental: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_incremental_share <= 1.0:
            raise SettingError(
                "gold.max_incremental_share",
                f"must be between 0 and 1, got {self.max_incremental_share!r}",
            )
        value = self.min_orders_for_incremental
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SettingError(
                "gold.min_orders_for_incremental",
                f"must be a whole number of 0 or more, got {value!r}",
            )


@dataclass(frozen=True)
class Profile:
    """Where and how the pipeline runs: local laptop or Databricks."""

    name: str
    catalog: str
    schema: str
    landing_root: str
    checkpoint_root: str
    warehouse_root: str | None
    source_format: str
    trigger: str = "available_now"
    processing_time: str = "30 seconds"
    max_files_per_trigger: int | None = None
    max_bytes_per_trigger: str | None = None
    spark: dict[str, str] = field(default_factory=dict)
    quality: QualitySettings = field(default_factory=QualitySettings)
    gold: GoldSettings = field(default_factory=GoldSettings)
    landing: LandingSettings = field(default_factory=LandingSettings)
    cache_batches: bool = True  # serverless compute rejects DataFrame.persist()
    parallel_tasks: int = 1  # local runner: independent tasks of the job graph at once
    # a task whose inputs did not move since its last success is skipped (common/inputs.py)
    skip_unchanged: bool = True
    silver_file_rows: int = 250_000  # rows per key-range file of a silver table's first load
    # quarantine_<entity> tables hold raw records (e-mails, phones): on Databricks they live
    # in a schema of their own that only data stewards may read; None: the main schema
    quarantine_schema: str | None = None

    def __post_init__(self) -> None:
        if self.name not in PROFILES:
            raise SettingError("profile", f"must be one of {PROFILES}, got {self.name!r}")
        if self.trigger not in TRIGGERS:
            raise SettingError("trigger", f"must be one of {TRIGGERS}, got {self.trigger!r}")
        if self.source_format not in SOURCE_FORMATS:
            raise SettingError(
                "source_format", f"must be one of {SOURCE_FORMATS}, got {self.source_format!r}"
            )
        for name in ("parallel_tasks", "silver_file_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SettingError(name, f"must be a whole number of at least 1, got {value!r}")
        if not isinstance(self.skip_unchanged, bool):
            raise SettingError(
                "skip_unchanged", f"must be true or false, got {self.skip_unchanged!r}"
            )
        if (
            self.source_format == "cloudFiles"
            and self.landing.retention == "delete"
            and self.landing.retention_after_seconds <= 7 * 86400
        ):
            raise SettingError(
                "landing.retention_after",
                "Auto Loader deletes processed files only after more than 7 days",
            )
        if self.name == "local" and not self.warehouse_root:
            raise SettingError("warehouse_root", "the local profile needs one")

    @property
    def is_local(self) -> bool:
        return self.name == "local"


DURATION = re.compile(r"^\s*(\d+)\s*(second|minute|hour|day)s?\s*$")
UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def parse_duration(text: str | int, file: Path, key: str) -> int:
    if isinstance(text, int):
        return text
    match = DURATION.match(str(text))
    if not match:
        raise ConfigError(file, key, f"expected a duration like '7 days', got {text!r}")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


def number(value: Any, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SettingError(key, f"expected a number, got {value!r}") from None


# a profile file's keys are the Profile's fields, its name under the key "profile"
PROFILE_KEYS = {"profile"} | {f.name for f in fields(Profile) if f.name != "name"}


def load_profile(
    name: str, data_root: str | Path = DEFAULT_DATA_ROOT, overrides: dict[str, Any] | None = None
) -> Profile:
    """Load conf/<name>.yml; ``overrides`` (job parameters) win over the file's values."""
    path = conf_dir() / f"{name}.yml"
    data = read_yaml(path)
    unknown = set(data) - PROFILE_KEYS
    if unknown:
        raise ConfigError(
            path, sorted(unknown)[0], f"unknown key; expected one of {sorted(PROFILE_KEYS)}"
        )
    for key, value in (overrides or {}).items():
        if value not in (None, ""):
            data[key] = value
    values = {
        "data_root": str(Path(data_root).resolve()),
        "catalog": str(require(data, "catalog", path)),
        "schema": str(require(data, "schema", path)),
    }
    quality = data.get("quality") or {}
    gold = data.get("gold") or {}
    landing = data.get("landing") or {}
    try:
        return Profile(
            name=str(require(data, "profile", path)),
            catalog=values["catalog"],
            schema=values["schema"],
            landing_root=substitute(str(require(data, "landing_root", path)), values),
            checkpoint_root=substitute(str(require(data, "checkpoint_root", path)), values),
            warehouse_root=(
                substitute(str(data["warehouse_root"]), values)
                if data.get("warehouse_root")
                else None
            ),
            source_format=str(require(data, "source_format", path)),
            trigger=str(data.get("trigger", "available_now")),
            processing_time=str(data.get("processing_time", "30 seconds")),
            max_files_per_trigger=data.get("max_files_per_trigger"),
            max_bytes_per_trigger=data.get("max_bytes_per_trigger"),
            spark={str(k): str(v) for k, v in (data.get("spark") or {}).items()},
            cache_batches=bool(data.get("cache_batches", True)),
            parallel_tasks=data.get("parallel_tasks", 1),
            skip_unchanged=data.get("skip_unchanged", True),
            silver_file_rows=data.get("silver_file_rows", 250_000),
            quarantine_schema=(
                substitute(str(data["quarantine_schema"]), values)
                if data.get("quarantine_schema")
                else None
            ),
            quality=QualitySettings(
                defer_max_age_seconds=parse_duration(
                    quality.get("defer_max_age", "7 days"), path, "quality.defer_max_age"
                ),
                gx_validation=bool(quality.get("gx_validation", False)),
            ),
            landing=LandingSettings(
                subfolders=str(landing.get("subfolders", "ingest")),
                compressed=str(landing.get("compressed", "ingest")),
                # YAML reads a bare `off` as false
                retention=str(landing.get("retention", "off") or "off"),
                retention_after_seconds=parse_duration(
                    landing.get("retention_after", "30 days"), path, "landing.retention_after"
                ),
                archive_root=(
                    substitute(str(landing["archive_root"]), values)
                    if landing.get("archive_root")
                    else None
                ),
            ),
            gold=GoldSettings(
                max_incremental_share=number(
                    gold.get("max_incremental_share", 1.0), "gold.max_incremental_share"
                ),
                min_orders_for_incremental=gold.get("min_orders_for_incremental", 0),
            ),
        )
    except SettingError as exc:
        raise ConfigError(path, exc.key, exc.problem) from exc
