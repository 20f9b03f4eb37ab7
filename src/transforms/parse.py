"""How a landed line becomes a record: the data contract's parsing rules, as one pure
transform that bronze applies on every platform and replay applies to quarantined raw text.

Per field type (conf/pipeline.yml):
- string: a JSON string (a number, object, array or boolean there makes the line unparsed:
  Spark alone would keep its JSON text; a string over 16 MiB, Spark's variant limit, too).
  int, bigint, long, ...: a JSON integer that fits the type.
  double, float: a JSON number. decimal(p,s): a JSON number with at most p digits.
  boolean: true/false. array<T>: a JSON array of T. A value of another JSON type makes the
  whole line unparsed (``_corrupt_record``), as does a line that is not a JSON object.
- timestamp: an ISO 8601 string with a date, a time and a zone, ``Z`` or ``+hh:mm``
  (``2026-05-01T10:00:00Z``, ``2026-05-01 10:00:00.5+02:00``); stored in UTC. A JSON number is
  not a timestamp: epoch seconds, milliseconds or microseconds cannot be told apart, so they
  are reported (``timestamp_format``) instead of read as seconds. Instants before 1900 or from
  2200 on are reported too (``timestamp_range``).
- decimal(p,s): a number with more than s decimal places is reported (``decimal_scale``),
  never rounded in silence.
- An object that names a field twice is reported (``duplicate_field``), as is every field
  outside the contract (``extra_field``); extra fields are kept in ``_rescued_data``.

- The delete marker (conf/pipeline.yml ``deletes.marker``, ``_deleted``): a JSON boolean;
  ``true`` makes the record a tombstone of its key, kept in ``_deleted`` (false when absent).
  Another JSON type makes the line unparsed, as for any field.

What is reported lands in ``_parse_issues`` as ``<issue>:<field>``, and the quality rules of
kind ``parse_issue`` (conf/quality/<entity>.yml) decide its severity. A line with any issue
keeps its raw text in ``_raw_line``, so a replay parses the line itself again. A line that is
not valid UTF-8 is not parsed at all (its bytes would be read through a lossy decoding): it
is kept as it landed in ``_corrupt_record``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from order_pipeline.common.config import Entity
from order_pipeline.common.contract import (
    CORRUPT_RECORD,
    DELETED,
    PARSE_ISSUES,
    RAW_LINE,
    RESCUED_DATA,
)

ISO_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})$"
EARLIEST, LATEST = "1900-01-01 00:00:00", "2200-01-01 00:00:00"  # the sane range, in UTC
_DECIMAL = r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$"


# helper columns of the staged projections (parse_lines), dropped before it returns
_UTF8, _TEXT, _TYPED, _KEYS = "__parse_utf8", "__parse_text", "__parse_typed", "__parse_keys"
_REPEATED, _TOKENS, _EXTRAS = "__parse_repeated", "__parse_tokens", "__parse_extras"
_FOUND, _PARSED = "__parse_found", "__parse_parsed"
_HELPERS = (_UTF8, _TEXT, _TYPED, _KEYS, _REPEATED, _TOKENS, _EXTRAS, _FOUND, _PARSED)


def _kind(field: str) -> str:
    return f"__parse_kind_{field}"


def _value(field: str) -> str:
    return f"__parse_value_{field}"


def _issue(code: str, field: str, when: Column) -> Column:
    return F.when(when, F.array(F.lit(f"{code}:{field}"))).otherwise(F.array())


def parse_lines(entity: Entity, line: str = "value") -> Callable[[DataFrame], DataFrame]:
    """Rows with a landed ``line`` -> the same rows plus the contract's columns, the raw
    text where the line did not parse, extra fields, the issues found, and the raw text of
    lines with issues."""

    def transform(df: DataFrame) -> DataFrame:
        # Each step below is its own projection over named helper columns (dropped at the
        # end): Spark evaluates an expression inside a CASE branch once per reference, so the
        # JSON parses written inline ran several times per line (bronze took 7x as long).
        # Spark does not collapse a projection into one that references its costly
        # expressions more than once (CollapseProject), so each parse runs once.
        raw = F.col(line)
        options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT_RECORD}
        marker = entity.delete_marker
        # Spark reads any JSON value into a string field as its JSON text (12345 as "12345",
        # an object as '{"given":"Ada"}'): string fields are read as variants, whose type
        # says whether the value was a JSON string
        strings = [f for f, t in entity.fields.items() if t.strip().lower() == "string"]
        schema = ", ".join(
            f"`{f}` {'variant' if f in strings else t}" for f, t in entity.fields.items()
        )
        checked = [
            f
            for f, t in entity.fields.items()
            if t.strip().lower() == "timestamp" or _decimal_scale(t) is not None
        ]
        token_schema = ", ".join(f"`{f}` string" for f in checked)
        utf8 = F.col(_UTF8)
        staged = df.withColumn(_UTF8, F.is_valid_utf8(raw)).withColumn(
            # else the bytes would be read through a lossy decoding; a byte order mark is
            # not data
            _TEXT,
            F.when(utf8, F.regexp_replace(raw, "^\ufeff", "")),
        )
        text = F.col(_TEXT)
        staged = staged.withColumns(
            {
                _TYPED: F.from_json(
                    text, f"{schema}, `{marker}` boolean, `{CORRUPT_RECORD}` string", options
                ),
                _KEYS: F.json_object_keys(text),
            }
        )
        typed, keys = F.col(_TYPED), F.col(_KEYS)
        staged = staged.withColumns(
            {
                # the pairwise search for repeated names only where a name repeats
                _REPEATED: F.when(
                    F.size(F.array_distinct(keys)) < F.size(keys),
                    F.array_distinct(
                        F.filter(keys, lambda k: F.size(F.filter(keys, lambda j: j == k)) > 1)
                    ),
                ).otherwise(F.array().cast("array<string>")),
                **{_kind(f): F.schema_of_variant(typed[f]) for f in strings},  # NULL: absent
            }
        )
        repeated = F.col(_REPEATED)
        kinds = {f: F.col(_kind(f)) for f in strings}
        unique_keys = F.coalesce(F.size(repeated), F.lit(0)) == 0
        contract = F.array(*[F.lit(c) for c in [*entity.columns, marker]])
        staged = staged.withColumns(
            {
                # the tokens the checks below read, as text (a string field takes any JSON
                # value's text; only where no field repeats, as for the map of extra fields)
                _TOKENS: F.when(unique_keys, F.from_json(text, token_schema))
                if token_schema
                else F.lit(None),
                _EXTRAS: F.array_except(
                    F.coalesce(keys, F.array().cast("array<string>")), contract
                ),
            }
        )
        tokens, extras = F.col(_TOKENS), F.col(_EXTRAS)
        values = {
            f: F.when(kinds[f] == "STRING", F.variant_get(typed[f], "$", "string"))
            if f in strings
            else typed[f]
            for f in entity.fields
        }
        not_a_string = [~kinds[f].isin("STRING", "VOID") for f in strings]  # VOID: a JSON null
        issues = [
            F.transform(F.coalesce(repeated, F.array()), lambda k: F.concat(F.lit("duplicate_field:"), k)),
            F.transform(extras, lambda k: F.concat(F.lit("extra_field:"), k)),
        ]  # fmt: skip
        for field, spark_type in entity.fields.items():
            token, value = tokens[field], values[field]
            if spark_type.lower() == "timestamp":
                issues.append(
                    _issue(
                        "timestamp_format", field, token.isNotNull() & ~token.rlike(ISO_TIMESTAMP)
                    )
                )
                issues.append(_issue("timestamp_range", field, value.isNotNull()
                                     & ((value < F.lit(EARLIEST).cast("timestamp"))
                                        | (value >= F.lit(LATEST).cast("timestamp")))))  # fmt: skip
            elif (scale := _decimal_scale(spark_type)) is not None:
                fraction = F.regexp_extract(token, r"^-?\d*\.(\d+)$", 1)
                issues.append(_issue("decimal_scale", field, token.isNotNull() & (F.length(fraction) > scale)))  # fmt: skip
        wrong_type = F.coalesce(reduce(operator.or_, not_a_string, F.lit(False)), F.lit(False))
        staged = staged.withColumns(
            {
                **{_value(f): values[f] for f in strings},
                _FOUND: F.flatten(F.array(*issues)),
                _PARSED: utf8 & typed[CORRUPT_RECORD].isNull() & keys.isNotNull() & ~wrong_type,
            }
        )
        found, parsed = F.col(_FOUND), F.col(_PARSED)
        return staged.withColumns(
            {
                # the fields that did parse are kept beside the raw text of a malformed line
                **{
                    c: F.when(utf8, F.col(_value(c)) if c in strings else values[c])
                    for c in entity.columns
                },
                CORRUPT_RECORD: F.when(~parsed, raw),
                DELETED: F.coalesce(F.when(parsed, typed[marker]), F.lit(False)),
                # every field's token, parsed again only for the few lines with extra fields
                RESCUED_DATA: F.when(
                    parsed & (F.size(extras) > 0) & unique_keys,
                    F.to_json(
                        F.map_filter(
                            F.from_json(text, "map<string,string>"),
                            lambda k, _: ~F.array_contains(contract, k),
                        )
                    ),
                ),
                PARSE_ISSUES: F.when(parsed, found).otherwise(F.array().cast("array<string>")),
                # and of every delete: a quarantined delete keeps its marker for replay
                RAW_LINE: F.when(
                    parsed & ((F.size(found) > 0) | F.coalesce(typed[marker], F.lit(False))), raw
                ),
            }
        ).drop(*_HELPERS, *(_kind(f) for f in strings), *(_value(f) for f in strings))

    return transform


def _decimal_scale(spark_type: str) -> int | None:
    match = re.match(_DECIMAL, spark_type.strip().lower())
    return int(match.group(2)) if match else None
