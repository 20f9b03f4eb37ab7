"""Hostile landing files: odd names, broken encodings, values outside the contract. Nothing
is doubled, altered, or dropped without a record and a reason."""

from __future__ import annotations

from dataclasses import replace

from builders import customer, land, line_bytes
from pipeline_helpers import quarantine_rows, quiet, run_entity, silver_rows

from order_pipeline.cli.report import quarantine_rows as listing
from order_pipeline.common.io import Lakehouse
from order_pipeline.jobs import replay

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
    (shown,) = listing(Lakehouse(spark, ctx.profile), "customers", None, None).collect()
    assert shown.record == "(not UTF-8) hex:" + NOT_UTF8.hex().upper()
