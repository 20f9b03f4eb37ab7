"""Great Expectations reading of the quality rules: for every mapped rule, GX's unexpected
count equals the project's predicate count and a count worked out by hand from the rows."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from order_pipeline.common.config import load_entities
from order_pipeline.common.contract import GX_RESULTS_DDL, bronze_schema
from order_pipeline.quality.checks import failed
from order_pipeline.quality.gx import (
    GX_QUERY_VIEW,
    SKIPPED,
    expectation_for,
    expectations_for,
    gx_result_rows,
    validate_batch,
)
from order_pipeline.quality.rules import Rule, RuleSet, load_rules

T0 = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
ENTITIES = load_entities()


def line_item(line_item_id: str | None = "L1", **overrides: Any) -> dict[str, Any]:
    record = {
        "line_item_id": line_item_id, "order_id": "O1", "product_id": "P1", "quantity": 1,
        "unit_price": Decimal("9.99"), "status": "pending", "delivered_at": None,
        "updated_at": T0, "_corrupt_record": None, "_rescued_data": None, "_parse_issues": [],
    }  # fmt: skip
    return {**record, **overrides}


def customer(customer_id: str | None = "C1", **overrides: Any) -> dict[str, Any]:
    record = {
        "customer_id": customer_id, "first_name": "Ada", "last_name": "Lovelace",
        "email": "ada@example.com", "phone": None, "city": "London", "country": "GB",
        "created_at": T0, "updated_at": T0, "_corrupt_record": None, "_rescued_data": None,
        "_parse_issues": [],
    }  # fmt: skip
    return {**record, **overrides}


def unparsed(entity: str, corrupt: str | None, rescued: str | None = None) -> dict[str, Any]:
    """A bronze row for a line that did not parse: every field null."""
    fields = dict.fromkeys(ENTITIES[entity].fields)
    return {**fields, "_corrupt_record": corrupt, "_rescued_data": rescued, "_parse_issues": []}


def bronze_frame(spark, entity: str, records: list[dict[str, Any]]):
    schema = bronze_schema(ENTITIES[entity])
    return spark.createDataFrame([[r.get(f.name) for f in schema.fields] for r in records], schema)


LINE_ITEMS = [
    line_item("L1"),
    line_item("L2", quantity=0),  # strict min boundary: fails
    line_item("L3", quantity=-2),
    line_item("L4", quantity=None),  # not_null fails, range passes on null
    line_item("L5", unit_price=Decimal("0.00")),  # non-strict min boundary: passes
    line_item("L6", unit_price=Decimal("-0.01")),
    line_item("L7", unit_price=None),
    line_item("L8", status="lost"),
    line_item("L9", status="Pending"),  # the set is case-sensitive
    line_item("L10", status=None),
    line_item(None),
    line_item("L12", updated_at=None),
    unparsed("line_items", corrupt='{"line_item_id": "L13", "quantity": '),
    # extra fields are kept in _rescued_data: a warning, not malformed
    line_item(
        "L14",
        quantity=None,
        _rescued_data='{"colour": "red"}',
        _parse_issues=["extra_field:colour"],
    ),
    unparsed("line_items", corrupt="not json", rescued='{"x": 1}'),
    line_item(" \t"),  # a key of white space only
    line_item("L16", _parse_issues=["decimal_scale:unit_price", "timestamp_format:updated_at"]),
    line_item("L17", _parse_issues=["duplicate_field:status", "timestamp_range:delivered_at"]),
]
# Failing rows of LINE_ITEMS by rule, worked out by hand from the comments above.
LINE_ITEMS_EXPECTED = {
    "malformed_record": 2,  # L13 line, the last unparsed line
    "line_item_id_not_blank": 1,  # " \t"
    "timestamp_format": 1,  # L16
    "timestamp_range": 1,  # L17
    "decimal_scale": 1,  # L16
    "duplicate_field": 1,  # L17
    "extra_field": 1,  # L14
    "line_item_id_not_null": 3,  # line_item(None) and the two unparsed lines
    "updated_at_not_null": 3,  # L12 and the two unparsed lines
    "quantity_positive": 2,  # L2, L3
    "quantity_not_null": 4,  # L4, L14 and the two unparsed lines
    "unit_price_not_negative": 1,  # L6
    "unit_price_not_null": 3,  # L7 and the two unparsed lines
    "status_allowed": 2,  # L8, L9
    "status_not_null": 3,  # L10 and the two unparsed lines
}

CUSTOMERS = [
    customer("C1"),
    customer("C2", email="not-an-email"),
    customer("C3", email="a@b"),  # no top-level domain
    customer("C4", email=None),  # email_not_null fails, email_valid passes on null
    customer("C5", email="first.last+tag@mail.example.co.uk"),
    customer("C6", email="x@example.com "),  # trailing space
    # the pattern ends in \z (end of input), so a trailing line break fails
    customer("C7", email="nl@example.com\n"),
    customer("C8", country="gb"),
    customer("C9", country="GBR"),
    customer("C10", country=None),
    customer(None),
    unparsed("customers", corrupt='{"customer_id": "C12",'),
]
CUSTOMERS_EXPECTED = {
    "malformed_record": 1,  # C12 line
    "customer_id_not_blank": 0,
    "timestamp_format": 0,
    "timestamp_range": 0,
    "duplicate_field": 0,
    "extra_field": 0,
    "customer_id_not_null": 2,  # customer(None), C12 line
    "updated_at_not_null": 1,  # C12 line
    "email_valid": 4,  # C2, C3, C6, C7
    "email_not_null": 2,  # C4, C12 line
    "country_iso2": 2,  # C8, C9
}

PROBE_SCHEMA = "n int, x double, s string, _corrupt_record string, _rescued_data string"
PROBE_ROWS = [
    # n,   x,            s,      corrupt, rescued
    (0, 0.0, "aa", None, None),
    (1, 0.5, "xaby", None, None),
    (5, 1.0, "xx", "bad", None),
    (10, 9.99, "b", "bad", "r"),
    (11, 10.0, None, None, None),
    (None, float("nan"), "x{2}", None, None),
    (-1, None, "AB", None, None),
    (10, 10.01, "", None, "r"),
]
PROBE_RULES = RuleSet(
    "probe",
    (
        Rule("malformed", "malformed", "quarantine"),
        Rule("n_not_null", "not_null", "quarantine", column="n"),
        Rule("x_not_null", "not_null", "warn", column="x"),  # NaN is not null
        Rule("n_min", "range", "quarantine", column="n", min=0),
        Rule("n_min_strict", "range", "quarantine", column="n", min=0, strict_min=True),
        Rule("n_max", "range", "warn", column="n", max=10),
        Rule("n_max_strict", "range", "warn", column="n", max=10, strict_max=True),
        Rule("n_between", "range", "warn", column="n", min=1, max=10),
        Rule(
            "n_between_strict",
            "range",
            "warn",
            column="n",
            min=1,
            max=10,
            strict_min=True,
            strict_max=True,
        ),
        Rule("x_between_mixed", "range", "fail", column="x", min=0, max=10, strict_min=True),
        Rule("s_contains_ab", "regex", "warn", column="s", pattern="ab"),  # unanchored search
        Rule("s_lowercase", "regex", "warn", column="s", pattern="^[a-z]+$"),
        Rule("n_in_set", "in_set", "quarantine", column="n", values=(0, 1, 5)),
        Rule("s_in_set", "in_set", "quarantine", column="s", values=("aa", "xx", "")),
        Rule("s_two_letters", "expression", "warn", expression="s rlike '^[a-z]{2}$'"),
        Rule("n_below_x", "expression", "warn", expression="n < x"),
        Rule("s_parent", "foreign_key", "defer", column="s", parent="customers"),
    ),
)
PROBE_EXPECTED = {
    "malformed": 2,  # rows 3, 4 (corrupt; row 8's rescued data is no reason)
    "n_not_null": 1,  # row 6
    "x_not_null": 1,  # row 7 (row 6 is NaN, not null)
    "n_min": 1,  # -1
    "n_min_strict": 2,  # 0, -1
    "n_max": 1,  # 11
    "n_max_strict": 3,  # 10, 11, 10
    "n_between": 3,  # 0, 11, -1
    "n_between_strict": 6,  # 0, 1, 10, 11, -1, 10
    "x_between_mixed": 3,  # 0.0, NaN (Spark orders NaN above every number), 10.01
    "s_contains_ab": 6,  # all but "xaby" and null
    "s_lowercase": 3,  # "x{2}", "AB", ""
    "n_in_set": 4,  # 10, 11, -1, 10
    "s_in_set": 4,  # "xaby", "b", "x{2}", "AB"
    "s_two_letters": 5,  # "xaby", "b", "x{2}", "AB", "" (null passes)
    "n_below_x": 5,  # rows 1-5 (row 6 null, row 7 null, row 8 10 < 10.01)
}


def predicate_counts(df, rules: RuleSet) -> dict[str, int]:
    """What the quality gate counts: ``df.where(failed(rule)).count()``, in one pass."""
    mapped = [r for r in rules.rules if r.kind != "foreign_key"]
    row = df.agg(*[F.count_if(failed(r)).alias(f"r{i}") for i, r in enumerate(mapped)]).first()
    return {r.name: row[f"r{i}"] for i, r in enumerate(mapped)}


def gx_counts(result: dict[str, Any]) -> dict[str, int]:
    """GX's unexpected count per rule (malformed's two expectations count disjoint rows)."""
    counts: dict[str, int] = {}
    for entry in result["results"]:
        if entry["status"] != SKIPPED:
            assert entry["status"] == "validated", entry
            counts[entry["rule"]] = counts.get(entry["rule"], 0) + entry["unexpected_count"]
    return counts


@pytest.fixture(scope="module")
def line_items(spark):
    df = bronze_frame(spark, "line_items", LINE_ITEMS)
    rules = load_rules(ENTITIES["line_items"], ENTITIES)
    return rules, df, validate_batch(rules, df)


@pytest.fixture(scope="module")
def customers(spark):
    df = bronze_frame(spark, "customers", CUSTOMERS)
    rules = load_rules(ENTITIES["customers"], ENTITIES)
    return rules, df, validate_batch(rules, df)


@pytest.fixture(scope="module")
def probe(spark):
    # A session of its own, like the one foreachBatch hands its DataFrames to: GX must run
    # its SQL (expression rules) in the DataFrame's session, not the builder's default one.
    df = spark.newSession().createDataFrame(PROBE_ROWS, PROBE_SCHEMA)
    return PROBE_RULES, df, validate_batch(PROBE_RULES, df)


@pytest.mark.parametrize(
    ("case", "expected"),
    [("line_items", LINE_ITEMS_EXPECTED), ("customers", CUSTOMERS_EXPECTED),
     ("probe", PROBE_EXPECTED)],
)  # fmt: skip
def test_gx_counts_equal_predicate_counts_and_hand_counts(request, case, expected) -> None:
    rules, df, result = request.getfixturevalue(case)
    assert predicate_counts(df, rules) == expected
    assert gx_counts(result) == expected
    rows = df.count()
    assert result["element_count"] == rows
    assert result["success"] is False
    for entry in result["results"]:
        assert entry["severity"] == rules.named(entry["rule"]).severity
        if entry["expectation"] == "unexpected_rows_expectation":
            assert entry["element_count"] is None  # GX reports none for a query
            assert entry["success"] is (entry["unexpected_count"] == 0)
        elif entry["status"] != SKIPPED:
            assert entry["success"] is (entry["unexpected_count"] == 0)
            assert entry["element_count"] == rows


def test_malformed_is_the_raw_text_of_lines_that_did_not_parse(line_items) -> None:
    _, _, result = line_items
    malformed = [e for e in result["results"] if e["rule"] == "malformed_record"]
    assert [(e["column"], e["unexpected_count"], e["element_count"]) for e in malformed] == [
        ("_corrupt_record", 2, 18),
    ]


def test_unmapped_rules_are_reported_as_skipped(line_items) -> None:
    _, _, result = line_items
    skipped = [e for e in result["results"] if e["status"] == SKIPPED]
    assert [(e["rule"], e["kind"], e["expectation"], e["success"]) for e in skipped] == [
        ("order_exists", "foreign_key", SKIPPED, None),
        ("product_exists", "foreign_key", SKIPPED, None),
    ]
    assert all("parent" in e["reason"] for e in skipped)
    assert result["statistics"]["skipped_rules"] == 2
    assert result["statistics"]["evaluated_expectations"] == 15  # every rule but the two FKs


def test_gx_result_rows(spark, line_items) -> None:
    rules, _, result = line_items
    rows = gx_result_rows(spark, rules, result, run_id="run-1", batch_id=7)
    assert rows.schema == StructType.fromDDL(GX_RESULTS_DDL)
    null_check = "expect_column_values_to_not_be_null"
    query = "unexpected_rows_expectation"
    expected = [
        ("malformed_record", "quarantine", "expect_column_values_to_be_null", False, 18, 2),
        ("line_item_id_not_blank", "quarantine", "expect_column_values_to_not_match_regex", False, 18, 1),
        ("timestamp_format", "quarantine", query, False, None, 1),
        ("timestamp_range", "quarantine", query, False, None, 1),
        ("decimal_scale", "quarantine", query, False, None, 1),
        ("duplicate_field", "quarantine", query, False, None, 1),
        ("extra_field", "warn", query, False, None, 1),
        ("line_item_id_not_null", "quarantine", null_check, False, 18, 3),
        ("updated_at_not_null", "quarantine", null_check, False, 18, 3),
        ("quantity_positive", "quarantine", "expect_column_values_to_be_between", False, 18, 2),
        ("quantity_not_null", "quarantine", null_check, False, 18, 4),
        ("unit_price_not_negative", "quarantine", "expect_column_values_to_be_between", False, 18, 1),
        ("unit_price_not_null", "quarantine", null_check, False, 18, 3),
        ("status_allowed", "quarantine", "expect_column_values_to_be_in_set", False, 18, 2),
        ("status_not_null", "quarantine", null_check, False, 18, 3),
        ("order_exists", "defer", SKIPPED, None, None, None),
        ("product_exists", "defer", SKIPPED, None, None, None),
    ]  # fmt: skip
    got = rows.collect()
    assert [tuple(r)[3:9] for r in got] == expected
    assert {(r.entity, r.run_id, r.batch_id) for r in got} == {("line_items", "run-1", 7)}
    assert {r.validated_at.timestamp() for r in got} == {result["validated_at"].timestamp()}


def test_gx_result_rows_account_for_every_rule(spark, customers) -> None:
    rules, _, result = customers
    extra = Rule("email_domain_known", "foreign_key", "warn", column="email", parent="orders")
    wider = RuleSet(rules.entity, (*rules.rules, extra))
    rows = gx_result_rows(spark, wider, result, run_id="run-1", batch_id=1)
    missing = rows.where(F.col("rule") == extra.name).collect()
    assert [(r.expectation, r.success, r.unexpected_count) for r in missing] == [
        (SKIPPED, None, None)
    ]


def test_validation_leaves_nothing_behind(spark, probe) -> None:
    from great_expectations.data_context.data_context.context_factory import project_manager

    _, df, _ = probe
    assert not df.sparkSession.catalog.tableExists(GX_QUERY_VIEW)
    assert not df.is_cached
    assert dict(project_manager.get_datasources()) == {}


def test_expectation_mapping_carries_rule_and_severity() -> None:
    import great_expectations as gx

    expect = gx.expectations
    between = expectation_for(
        Rule("p", "range", "warn", column="price", min=0, max=100, strict_max=True)
    )
    assert isinstance(between, expect.ExpectColumnValuesToBeBetween)
    assert (between.min_value, between.max_value) == (0, 100)
    assert (between.strict_min, between.strict_max) == (False, True)
    assert between.meta == {"rule": "p", "severity": "warn", "kind": "range", "column": "price"}
    assert between.severity == "warning"

    (corrupt,) = expectations_for(Rule("m", "malformed", "quarantine"))
    assert (corrupt.column, corrupt.row_condition) == ("_corrupt_record", None)

    issue = expectation_for(Rule("d", "parse_issue", "quarantine", issue="decimal_scale"))
    assert issue.unexpected_rows_query == (
        "SELECT * FROM {batch} WHERE NOT coalesce((NOT exists(_parse_issues, "
        "i -> startswith(i, 'decimal_scale:'))), true)"
    )

    query = expectation_for(Rule("e", "expression", "fail", expression="s rlike 'a{2}'"))
    assert isinstance(query, expect.UnexpectedRowsExpectation)
    assert query.unexpected_rows_query == (
        "SELECT * FROM {batch} WHERE NOT coalesce((s rlike 'a{{2}}'), true)"
    )
    assert query.severity == "critical"

    assert expectation_for(Rule("f", "foreign_key", "defer", column="c", parent="p")) is None
