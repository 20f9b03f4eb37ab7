"""Hostile landing files: odd names, broken encodings, values outside the contract. Nothing
is doubled, altered, or dropped without a record and a reason."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

from builders import customer, land, line_bytes, product
from pipeline_helpers import quarantine_rows, quiet, run_entity, silver_rows

from order_pipeline.cli.display import json_lines
from order_pipeline.cli.report import quarantine_rows as listing
from order_pipeline.common.io import Lakehouse
from order_pipeline.common.landing import file_uri
from order_pipeline.jobs import bronze, replay

# A customer whose first name holds bytes that are not UTF-8 (latin-1 "ÿþ").
NOT_UTF8 = line_bytes(customer("C1")).replace(b'"Ada"', b'"Jo\xff\xfen"')


def test_a_line_that_is_not_utf8_is_kept_byte_exact_and_never_replayed(spark, ctx, capsys) -> None:
    land(ctx.profile.landing_root, "customers", [NOT_UTF8, customer("C2")])
    run_entity(spark, ctx, "customers")
    (raw,) = [
        r.raw
        for r in spark.table("quarantine_customers")
        .selectExpr("cast(raw_record as binary) as raw")
        .collect()
    ]
    assert bytes(raw) == NOT_UTF8  # the landed bytes, not a lossy decoding

    result = replay.run(spark, replace(ctx, entity="customers"), progress=quiet)
    assert (result.rows_in, result.rows_out, result.details["not_utf8"]) == (1, 0, 1)
    assert {r[0] for r in silver_rows(spark, "customers")} == {"C2"}  # no "Jo��n"
    assert [
        (key, reasons, status) for key, reasons, status, _ in quarantine_rows(spark, "customers")
    ] == [(None, ("malformed_record",), "open")]
    # and `order-pipeline quarantine --entity` shows the bytes, not replacement characters
    lake = Lakehouse(spark, ctx.profile)
    (shown,) = listing(lake, ctx.entities["customers"], None, None, mask=None).collect()
    assert shown.record == "(not UTF-8) hex:" + NOT_UTF8.hex().upper()


ODD_NAMES = ["odd [name] {x}.json", "what?.json", "st*r.json", "back\\slash.json",
             "sp ace.json", "ünïcødé.json", "%41-percent.json", "plain.json"]  # fmt: skip


def test_any_file_name_is_ingested_exactly_once(spark, ctx) -> None:
    landed = {
        name: land(ctx.profile.landing_root, "customers", [customer(f"C{i}a"), customer(f"C{i}b")], name)
        for i, name in enumerate(ODD_NAMES)
    }  # fmt: skip
    first = bronze.run(spark, replace(ctx, entity="customers"), progress=quiet)
    second = bronze.run(spark, replace(ctx, entity="customers"), progress=quiet)

    rows = spark.table("bronze_customers").select("customer_id", "_source_file").collect()
    by_file: dict[str, list[str]] = {}
    for row in rows:
        by_file.setdefault(row._source_file, []).append(row.customer_id)
    assert {file_uri(path): sorted(ids) for path, ids in
            ((p, [f"C{i}a", f"C{i}b"]) for i, p in enumerate(landed.values()))} == {
        file: sorted(ids) for file, ids in by_file.items()
    }  # fmt: skip
    assert (first.rows_in, first.details["new_files"]) == (2 * len(ODD_NAMES), len(ODD_NAMES))
    assert (second.rows_in, second.details["new_files"]) == (0, 0)


def test_sub_folders_and_gzip_are_ingested_and_everything_else_is_reported(spark, ctx) -> None:
    landing = Path(ctx.profile.landing_root) / "customers"
    land(ctx.profile.landing_root, "customers", [customer("C1")], "top.json")
    (landing / "2026" / "12").mkdir(parents=True)
    (landing / "2026" / "12" / "deep.json").write_bytes(line_bytes(customer("C2")) + b"\n")
    (landing / "zipped.json.gz").write_bytes(gzip.compress(line_bytes(customer("C3")) + b"\n"))
    (landing / "notes.csv").write_text("customer_id\nC4\n")
    (landing / ".part-0.json.tmp").write_text("half a line")
    (landing / "_staging").mkdir()
    (landing / "_staging" / "c5.json").write_bytes(line_bytes(customer("C5")) + b"\n")
    (landing / "elsewhere").symlink_to(
        Path(ctx.profile.landing_root).parent, target_is_directory=True
    )

    result = bronze.run(spark, replace(ctx, entity="customers"), progress=quiet)
    ids = sorted(r.customer_id for r in spark.table("bronze_customers").collect())
    assert ids == ["C1", "C2", "C3"]
    assert {(s["file"], s["reason"].split(":")[0].split(" (")[0]) for s in result.details["not_ingested"]} == {
        (".part-0.json.tmp", "hidden name"),
        ("_staging/c5.json", "hidden name"),
        ("notes.csv", "neither .json nor .json.gz"),
        ("elsewhere", "a symbolic link to a folder"),
    }  # fmt: skip


def test_what_the_settings_leave_out_is_reported_and_a_changed_file_is_not_read_again(
    spark, ctx
) -> None:
    landing = Path(ctx.profile.landing_root) / "customers"
    skip = replace(ctx.profile.landing, subfolders="skip", compressed="skip")
    ctx = replace(ctx, entity="customers", profile=replace(ctx.profile, landing=skip))
    top = land(ctx.profile.landing_root, "customers", [customer("C1")], "top.json")
    (landing / "sub").mkdir()
    (landing / "sub" / "deep.json").write_bytes(line_bytes(customer("C2")) + b"\n")
    (landing / "zipped.json.gz").write_bytes(gzip.compress(line_bytes(customer("C3")) + b"\n"))
    first = bronze.run(spark, ctx, progress=quiet)
    top.write_bytes(top.read_bytes() + line_bytes(customer("C9")) + b"\n")  # breaks the contract
    second = bronze.run(spark, ctx, progress=quiet)

    assert [r.customer_id for r in spark.table("bronze_customers").collect()] == ["C1"]
    reasons = {s["file"]: s["reason"] for s in first.details["not_ingested"]}
    assert reasons == {
        "sub/deep.json": "in a sub-folder, and landing.subfolders is skip",
        "zipped.json.gz": "gzip-compressed, and landing.compressed is skip",
    }
    changed = {s["file"]: s["reason"] for s in second.details["not_ingested"]}["top.json"]
    assert changed.startswith("changed after it was ingested")


DUPLICATE_CITY = line_bytes(customer("C7")).replace(
    b'"city": "London"', b'"city": "Oslo", "city": "Rome"'
)


def test_values_outside_the_contract_are_quarantined_with_their_reason(spark, ctx) -> None:
    land(ctx.profile.landing_root, "customers", [
        customer("C1"),
        customer("C2", updated_at=1764669600000),  # epoch milliseconds: year 57890 as seconds
        customer("C3", updated_at=1764669600),  # epoch seconds: a number, not a timestamp
        customer("C4", created_at="2026-01-01 00:00:00"),  # no zone
        customer("C5", created_at="0001-01-01T00:00:00Z"),
        customer(" \t ", email="blank@example.com"),
        DUPLICATE_CITY,
        customer("C8", nickname="Ada"),  # a field outside the contract: kept, warned
        b"\xef\xbb\xbf" + line_bytes(customer("C9")),  # a byte order mark
        *(customer(f"C{i}") for i in range(10, 14)),  # under max_quarantine_ratio 0.5
        # a string field holds a JSON string: Spark alone would keep these as their JSON text
        customer("C14", phone=4915112345678),
        customer("C15", first_name={"given": "Ada"}),
        customer("C16", city=["London"]),
        *(customer(f"C{i}") for i in range(17, 21)),
    ])  # fmt: skip
    (Path(ctx.profile.landing_root) / "products").mkdir(parents=True)
    crlf = b"\r\n".join(line_bytes(p) for p in (product("P2"), product("P3", price=0.5))) + b"\r\n"
    (Path(ctx.profile.landing_root) / "products" / "windows.json").write_bytes(crlf)
    land(ctx.profile.landing_root, "products", [product("P1", price=9.999)])
    run_entity(spark, ctx, "customers")
    run_entity(spark, ctx, "products")

    reasons = {key: why for key, why, _, _ in quarantine_rows(spark, "customers")}
    assert reasons == {
        "C2": ("timestamp_format", "timestamp_range"),
        "C3": ("timestamp_format",),
        "C4": ("timestamp_format",),
        "C5": ("timestamp_range",),
        " \t ": ("customer_id_not_blank",),
        "C7": ("duplicate_field",),
        **dict.fromkeys(("C14", "C15", "C16"), ("malformed_record",)),
    }
    assert [k for k, *_ in quarantine_rows(spark, "products")] == ["P1"]
    assert {r[0] for r in silver_rows(spark, "customers")} == {
        "C1",
        "C8",
        "C9",
        "C10",
        "C11",
        "C12",
        "C13",
        *(f"C{i}" for i in range(17, 21)),
    }
    assert {r[0] for r in silver_rows(spark, "products")} == {"P2", "P3"}
    (c8,) = spark.table("bronze_customers").where("customer_id = 'C8'").collect()
    assert (json.loads(c8._rescued_data), c8._parse_issues) == (
        {"nickname": "Ada"},
        ["extra_field:nickname"],
    )
    warned = spark.table("silver_customers").where(
        "array_contains(_quality_warnings, 'extra_field')"
    )
    assert [r.customer_id for r in warned.collect()] == ["C8"]
    extra = spark.table("ops_quality_metrics").where(
        "entity = 'customers' and rule = 'extra_field'"
    )
    assert [(r.rows_checked, r.rows_failed) for r in extra.collect()] == [(20, 1)]

    # a replay parses the landed line again under the same contract: nothing passes
    result = replay.run(spark, replace(ctx, entity="customers"), progress=quiet)
    assert (result.rows_in, result.rows_out) == (9, 0)
    # and any value a table can hold prints as JSON, year 57890 included
    lines = json_lines(
        spark.table("quarantine_customers").select("record.customer_id", "record.updated_at")
    )
    assert '{"customer_id":"C2","updated_at":"+57890-' in "\n".join(sorted(lines))
