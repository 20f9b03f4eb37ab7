"""Exactly once: a silver run that crashes anywhere in a micro-batch and is restarted
ends with exactly the tables an uninterrupted run gives; nothing lost, nothing doubled."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from builders import customer, land, line_item, order, product
from conftest import data_root_of
from pipeline_helpers import merge_silver, quarantine_rows, quiet, run_entity, silver_rows

from order_pipeline.common import io, platform
from order_pipeline.common.io import StreamFailed
from order_pipeline.jobs import bronze, replay, silver

EXPECTED_SILVER = {
    ("C1", "Ada", "Lovelace", "c1@example.com", None, "London", "GB", "2026-01-01 00:00:00", "2026-05-01 10:00:00"),
    ("C3", "Ada", "Lovelace", "c3@example.com", None, "Paris", "GB", "2026-01-01 00:00:00", "2026-05-01 10:00:00"),
}  # fmt: skip
EXPECTED_QUARANTINE = [("C2", ("email_valid",), "open", None)]


class Crash(RuntimeError):
    pass


def crash_at(step: str):
    def hook(current: str, batch_id: int) -> None:
        if current == step:
            raise Crash(f"injected crash at {step} of batch {batch_id}")

    return hook


def silver_as_text(spark) -> set[tuple]:
    return {
        tuple(None if v is None else str(v) for v in row) for row in silver_rows(spark, "customers")
    }


def land_customers(ctx) -> None:
    land(ctx.profile.landing_root, "customers",
         [customer("C1"), customer("C2", email="c2-at-example.com"), customer("C3", city="Paris")])  # fmt: skip


def assert_exactly_once(spark) -> None:
    assert silver_as_text(spark) == EXPECTED_SILVER
    assert quarantine_rows(spark, "customers") == EXPECTED_QUARANTINE
    metrics = spark.table("ops_quality_metrics").where("entity = 'customers'")
    per_rule = {(r.rule, r.rows_checked, r.rows_failed) for r in metrics.collect()}
    assert metrics.count() == len(per_rule)  # one row per rule and batch: none doubled
    assert ("email_valid", 3, 1) in per_rule
    assert ("outcome:quarantined", 3, 1) in per_rule


@pytest.mark.parametrize("step", ["checked", "merged", "batch_done"])
def test_restart_after_a_crash_inside_the_batch_gives_the_same_tables(spark, ctx, step) -> None:
    ctx = replace(ctx, entity="customers")
    land_customers(ctx)
    bronze.run(spark, ctx, progress=quiet)
    with pytest.raises(StreamFailed, match=f"injected crash at {step}"):
        silver.run(spark, ctx, progress=quiet, fault_hook=crash_at(step))
    silver.run(spark, ctx, progress=quiet)
    assert_exactly_once(spark)
    # and the replayed batch did not commit twice: one MERGE and one quarantine append
    operations = [r.operation for r in spark.sql("describe history quarantine_customers").collect()]
    assert operations.count("WRITE") == 1


@pytest.fixture
def serverless_session(monkeypatch):
    """The test session behaves as a Spark Connect one: no DataFrame cache, and Delta's
    txnAppId/txnVersion session settings refused (platform.set_session_conf raises), as on
    serverless. Appends keep their writer options, which serverless accepts."""
    monkeypatch.setattr(platform, "is_spark_connect", lambda _: True)
    with pytest.raises(platform.ConfigNotAvailable):
        platform.set_session_conf(None, io.TXN_APP_ID, "x")  # type: ignore[arg-type]


CUSTOMERS_V2 = [
    customer("C1", city="Oslo", updated_at="2026-06-01T10:00:00Z"),
    customer("C4", updated_at="2026-06-01T10:00:00Z"),
    customer("C5", email="not-an-address"),
]
EXPECTED_SILVER_V2 = {
    ("C1", "Ada", "Lovelace", "c1@example.com", None, "Oslo", "GB", "2026-01-01 00:00:00", "2026-06-01 10:00:00"),
    ("C3", "Ada", "Lovelace", "c3@example.com", None, "Paris", "GB", "2026-01-01 00:00:00", "2026-05-01 10:00:00"),
    ("C4", "Ada", "Lovelace", "c4@example.com", None, "London", "GB", "2026-01-01 00:00:00", "2026-06-01 10:00:00"),
}  # fmt: skip


def merge_metrics(spark, table: str) -> list[dict[str, str]]:
    history = spark.sql(f"describe history {table}").where("operation = 'MERGE'")
    return [r.operationMetrics for r in history.orderBy("version").collect()]


@pytest.mark.parametrize("step", ["merged", "batch_done"])
def test_without_txn_session_settings_a_replayed_merge_changes_nothing(
    spark, ctx, serverless_session, step
) -> None:
    # silver already holds rows, so the second batch goes through the MERGE, not the
    # first-load append; the crash comes after that MERGE committed
    ctx = replace(ctx, entity="customers")
    land_customers(ctx)
    bronze.run(spark, ctx, progress=quiet)
    silver.run(spark, ctx, progress=quiet)
    land(ctx.profile.landing_root, "customers", CUSTOMERS_V2)
    bronze.run(spark, ctx, progress=quiet)
    with pytest.raises(StreamFailed, match=f"injected crash at {step}"):
        silver.run(spark, ctx, progress=quiet, fault_hook=crash_at(step))
    steps: list[tuple[str, int]] = []
    result = silver.run(
        spark, ctx, progress=quiet, fault_hook=lambda step, batch: steps.append((step, batch))
    )

    assert ("merged", 1) in steps  # the restart replayed batch 1 through the MERGE again
    assert silver_as_text(spark) == EXPECTED_SILVER_V2
    assert quarantine_rows(spark, "customers") == [
        ("C2", ("email_valid",), "open", None),
        ("C5", ("email_valid",), "open", None),
    ]
    # the replayed MERGE had no txn identity to skip it, and matched only equal rows: it
    # changed nothing, so Delta committed nothing; the one MERGE is the first attempt's
    (merge,) = merge_metrics(spark, "silver_customers")
    assert (merge["numTargetRowsUpdated"], merge["numTargetRowsInserted"]) == ("1", "1")
    # while the appends kept their writer options: each batch's rows once
    metrics = spark.table("ops_quality_metrics").where("rule = 'outcome:quarantined'")
    assert sorted((r.batch_id, r.rows_checked, r.rows_failed) for r in metrics.collect()) == [
        (0, 3, 1),
        (1, 3, 1),
    ]
    # and the task reports its run (the three runs here share one run id, as the attempts of
    # one Databricks job run do) from those metrics rows: both batches, each counted once
    assert (result.rows_in, result.details["quarantined"], result.details["batches"]) == (6, 2, 2)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    from dataclasses import replace
    from conftest import make_context
    from pathlib import Path
    from order_pipeline.jobs import silver
    from order_pipeline.common.spark import get_spark
    ctx = replace(make_context(Path({root!r})), entity="products")
    ctx = replace(ctx, profile=replace(ctx.profile, schema={schema!r}))
    spark = get_spark(ctx.profile)

    def die(step, batch_id):
        if step == "merged":
            os._exit(137)  # the process is killed: no cleanup, no checkpoint commit

    silver.run(spark, ctx, progress=lambda _: None, fault_hook=die)
    """
)


