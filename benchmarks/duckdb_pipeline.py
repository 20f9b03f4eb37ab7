"""The same logical pipeline in DuckDB: the single-machine reference peer.

One database file holds every layer. A run ingests only the landing files it has not
seen yet (bronze), parses each line as src/transforms/parse.py does (malformed lines and
values that do not parse to the contract type; parse issues: timestamp format and range,
decimal scale, duplicate and extra fields; the delete marker), checks them with the rules
of conf/quality/*.yml compiled to DuckDB SQL, keeps the latest valid snapshot per key
under the pipeline's ordering (sequence, a delete winning a tie, then every other contract
column, then the source file; nulls lowest), and rebuilds the gold tables of
src/transforms/gold.py.

Deletes as the pipeline does them (conf/pipeline.yml ``deletes``, ``parents.on_delete``):
a delete removes its key from silver and leaves a tombstone (``tombstones_<entity>``, the
newest delete per key) that an older snapshot landing later cannot get past; a parent's
delete cascades to the children of a ``cascade`` relation (in the batch and already in
silver), moves those of a ``quarantine`` relation to quarantine, and leaves those of a
``keep`` relation, whose foreign key then accepts the deleted parent.

Simplifications: foreign keys are "parent present in silver": a row whose parent is
missing waits in ``deferred_<entity>`` and is re-checked on every run (no expiry). Only
``<entity>/*.json`` files are read (the pipeline also takes sub-folders and ``*.json.gz``).
A value whose spelling DuckDB's JSON and cast rules and Spark's JSON reader judge
differently (an exotic number or timestamp spelling) may be quarantined under another reason
(malformed_record instead of a parse issue, or the other way round), or by one of them only;
the generator writes none.

    python -m benchmarks.duckdb_pipeline --landing L --state DIR --as-of TS --result R.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import duckdb

from benchmarks.common import (
    ENTITY_ORDER,
    ChildResult,
    landing_files,
    peer_main,
    timed,
)
from order_pipeline.common.config import Entity, load_entities
from order_pipeline.quality.gate import applies_to_deletes
from order_pipeline.quality.rules import Rule, RuleSet, load_rules
from order_pipeline.transforms.parse import EARLIEST, ISO_TIMESTAMP, LATEST

DECIMAL = re.compile(r"decimal\((\d+),\s*(\d+)\)")
SIMPLE_TYPES = {
    "string": "VARCHAR",
    "int": "INTEGER",
    "bigint": "BIGINT",
    "double": "DOUBLE",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
}
CORRUPT, SOURCE_FILE, WARNINGS = "_corrupt_record", "_source_file", "_quality_warnings"
ISSUES, DELETED = "_parse_issues", "_deleted"
SEVERITY_COLUMNS = {"quarantine": "_q", "defer": "_d", "fail": "_f", "warn": "_w"}
NO_ISSUES = "[]::VARCHAR[]"
INTEGERS = "('UBIGINT', 'BIGINT')"  # json_type of a JSON integer
NUMBERS = "('UBIGINT', 'BIGINT', 'DOUBLE')"
MAX_EPOCH_SECONDS = 9_223_372_036_854  # seconds whose microseconds fit a BIGINT
BLANK = " \t\n\r\f\u000b\u00a0"  # what not_blank trims (quality/checks.py)


class QualityFailure(RuntimeError):
    """A rule of severity ``fail`` matched."""


# -- SQL building blocks ------------------------------------------------------------------


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def duck_type(spark_type: str) -> str:
    match = DECIMAL.fullmatch(spark_type.replace(" ", ""))
    if match:
        return f"DECIMAL({match.group(1)},{match.group(2)})"
    return SIMPLE_TYPES[spark_type]


def typed_value(token: str, spark_type: str) -> tuple[str, str]:
    """(value, does-not-parse) SQL for one field given as a JSON value, as Spark's JSON
    reader takes it: strings take any JSON value as text; integers JSON integers that fit;
    decimals numbers or numeric strings; timestamps strings (or integers: epoch seconds,
    which parse but fail timestamp_format); a value that does not parse makes the whole
    record corrupt."""
    kind, text = f"json_type({token})", f"({token} ->> '$')"
    if spark_type == "string":
        return text, "FALSE"
    if spark_type == "timestamp":
        seconds = f"TRY_CAST({text} AS BIGINT)"
        value = (
            f"CASE WHEN {kind} = 'VARCHAR' THEN CAST(TRY_CAST({text} AS TIMESTAMPTZ) AS TIMESTAMP) "
            f"WHEN {kind} IN {INTEGERS} AND abs({seconds}) <= {MAX_EPOCH_SECONDS} "
            f"THEN make_timestamp({seconds} * 1000000) END"
        )
    elif spark_type in ("int", "bigint"):
        value = (
            f"CASE WHEN {kind} IN {INTEGERS} THEN TRY_CAST({text} AS {duck_type(spark_type)}) END"
        )
    elif spark_type == "double":
        value = f"CASE WHEN {kind} IN {NUMBERS} THEN TRY_CAST({text} AS DOUBLE) END"
    elif spark_type == "boolean":
        value = f"CASE WHEN {kind} = 'BOOLEAN' THEN {text} = 'true' END"
    elif spark_type == "date":
        value = f"CASE WHEN {kind} = 'VARCHAR' THEN TRY_CAST({text} AS DATE) END"
    else:  # decimal(p,s): a number, or a string holding one
        value = (
            f"CASE WHEN {kind} IN ('UBIGINT', 'BIGINT', 'DOUBLE', 'VARCHAR') "
            f"THEN TRY_CAST({text} AS {duck_type(spark_type)}) END"
        )
    return value, f"COALESCE({kind} <> 'NULL' AND ({value}) IS NULL, FALSE)"


def field_issues(name: str, spark_type: str, token: str, value: str) -> list[str]:
    """The parse issues of one field as transforms/parse.py reports them (``token``: the
    field's JSON text, null where a field repeats; ``value``: its typed value)."""

    def issue(code: str, when: str) -> str:
        return f"CASE WHEN {when} THEN [{literal(f'{code}:{name}')}] ELSE {NO_ISSUES} END"

    if spark_type == "timestamp":
        return [
            issue(
                "timestamp_format",
                f"{token} IS NOT NULL AND NOT regexp_matches({token}, {literal(ISO_TIMESTAMP)})",
            ),
            issue(
                "timestamp_range",
                f"{value} IS NOT NULL AND ({value} < TIMESTAMP {literal(EARLIEST)} "
                f"OR {value} >= TIMESTAMP {literal(LATEST)})",
            ),
        ]
    match = DECIMAL.fullmatch(spark_type.replace(" ", ""))
    if match:
        fraction = f"regexp_extract({token}, '^-?\\d*\\.(\\d+)$', 1)"
        return [
            issue("decimal_scale", f"{token} IS NOT NULL AND length({fraction}) > {match.group(2)}")
        ]
    return []


def parse_sql(entity: Entity) -> str:
    """SELECT over ``lines(line, filename, utf8)`` giving the contract columns, the raw
    line in _corrupt_record when it did not parse, the parse issues, the delete marker and
    the file: transforms/parse.py in SQL."""
    marker = entity.delete_marker
    fields = [*entity.fields, marker]
    struct = json.dumps(dict.fromkeys(fields, "JSON"))
    contract = "[" + ", ".join(literal(name) for name in fields) + "]"
    typed = {name: typed_value(f"j.{ident(name)}", t) for name, t in entity.fields.items()}
    deleted, marker_bad = typed_value(f"j.{ident(marker)}", "boolean")
    unparsed = " OR ".join(
        ["NOT utf8", "j IS NULL", marker_bad, *(bad for _, bad in typed.values())]
    )
    tokens = {
        name: f"CASE WHEN unique_keys THEN j.{ident(name)} ->> '$' END" for name in entity.fields
    }
    issues = [
        "list_transform(repeated, lambda k: 'duplicate_field:' || k)",
        f"list_transform(list_distinct(list_filter(keys, lambda k: NOT list_contains({contract}, k))), "
        "lambda k: 'extra_field:' || k)",
    ]
    for name, spark_type in entity.fields.items():
        issues += field_issues(name, spark_type, tokens[name], typed[name][0])
    values = ", ".join(f"{value} AS {ident(name)}" for name, (value, _) in typed.items())
    return f"""
        SELECT {values},
               CASE WHEN {unparsed} THEN line END AS {CORRUPT},
               CASE WHEN {unparsed} THEN {NO_ISSUES} ELSE flatten([{", ".join(issues)}]) END
                   AS {ISSUES},
               NOT ({unparsed}) AND COALESCE({deleted}, FALSE) AS {DELETED},
               filename AS {SOURCE_FILE}
        FROM (
            SELECT *, COALESCE(len(repeated), 0) = 0 AS unique_keys
            FROM (
                SELECT *, list_distinct(list_filter(keys, lambda k, i: list_position(keys, k) < i))
                    AS repeated
                FROM (
                    SELECT line, filename, utf8,
                           CASE WHEN is_object THEN json_transform(text, {literal(struct)}) END AS j,
                           CASE WHEN is_object THEN json_keys(text) END AS keys
                    FROM (
                        SELECT *, CASE WHEN json_valid(text) THEN json_type(text) = 'OBJECT' ELSE FALSE END
                            AS is_object
                        FROM (
                            SELECT line, filename, utf8,
                                   CASE WHEN utf8 THEN regexp_replace(line, '^\ufeff', '') END AS text
                            FROM lines
                        )
                    )
                )
            )
        )"""


def fails(rule: Rule) -> str:
    """SQL that is true exactly when a row fails ``rule`` (never null): quality/checks.py."""
    column = ident(rule.column) if rule.column else ""
    if rule.kind == "malformed":
        sql = f"{CORRUPT} IS NOT NULL"
    elif rule.kind == "not_null":
        sql = f"{column} IS NULL"
    elif rule.kind == "not_blank":
        sql = f"{column} IS NOT NULL AND trim({column}, {literal(BLANK)}) = ''"
    elif rule.kind == "regex":
        sql = f"{column} IS NOT NULL AND NOT regexp_matches({column}, {literal(rule.pattern)})"
    elif rule.kind == "in_set":
        values = ", ".join(literal(v) for v in rule.values)
        sql = f"{column} IS NOT NULL AND {column} NOT IN ({values})"
    elif rule.kind == "range":
        sql = f"{column} IS NOT NULL AND ({out_of_range(rule, column)})"
    elif rule.kind == "foreign_key":
        sql = f"{column} IS NOT NULL AND {ident(lookup_column(rule))} IS NULL"
    elif rule.kind == "parent_deleted":
        sql = f"{ident(lookup_column(rule))} IS NOT NULL"
    elif rule.kind == "parse_issue":
        prefix = literal(f"{rule.issue}:")
        sql = f"len(list_filter({ISSUES}, lambda i: starts_with(i, {prefix}))) > 0"
    elif rule.kind == "expression":
        sql = f"NOT COALESCE(({rule.expression}), TRUE)"
    else:
        raise ValueError(f"rule {rule.name}: unsupported kind {rule.kind!r}")
    return f"COALESCE({sql}, FALSE)"


def out_of_range(rule: Rule, column: str) -> str:
    parts = []
    if rule.min is not None:
        parts.append(f"{column} {'<=' if rule.strict_min else '<'} {literal(rule.min)}")
    if rule.max is not None:
        parts.append(f"{column} {'>=' if rule.strict_max else '>'} {literal(rule.max)}")
    return " OR ".join(parts)


def lookup_column(rule: Rule) -> str:
    """The helper column of a foreign_key (parent key found) or parent_deleted (the
    parent's delete sequence) rule."""
    return f"__lookup_{rule.name}"


def names_failed(rules: tuple[Rule, ...]) -> str:
    if not rules:
        return NO_ISSUES
    flagged = ", ".join(f"CASE WHEN {fails(r)} THEN {literal(r.name)} END" for r in rules)
    return f"list_filter([{flagged}], lambda x: x IS NOT NULL)"


def severity_names(ruleset: RuleSet, entity: Entity, severity: str) -> str:
    """As the Spark gate: a record that did not parse fails its malformed rule only, a
    delete only the rules on its parsing, key and sequence."""
    of = ruleset.of(severity)
    malformed = [r for r in ruleset.rules if r.kind == "malformed"]
    unparsed = " OR ".join(fails(r) for r in malformed) or "FALSE"
    parsed = tuple(r for r in of if r.kind != "malformed")
    on_deletes = tuple(r for r in parsed if applies_to_deletes(r, (entity.key, entity.sequence)))
    return (
        f"CASE WHEN {unparsed} THEN {names_failed(tuple(r for r in of if r.kind == 'malformed'))} "
        f"WHEN {DELETED} THEN {names_failed(on_deletes)} ELSE {names_failed(parsed)} END"
    )


def ordering(entity: Entity) -> str:
    """The pipeline's snapshot order, greatest first (nulls lowest, as Spark's max); a
    delete wins a tie on the sequence (transforms/latest.py)."""
    rest = [c for c in entity.columns if c not in (entity.key, entity.sequence)]
    columns = [entity.sequence, DELETED, *rest, SOURCE_FILE, WARNINGS]
    return ", ".join(f"{ident(c)} DESC NULLS LAST" for c in columns)


def latest_sql(entity: Entity, source: str) -> str:
    return (
        f"SELECT * FROM {source} QUALIFY row_number() OVER "
        f"(PARTITION BY {ident(entity.key)} ORDER BY {ordering(entity)}) = 1"
    )


# -- the pipeline -------------------------------------------------------------------------


class DuckPipeline:
    def __init__(self, con: duckdb.DuckDBPyConnection, landing: Path, as_of: str) -> None:
        self.con = con
        self.landing = landing
        self.as_of = as_of
        self.entities = load_entities()
        self.rules = {name: load_rules(e, self.entities) for name, e in self.entities.items()}

    def sql(self, text: str, params: list[object] | None = None) -> duckdb.DuckDBPyConnection:
        return self.con.execute(text, params or [])

    def scalar(self, text: str) -> int:
        return int(self.sql(text).fetchone()[0])

    def ensure_tables(self) -> None:
        self.sql("CREATE TABLE IF NOT EXISTS ingested_files (entity VARCHAR, file VARCHAR)")
        for name, entity in self.entities.items():
            columns = ", ".join(f"{ident(c)} {duck_type(t)}" for c, t in entity.fields.items())
            self.sql(
                f"CREATE TABLE IF NOT EXISTS bronze_{name} ({columns}, {CORRUPT} VARCHAR, "
                f"{ISSUES} VARCHAR[], {DELETED} BOOLEAN, {SOURCE_FILE} VARCHAR)"
            )
            self.sql(
                f"CREATE TABLE IF NOT EXISTS silver_{name} ({columns}, "
                f"{SOURCE_FILE} VARCHAR, {WARNINGS} VARCHAR[])"
            )
            self.sql(
                f"CREATE TABLE IF NOT EXISTS deferred_{name} ({columns}, {ISSUES} VARCHAR[], "
                f"{SOURCE_FILE} VARCHAR, {WARNINGS} VARCHAR[])"
            )
            self.sql(
                f"CREATE TABLE IF NOT EXISTS quarantine_{name} ({columns}, "
                f"{CORRUPT} VARCHAR, {SOURCE_FILE} VARCHAR, reasons VARCHAR[])"
            )
            key, sequence = entity.key, entity.sequence
            self.sql(
                f"CREATE TABLE IF NOT EXISTS tombstones_{name} ("
                f"{ident(key)} {duck_type(entity.fields[key])}, "
                f"{ident(sequence)} {duck_type(entity.fields[sequence])}, {SOURCE_FILE} VARCHAR)"
            )

    # bronze: only files not ingested before
    def ingest(self, name: str) -> int:
        seen = {
            row[0]
            for row in self.sql(
                "SELECT file FROM ingested_files WHERE entity = ?", [name]
            ).fetchall()
        }
        new = [str(p) for p in landing_files(self.landing, name) if str(p) not in seen]
        self.sql(
            f"CREATE OR REPLACE TEMP TABLE batch_{name} AS SELECT * FROM bronze_{name} LIMIT 0"
        )
        if not new:
            return 0
        self.read_lines(new)
        self.sql(f"INSERT INTO batch_{name} {parse_sql(self.entities[name])}")
        self.sql(f"INSERT INTO bronze_{name} SELECT * FROM batch_{name}")
        self.sql("INSERT INTO ingested_files SELECT ?, unnest(?)", [name, new])
        return self.scalar(f"SELECT count(*) FROM batch_{name}")

    def read_lines(self, files: list[str]) -> None:
        """``lines(line, filename, utf8)``: the non-blank lines of ``files``, split at
        every line feed, carriage return or both, as Spark's text source does. DuckDB's
        reader refuses a file that is not valid UTF-8; such files are split here, their
        invalid lines kept (decoded with replacement, ``utf8`` false) to be quarantined as
        malformed."""
        self.sql(
            "CREATE OR REPLACE TEMP TABLE lines (line VARCHAR, filename VARCHAR, utf8 BOOLEAN)"
        )
        try:
            self.insert_lines(files)
        except duckdb.InvalidInputException:
            readable = []
            for file in files:
                data = Path(file).read_bytes()
                try:
                    data.decode("utf-8")
                    readable.append(file)
                except UnicodeDecodeError:
                    rows = [(*decoded(line), file) for line in data.splitlines()]
                    self.con.executemany(
                        "INSERT INTO lines SELECT ?, ?, ? WHERE trim(?) <> ''",
                        [(text, file, utf8, text) for text, utf8, file in rows],
                    )
            if readable:
                self.insert_lines(readable)

    def insert_lines(self, files: list[str]) -> None:
        listed = ", ".join(literal(f) for f in files)
        # strict_mode off: a \r ends a line too (then an empty one, dropped as blank)
        self.sql(
            f"INSERT INTO lines SELECT line, filename, TRUE FROM read_csv([{listed}], "
            "columns={'line': 'VARCHAR'}, header=false, delim='\x1f', quote='', escape='', "
            "auto_detect=false, strict_mode=false, filename=true) "
            "WHERE line IS NOT NULL AND trim(line) <> ''"
        )

    # silver: gate, quarantine, defer, latest per key, deletes
    def gate_sql(self, entity: Entity, source: str) -> str:
        """The pipeline's ``check``: rows of a cascade relation whose parent was deleted at
        or after their sequence become deletes as of that delete; then every rule, with the
        parents' keys (and the deleted ones for a keep relation) and deletes looked up."""
        ruleset, key_of, seq_of = self.rules[entity.name], {}, {}
        for column, parent in entity.parents.items():
            spec = self.entities[parent]
            key_of[column], seq_of[column] = ident(spec.key), ident(spec.sequence)
        sequence = ident(entity.sequence)
        for column, on_delete in entity.on_parent_delete.items():
            if on_delete != "cascade":
                continue
            at = f"__cascade_{column}"
            source = (
                f"(SELECT c.* REPLACE (CASE WHEN {at} IS NULL THEN c.{sequence} "
                f"ELSE greatest({at}, c.{sequence}) END AS {sequence}, "
                f"c.{DELETED} OR {at} IS NOT NULL AS {DELETED}) "
                f"FROM {source} AS c LEFT JOIN (SELECT {key_of[column]} AS __key_{column}, "
                f"{seq_of[column]} AS {at} FROM tombstones_{entity.parents[column]}) "
                f"ON c.{ident(column)} = __key_{column} AND {at} >= c.{sequence})"
            )
        joins = []
        for rule in ruleset.rules:
            column, found = ident(rule.column or ""), ident(lookup_column(rule))
            if rule.kind == "foreign_key":
                parent = f"SELECT {key_of[rule.column]} FROM silver_{rule.parent}"
                if entity.on_parent_delete.get(rule.column) == "keep":
                    parent += f" UNION SELECT {key_of[rule.column]} FROM tombstones_{rule.parent}"
                joins.append(
                    f"LEFT JOIN (SELECT DISTINCT {key_of[rule.column]} AS {found} FROM ({parent})) "
                    f"ON c.{column} = {found}"
                )
            elif rule.kind == "parent_deleted":
                joins.append(
                    f"LEFT JOIN (SELECT {key_of[rule.column]} AS __key_{rule.name}, "
                    f"{seq_of[rule.column]} AS {found} FROM tombstones_{rule.parent}) "
                    f"ON c.{column} = __key_{rule.name} AND {found} >= c.{sequence}"
                )
        outcomes = ", ".join(
            f"{severity_names(ruleset, entity, severity)} AS {column}"
            for severity, column in SEVERITY_COLUMNS.items()
        )
        return f"SELECT c.*, {outcomes} FROM {source} AS c {' '.join(joins)}"

    def check(self, entity: Entity, source: str) -> None:
        """``checked_<entity>``: ``source`` through the gate; stop on a fail rule."""
        name = entity.name
        self.sql(f"CREATE OR REPLACE TEMP TABLE checked_{name} AS {self.gate_sql(entity, source)}")
        failing = self.sql(f"SELECT _f[1] FROM checked_{name} WHERE len(_f) > 0 LIMIT 1").fetchone()
        if failing:
            raise QualityFailure(f"{name}: rule {failing[0]!r} (severity fail) matched")

    def quarantine(self, entity: Entity) -> None:
        columns = ", ".join(ident(c) for c in entity.columns)
        self.sql(
            f"INSERT INTO quarantine_{entity.name} SELECT {columns}, {CORRUPT}, {SOURCE_FILE}, "
            f"_f || _q || _d || _w FROM checked_{entity.name} WHERE len(_q) > 0"
        )

    def silver(self, name: str) -> dict[str, int]:
        entity = self.entities[name]
        columns = ", ".join(ident(c) for c in entity.columns)
        self.sql(
            f"CREATE OR REPLACE TEMP TABLE candidates_{name} AS "
            f"SELECT {columns}, {CORRUPT}, {ISSUES}, {DELETED}, {SOURCE_FILE} FROM batch_{name} "
            f"UNION ALL SELECT {columns}, NULL, {ISSUES}, FALSE, {SOURCE_FILE} FROM deferred_{name}"
        )
        self.check(entity, f"candidates_{name}")
        self.quarantine(entity)
        counts = {
            "checked": self.scalar(f"SELECT count(*) FROM checked_{name}"),
            "quarantined": self.scalar(f"SELECT count(*) FROM checked_{name} WHERE len(_q) > 0"),
        }
        self.sql(f"DELETE FROM deferred_{name}")
        self.sql(
            f"INSERT INTO deferred_{name} SELECT {columns}, {ISSUES}, {SOURCE_FILE}, _w "
            f"FROM checked_{name} WHERE len(_q) = 0 AND len(_d) > 0"
        )
        self.merge_passed(entity)
        counts["parent_deleted"] = self.apply_parent_deletes(entity)
        self.purge_tombstones(entity)
        counts["deferred"] = self.scalar(f"SELECT count(*) FROM deferred_{name}")
        return counts

    def merge_passed(self, entity: Entity) -> None:
        """The checked rows that passed (deletes included) merged into silver: the batch's
        latest snapshot per key unless a tombstone beats it, competing with the current
        silver row of its key; the winners replace them, and each key's newest delete
        becomes its tombstone. Only keys in the batch are touched."""
        name, key, sequence = entity.name, ident(entity.key), ident(entity.sequence)
        columns = ", ".join(ident(c) for c in entity.columns)
        self.sql(
            f"CREATE OR REPLACE TEMP TABLE passed_{name} AS "
            f"SELECT {columns}, {DELETED}, {SOURCE_FILE}, _w AS {WARNINGS} FROM checked_{name} "
            f"WHERE len(_f) = 0 AND len(_q) = 0 AND len(_d) = 0"
        )
        self.sql(
            f"CREATE OR REPLACE TEMP TABLE latest_{name} AS "
            f"SELECT * FROM ({latest_sql(entity, f'passed_{name}')}) AS l WHERE NOT EXISTS "
            f"(SELECT 1 FROM tombstones_{name} AS t WHERE t.{key} = l.{key} "
            f"AND t.{sequence} >= l.{sequence})"
        )
        contenders = (
            f"(SELECT * FROM latest_{name} UNION ALL BY NAME SELECT *, FALSE AS {DELETED} "
            f"FROM silver_{name} WHERE {key} IN (SELECT {key} FROM latest_{name}))"
        )
        self.sql(f"CREATE OR REPLACE TEMP TABLE winners_{name} AS {latest_sql(entity, contenders)}")
        self.sql(f"DELETE FROM silver_{name} WHERE {key} IN (SELECT {key} FROM winners_{name})")
        self.sql(
            f"INSERT INTO silver_{name} BY NAME SELECT * EXCLUDE ({DELETED}) "
            f"FROM winners_{name} WHERE NOT {DELETED}"
        )
        self.sql(
            f"CREATE OR REPLACE TEMP TABLE deletes_{name} AS "
            f"SELECT {key}, {sequence}, {SOURCE_FILE} FROM passed_{name} WHERE {DELETED} "
            f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {sequence} DESC, "
            f"{SOURCE_FILE} DESC) = 1"
        )
        self.sql(
            f"DELETE FROM deletes_{name} WHERE {key} IN (SELECT d.{key} FROM deletes_{name} d "
            f"JOIN tombstones_{name} t ON t.{key} = d.{key} AND t.{sequence} >= d.{sequence})"
        )
        self.sql(f"DELETE FROM tombstones_{name} WHERE {key} IN (SELECT {key} FROM deletes_{name})")
        self.sql(f"INSERT INTO tombstones_{name} BY NAME SELECT * FROM deletes_{name}")

    def apply_parent_deletes(self, entity: Entity) -> int:
        """Silver rows whose parent was deleted at or after their sequence, under a cascade
        or quarantine relation, through the gate again: cascaded ones are deleted, the others
        move to quarantine. Returns how many rows left silver."""
        relations = [c for c, r in entity.on_parent_delete.items() if r != "keep"]
        if not relations:
            return 0
        name, key, sequence = entity.name, ident(entity.key), ident(entity.sequence)
        columns = ", ".join(ident(c) for c in entity.columns)
        reached = " OR ".join(
            f"EXISTS (SELECT 1 FROM tombstones_{entity.parents[c]} AS t "
            f"WHERE t.{ident(self.entities[entity.parents[c]].key)} = s.{ident(c)} "
            f"AND t.{ident(self.entities[entity.parents[c]].sequence)} >= s.{sequence})"
            for c in relations
        )
        self.sql(
            f"CREATE OR REPLACE TEMP TABLE reached_{name} AS SELECT {columns}, "
            f"NULL::VARCHAR AS {CORRUPT}, {NO_ISSUES} AS {ISSUES}, FALSE AS {DELETED}, "
            f"{SOURCE_FILE} FROM silver_{name} AS s WHERE {reached}"
        )
        left = self.scalar(f"SELECT count(*) FROM reached_{name}")
        if not left:
            return 0
        self.check(entity, f"reached_{name}")
        self.quarantine(entity)
        self.sql(
            f"DELETE FROM silver_{name} AS s WHERE EXISTS (SELECT 1 FROM checked_{name} AS q "
            f"WHERE len(q._q) > 0 AND q.{key} = s.{key} AND q.{sequence} = s.{sequence} "
            f"AND q.{SOURCE_FILE} IS NOT DISTINCT FROM s.{SOURCE_FILE})"
        )
        self.merge_passed(entity)
        return left

    def purge_tombstones(self, entity: Entity) -> None:
        """Tombstones older than conf/pipeline.yml's deletes.tombstone_retention go."""
        retention = entity.tombstone_retention_seconds
        if retention is not None:
            self.sql(
                f"DELETE FROM tombstones_{entity.name} WHERE {ident(entity.sequence)} < "
                f"CAST(now() AS TIMESTAMP) - to_seconds({retention})"
            )

    # gold: rebuilt from silver, the same answers as src/transforms/gold.py
    def gold(self) -> None:
        for statement in gold_statements(self.as_of):
            self.sql(statement)

    def counts(self) -> dict[str, int]:
        tables = [
            f"{layer}_{name}"
            for name in ENTITY_ORDER
            for layer in ("silver", "quarantine", "deferred", "tombstones")
        ]
        tables += list(GOLD_TABLES)
        return {t: self.scalar(f"SELECT count(*) FROM {t}") for t in tables}

    def quarantine_reasons(self) -> dict[str, dict[str, int]]:
        """Quarantined rows per entity and reason, to compare with the pipeline's."""
        return {
            name: dict(
                self.sql(
                    f"SELECT r, count(*) FROM (SELECT unnest(reasons) AS r FROM quarantine_{name}) "
                    "GROUP BY r ORDER BY r"
                ).fetchall()
            )
            for name in ENTITY_ORDER
        }


def decoded(line: bytes) -> tuple[str, bool]:
    """A line's text and whether it is valid UTF-8 (else decoded with replacement)."""
    try:
        return line.decode("utf-8"), True
    except UnicodeDecodeError:
        return line.decode("utf-8", errors="replace"), False


GOLD_TABLES = (
    "gold_order_details",
    "gold_product_sales_monthly",
    "gold_order_completion_status",
    "gold_most_sold_product_last_30d",
)


def gold_statements(as_of: str) -> list[str]:
    as_of_ts = f"CAST(CAST({literal(as_of)} AS TIMESTAMPTZ) AS TIMESTAMP)"
    return [
        """CREATE OR REPLACE TABLE gold_order_details AS
        SELECT li.line_item_id, li.order_id, li.product_id, o.customer_id, o.order_ts,
               o.status AS order_status, li.status AS line_status, li.quantity, li.unit_price,
               CAST(li.quantity * li.unit_price AS DECIMAL(18,2)) AS line_total, li.delivered_at,
               concat_ws(' ', c.first_name, c.last_name) AS customer_name,
               c.email AS customer_email, c.city AS customer_city, c.country AS customer_country,
               p.name AS product_name, p.category AS product_category
        FROM silver_line_items li
        LEFT JOIN silver_orders o ON li.order_id = o.order_id
        LEFT JOIN silver_customers c ON o.customer_id = c.customer_id
        LEFT JOIN silver_products p ON li.product_id = p.product_id""",
        """CREATE OR REPLACE TABLE gold_product_sales_monthly AS
        SELECT CAST(date_trunc('month', order_ts) AS DATE) AS month, product_id,
               max(product_name) AS product_name, max(product_category) AS product_category,
               CAST(sum(quantity) AS BIGINT) AS units,
               CAST(sum(line_total) AS DECIMAL(20,2)) AS revenue,
               CAST(count(DISTINCT order_id) AS BIGINT) AS orders
        FROM gold_order_details WHERE line_status = 'delivered'
        GROUP BY product_id, CAST(date_trunc('month', order_ts) AS DATE)""",
        """CREATE OR REPLACE TABLE gold_order_completion_status AS
        WITH items AS (
            SELECT order_id, count(*) AS total_items,
                   count(*) FILTER (WHERE status = 'delivered') AS delivered_items,
                   count(*) FILTER (WHERE status = 'cancelled') AS cancelled_items,
                   max(delivered_at) AS last_delivered_at
            FROM silver_line_items GROUP BY order_id
        ), joined AS (
            SELECT o.order_id, o.customer_id, o.order_ts, o.status AS order_status,
                   coalesce(i.total_items, 0) AS total, coalesce(i.delivered_items, 0) AS delivered,
                   coalesce(i.cancelled_items, 0) AS cancelled, i.last_delivered_at
            FROM silver_orders o LEFT JOIN items i ON o.order_id = i.order_id
        ), decided AS (
            SELECT *, CASE
                WHEN order_status = 'cancelled' OR (total > 0 AND cancelled = total) THEN 'Cancelled'
                WHEN total > 0 AND delivered = total THEN 'Completed'
                ELSE 'In Progress' END AS completion_status
            FROM joined
        )
        SELECT order_id, customer_id, order_ts, order_status,
               CAST(total AS BIGINT) AS total_items, CAST(delivered AS BIGINT) AS delivered_items,
               CAST(cancelled AS BIGINT) AS cancelled_items, completion_status,
               CASE WHEN completion_status = 'Completed' THEN last_delivered_at END AS completed_at
        FROM decided""",
        f"""CREATE OR REPLACE TABLE gold_most_sold_product_last_30d AS
        WITH window_items AS (
            SELECT product_id, product_name, product_category, order_id, quantity,
                   CAST(order_ts AS DATE) AS sales_day
            FROM gold_order_details
            WHERE line_status = 'delivered'
              AND order_ts >= {as_of_ts} - INTERVAL 30 DAYS AND order_ts < {as_of_ts}
        ), per_product AS (
            SELECT product_id, max(product_name) AS product_name,
                   max(product_category) AS product_category, sum(quantity) AS units,
                   count(DISTINCT order_id) AS orders, count(DISTINCT sales_day) AS sales_days
            FROM window_items GROUP BY product_id
        ), totals AS (SELECT sum(quantity) AS all_units FROM window_items)
        SELECT {as_of_ts} AS as_of, p.product_id, p.product_name, p.product_category,
               CAST(p.units AS BIGINT) AS units, CAST(p.orders AS BIGINT) AS orders,
               CAST(p.sales_days AS BIGINT) AS sales_days,
               CAST(round(p.units / t.all_units, 4) AS DECIMAL(5,4)) AS share_of_units
        FROM per_product p CROSS JOIN totals t
        ORDER BY p.units DESC, p.product_id ASC LIMIT 1""",
    ]


def run(landing: Path, state: Path, as_of: str, result: ChildResult) -> None:
    state.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(state / "pipeline.duckdb"))
    try:
        con.execute("SET TimeZone = 'UTC'")
        pipeline = DuckPipeline(con, landing, as_of)
        pipeline.ensure_tables()
        silver_counts: dict[str, dict[str, int]] = {}
        for name in ENTITY_ORDER:
            with timed(result.stages, f"bronze_{name}"):
                rows = pipeline.ingest(name)
            result.rows_in += rows
            with timed(result.stages, f"silver_{name}"):
                silver_counts[name] = pipeline.silver(name)
            print(f"  {name}: {rows} new lines; {silver_counts[name]}", flush=True)
        with timed(result.stages, "gold"):
            pipeline.gold()
        con.execute("CHECKPOINT")
        result.counts = pipeline.counts()
        result.details["silver"] = silver_counts
        result.details["quarantine_reasons"] = pipeline.quarantine_reasons()
        units, revenue = con.execute(
            "SELECT sum(units), sum(revenue) FROM gold_product_sales_monthly"
        ).fetchone()
        result.details["checks"] = {
            "gold_units": float(units or 0),
            "gold_revenue": float(revenue or 0),
        }
        result.details["duckdb_version"] = duckdb.__version__
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    return peer_main(__doc__ or "", "--state", run, argv)


if __name__ == "__main__":
    sys.exit(main())
