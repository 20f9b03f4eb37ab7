"""Bronze lands every line exactly once, malformed lines included."""

from __future__ import annotations

from dataclasses import replace

from builders import land, order

from order_pipeline.common.io import Lakehouse
from order_pipeline.jobs import bronze

MALFORMED = '{"order_id": "O9", "customer_id": "C1", "status": '
WRONG_TYPE = '{"order_id": "O8", "customer_id": "C1", "order_ts": "2026-05-01T10:00:00Z", "status": "pending", "updated_at": "not-a-date"}'


def run_bronze(spark, ctx, entity: str = "orders"):
    return bronze.run(spark, replace(ctx, entity=entity), progress=lambda _: None)


def test_every_line_lands_with_raw_text_for_malformed_ones(spark, ctx) -> None:
    file = land(
        ctx.profile.landing_root,
        "orders",
        [order("O1"), MALFORMED, WRONG_TYPE, order("O2", status="shipped")],
    )
    result = run_bronze(spark, ctx)
    rows = {
        (r.order_id, r.status, r._corrupt_record, r._source_file.removeprefix("file:"))
        for r in spark.table("bronze_orders").collect()
    }
    assert rows == {
        ("O1", "pending", None, str(file)),
        ("O2", "shipped", None, str(file)),
        (None, None, MALFORMED, str(file)),
        ("O8", "pending", WRONG_TYPE, str(file)),
    }
    assert (result.rows_in, result.rows_out) == (4, 4)


def test_offsets_are_parsed_to_utc(spark, ctx) -> None:
    land(ctx.profile.landing_root, "orders", [order("O1", order_ts="2026-05-01T12:00:00+02:00")])
    run_bronze(spark, ctx)
    (row,) = spark.table("bronze_orders").selectExpr("cast(order_ts as string) as ts").collect()
    assert row.ts == "2026-05-01 10:00:00"


def test_second_run_ingests_only_new_files_and_no_new_files_changes_nothing(spark, ctx) -> None:
    land(ctx.profile.landing_root, "orders", [order("O1"), order("O2")])
    run_bronze(spark, ctx)
    land(ctx.profile.landing_root, "orders", [order("O3")])
    second = run_bronze(spark, ctx)
    assert second.rows_in == 1
    assert sorted(r.order_id for r in spark.table("bronze_orders").collect()) == ["O1", "O2", "O3"]
    lake = Lakehouse(spark, ctx.profile)
    version = lake.version("bronze_orders")
    third = run_bronze(spark, ctx)
    assert third.rows_in == 0
    assert lake.version("bronze_orders") == version


def test_missing_landing_folder_is_not_an_error(spark, ctx) -> None:
    result = run_bronze(spark, ctx, "products")
    assert result.rows_in == 0
    assert spark.table("bronze_products").count() == 0


def test_replayed_batch_is_not_appended_twice(spark, ctx) -> None:
    """A crash after the append but before the checkpoint commit replays the batch;
    the idempotent-write identity makes the second append a no-op."""
    import shutil
    from pathlib import Path

    land(ctx.profile.landing_root, "orders", [order("O1"), order("O2")])
    run_bronze(spark, ctx)
    commits = Path(ctx.profile.checkpoint_root) / "bronze_orders" / "commits"
    shutil.rmtree(commits)  # as if the process died before committing batch 0
    commits.mkdir()
    run_bronze(spark, ctx)
    assert spark.table("bronze_orders").count() == 2


def test_each_json_parse_of_a_line_is_in_the_plan_once_not_once_per_column(spark, ctx) -> None:
    # the typed read, the tokens of the timestamp and decimal fields, and the map of every
    # field (evaluated only for a line with extra fields); written inline in CASE branches,
    # Spark evaluated a parse once per reference (79 in the plan for customers; bronze 5x
    # slower at SF1)
    from order_pipeline.transforms.parse import parse_lines

    for name, entity in ctx.entities.items():
        lines = spark.createDataFrame([('{"a": 1}',)], "value string")
        plan = lines.transform(parse_lines(entity))._jdf.queryExecution().optimizedPlan()
        checked = [t for t in entity.fields.values() if t == "timestamp" or t.startswith("decimal")]
        assert plan.toString().count("from_json(") == (3 if checked else 2), name


def test_an_entity_without_timestamp_or_decimal_fields_parses_with_two_reads(spark) -> None:
    # a valid contract may sequence by a number and hold no timestamp or decimal field: then
    # there are no tokens to read as text, and every other rule holds as for the others
    from order_pipeline.common.config import Entity
    from order_pipeline.common.contract import CORRUPT_RECORD, PARSE_ISSUES, RESCUED_DATA
    from order_pipeline.transforms.parse import parse_lines

    entity = Entity("tags", key="tag_id", sequence="version",
                    fields={"tag_id": "string", "version": "bigint", "label": "string"})  # fmt: skip
    lines = [
        '{"tag_id": "T1", "version": 3, "label": "red"}',
        '{"tag_id": "T2", "version": 1, "label": "blue", "colour": "#00f"}',
        '{"tag_id": "T3", "version": 2, "version": 5, "label": "x"}',
        '{"tag_id": "T4", "version": 1, "label": 7}',
        "not json",
    ]
    df = spark.createDataFrame([(v,) for v in lines], "value string").transform(parse_lines(entity))
    assert df._jdf.queryExecution().optimizedPlan().toString().count("from_json(") == 2
    rows = {r.value: r for r in df.collect()}
    ok, extra, twice, wrong, junk = (rows[v] for v in lines)
    assert (ok.tag_id, ok.version, ok.label, ok[PARSE_ISSUES], ok[CORRUPT_RECORD]) == (
        "T1", 3, "red", [], None
    )  # fmt: skip
    assert (extra[PARSE_ISSUES], extra[RESCUED_DATA]) == (
        ["extra_field:colour"],
        '{"colour":"#00f"}',
    )
    assert twice[PARSE_ISSUES] == ["duplicate_field:version"]
    assert wrong[CORRUPT_RECORD] == lines[3] and wrong.tag_id == "T4"  # 7 is not a string
    assert junk[CORRUPT_RECORD] == "not json" and junk.tag_id is None