def test_a_killed_process_restarts_without_loss_or_duplicates(spark, ctx) -> None:
    ctx = replace(ctx, entity="products")
    land(
        ctx.profile.landing_root,
        "products",
        [product("P1"), product("P2", price=0), product("P3", price=12.5)],
    )
    bronze.run(spark, ctx, progress=quiet)
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).parent), root=str(data_root_of(ctx)), schema=ctx.profile.schema
    )
    killed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == 137, killed.stderr[-2000:]
    silver.run(spark, ctx, progress=quiet)
    assert {(r.product_id, r.price) for r in spark.table("silver_products").collect()} == {
        ("P1", Decimal("9.99")),
        ("P3", Decimal("12.50")),
    }
    assert quarantine_rows(spark, "products") == [("P2", ("price_positive",), "open", None)]


# -- kills during replay and during the deferred pass ------------------------------------------
KILL_AT_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    from dataclasses import replace
    from conftest import make_context
    from pathlib import Path
    from order_pipeline.jobs import replay, silver
    from order_pipeline.common.spark import get_spark
    ctx = replace(make_context(Path({root!r})), entity={entity!r})
    ctx = replace(ctx, profile=replace(ctx.profile, schema={schema!r}))
    spark = get_spark(ctx.profile)

    def die(step, batch_id=None):
        if step == {step!r}:
            os._exit(137)  # the process is killed: no cleanup, nothing after this step

    {call}
    sys.exit(3)  # the step was never reached
    """
)


def kill_at(ctx, entity: str, step: str, call: str) -> None:
    """Run ``call`` in a child process (its own JVM) that is killed at ``step``."""
    script = KILL_AT_SCRIPT.format(
        tests=str(Path(__file__).parent), root=str(data_root_of(ctx)), entity=entity,
        schema=ctx.profile.schema, step=step, call=call,
    )  # fmt: skip
    killed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == 137, killed.stderr[-2000:]


def orders_silver(spark) -> list[tuple]:
    return sorted(
        (r.order_id, r.customer_id, r.status) for r in spark.table("silver_orders").collect()
    )


# killed where the state is in between (merged, not yet marked); the kill after the marking
# passed too when these were written, and is left out for the suite's time budget
@pytest.mark.parametrize("step", ["replay_merged"])
def test_a_replay_killed_midway_and_run_again_gives_the_uninterrupted_tables(
    spark, ctx, step
) -> None:
    # orders of a customer that comes late expire into quarantine (limit 0 s); once the
    # customer lands, a replay of the expired rows merges them and marks them replayed
    expiring = replace(ctx.profile.quality, defer_max_age_seconds=0)
    ctx = replace(ctx, profile=replace(ctx.profile, quality=expiring))
    landing = ctx.profile.landing_root
    land(landing, "customers", [customer("C1")])
    land(landing, "orders", [order("O1", customer_id="C7"), order("O2"),
                             order("O3", customer_id="C7", status="shipped"),
                             order("O4", customer_id="C8"), order("O5", status="lost")])  # fmt: skip
    run_entity(spark, ctx, "customers")
    run_entity(spark, ctx, "orders")
    land(landing, "customers", [customer("C7")])
    run_entity(spark, ctx, "customers")
    # killed after the silver MERGE of O1 and O3 (not yet marked), or after the marking
    kill_at(ctx, "orders", step, 'replay.run(spark, ctx, statuses=("expired",), '
            'progress=lambda _: None, fault_hook=die)')  # fmt: skip
    result = replay.run(spark, replace(ctx, entity="orders"), statuses=("expired",), progress=quiet)

    assert orders_silver(spark) == [
        ("O1", "C7", "pending"), ("O2", "C1", "pending"), ("O3", "C7", "shipped"),
    ]  # fmt: skip
    assert quarantine_rows(spark, "orders") == [
        ("O1", ("customer_exists",), "replayed", None),
        ("O3", ("customer_exists",), "replayed", None),
        ("O4", ("customer_exists",), "expired", None),
        ("O5", ("status_allowed",), "open", None),
    ]
    # what the run again found left to do: after the MERGE, the two rows still expired (their
    # MERGE again matched equal rows and changed nothing); after the marking, one (O4)
    assert (result.rows_in, result.rows_out) == ((3, 2) if step == "replay_merged" else (1, 0))
    merges = merge_metrics(spark, "silver_orders")
    assert sum(int(m["numTargetRowsInserted"]) for m in merges) == 2  # O1 and O3, once


# promoted into silver, still in deferred (after the removal passed too; left out for time)
@pytest.mark.parametrize("step", ["deferred_promoted"])
def test_a_deferred_pass_killed_midway_and_run_again_gives_the_uninterrupted_tables(
    spark, ctx, step
) -> None:
    # the parents straight into silver, through its MERGE: only line items need their streams
    landing = ctx.profile.landing_root
    merge_silver(spark, ctx, "products", [product("P1")])
    merge_silver(spark, ctx, "orders", [order("O1")])
    land(landing, "line_items", [line_item("L1"), line_item("L2", product_id="P2"),
                                 line_item("L3", order_id="O2")])  # fmt: skip
    run_entity(spark, ctx, "line_items")
    merge_silver(spark, ctx, "products", [product("P2")])  # L2's parent arrives
    land(landing, "line_items", [line_item("L4")])  # and a new batch for the killed run
    bronze.run(spark, replace(ctx, entity="line_items"), progress=quiet)
    # killed after L2 was promoted into silver but before it left deferred_line_items, or
    # after it left and before anything else (the task's report, its run record)
    kill_at(
        ctx, "line_items", step, "silver.run(spark, ctx, progress=lambda _: None, fault_hook=die)"
    )
    result = silver.run(spark, replace(ctx, entity="line_items"), progress=quiet)

    assert sorted(r.line_item_id for r in spark.table("silver_line_items").collect()) == [
        "L1", "L2", "L4",
    ]  # fmt: skip
    assert [(r.line_item_id, r._failed_defer) for r in spark.table("deferred_line_items").collect()] == [
        ("L3", ["order_exists"])
    ]  # fmt: skip
    assert spark.table("quarantine_line_items").count() == 0
    # the stream's batches each reported once (batch 1, L4, ran in the killed process)
    metrics = spark.table("ops_quality_metrics").where(
        "entity = 'line_items' and rule = 'outcome:deferred'"
    )
    assert sorted((r.batch_id, r.rows_checked, r.rows_failed) for r in metrics.collect()) == [
        (0, 3, 2), (1, 1, 0),
    ]  # fmt: skip
    assert result.details["promoted"] == (1 if step == "deferred_promoted" else 0)
