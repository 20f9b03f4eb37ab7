"""Dataset-level checks (conf/quality dataset_checks): a stale entity, a volume spike, a
duplicate key in silver and an orphan in gold are each reported with their severity, in
ops_quality_metrics and (for fail) in the task's error; a skipped task still judges
freshness; the reconciliation holds with superseded snapshots of every kind and deletes.

One module-scoped conf copy and lakehouse; the customers silver task runs twice, gold once.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from builders import customer, land, line_item, order, product
from conftest import make_context
from pipeline_helpers import merge_silver, quiet

from order_pipeline.common.config import conf_dir
from order_pipeline.common.contract import METRICS_DDL, ORDER_DETAILS, silver_table
from order_pipeline.common.inputs import Consumed, Versions
from order_pipeline.common.io import Lakehouse
from order_pipeline.jobs import bronze, gold, silver
from order_pipeline.jobs.checks import gold_checks
from order_pipeline.jobs.task import PENDING_RUNS, run_task
from order_pipeline.quality.dataset_checks import (
    DatasetCheck,
    DatasetCheckFailed,
    load_gold_checks,
    volume,
)
from order_pipeline.transforms.gold import GOLD_INPUTS

pytestmark = pytest.mark.usefixtures("repository_conf")  # every dataset check

CUSTOMER_CHECKS = """
dataset_checks:
  - {name: silver_fresh, kind: freshness, of: silver, max_age: 30 days, severity: warn}
  - {name: landing_fresh, kind: freshness, of: bronze, max_age: 1 day, severity: fail}
  - {name: landed_volume, kind: volume, runs: 2, factor: 3, severity: fail}
  - {name: key_unique, kind: unique_key, severity: fail}
  - {name: reconciled, kind: reconciliation, severity: fail}
"""
GOLD_CHECKS = """
dataset_checks:
  - {name: order_exists, kind: references, column: order_id, parent: orders, severity: fail}
  - {name: product_exists, kind: references, column: product_id, parent: products,
     severity: warn}
"""
NEW = "2026-12-01T10:00:00Z"


@pytest.fixture(scope="module")
def conf(tmp_path_factory):
    target = tmp_path_factory.mktemp("conf") / "conf"
    shutil.copytree(conf_dir(), target)
    rules = target / "quality" / "customers.yml"
    text = rules.read_text()
    rules.write_text(text[: text.index("dataset_checks:")] + CUSTOMER_CHECKS)
    (target / "quality" / "gold.yml").write_text(GOLD_CHECKS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORDER_PIPELINE_CONF", str(target))
        yield target


@pytest.fixture(scope="module")
def lake_ctx(spark, conf, tmp_path_factory):
    ctx = replace(make_context(tmp_path_factory.mktemp("checks")), entity="customers")
    Lakehouse(spark, ctx.profile)  # USE its schema
    return ctx


def dataset_rows(spark, run_id: str) -> dict[str, tuple]:
    return {
        r.rule: (r.severity, r.rows_checked, r.rows_failed)
        for r in spark.table("ops_quality_metrics")
        .where(f"source = 'dataset' and run_id = '{run_id}'")
        .collect()
    }


@pytest.fixture(scope="module")
def spike_run(spark, lake_ctx):
    """Two earlier runs read 2 rows each; this one lands 10 customers, their snapshots seven
    months old (stale), and a writer of this run leaves a second row for C1 in silver."""
    history = [
        ("customers", f"earlier-{i}", 0, "stream", "outcome:quarantined", "outcome", 2, 0,
         datetime(2026, 11, 1 + i))
        for i in range(2)
    ]  # fmt: skip
    Lakehouse(spark, lake_ctx.profile).ensure("ops_quality_metrics", METRICS_DDL)
    spark.createDataFrame(history, METRICS_DDL).write.format("delta").mode("append").saveAsTable(
        "ops_quality_metrics"
    )
    land(
        lake_ctx.profile.landing_root, "customers", [customer(f"C{i}") for i in range(10)], "z.json"
    )
    ctx = replace(lake_ctx, run_id="spike")

    def duplicate_c1(step: str, batch_id: int | None) -> None:
        if step == "merged":
            row = spark.table("silver_customers").where("customer_id = 'C1'")
            row.write.format("delta").mode("append").saveAsTable("silver_customers")

    bronze.run(spark, ctx, progress=quiet)
    warnings: list[str] = []
    with pytest.raises(DatasetCheckFailed) as failure:
        silver.run(spark, ctx, progress=warnings.append, fault_hook=duplicate_c1)
    return ctx, str(failure.value), warnings


def test_a_volume_spike_and_a_duplicate_key_fail_the_task_naming_check_and_figures(spike_run):
    _, message, _ = spike_run
    assert "customers: dataset check 'landed_volume' (volume) failed (severity fail)" in message
    assert "10 rows read from bronze against a median of 2 over the last 2 runs" in message
    assert "allowed 0.666667 to 6" in message
    assert "dataset check 'key_unique' (unique_key) failed" in message
    assert "1 rows beyond the first of a customer_id (1 keys held more than once, e.g. 'C1')" in (
        message
    )


def test_a_stale_entity_warns_and_every_result_is_in_ops_quality_metrics(spark, spike_run):
    ctx, message, warnings = spike_run
    assert "silver_fresh" not in message  # warn: recorded and said, not failing
    (warning,) = [w for w in warnings if "silver_fresh" in w]
    assert "newest updated_at in silver is 2026-05-01T10:00:00+00:00" in warning
    assert "over the limit of 720.0 h" in warning
    assert dataset_rows(spark, ctx.run_id) == {
        "silver_fresh": ("warn", 1, 1),
        "landing_fresh": ("fail", 1, 0),  # ingested a moment ago
        "landed_volume": ("fail", 10, 4),  # 4 rows above 3 x the median
        "key_unique": ("fail", 11, 1),  # the 10 keys the run wrote, C1 twice
        # the stream's own writes account for its rows; the stray one is key_unique's find
        "reconciled": ("fail", 10, 0),
    }


@pytest.fixture(scope="module")
def clean_run(spark, lake_ctx, spike_run):
    """The next run: a late older snapshot of C2 (silver has a newer one), C3 as silver
    holds it from a file that sorts before (so not newer), C20 landed twice alike and once
    newer in one file, a bad e-mail, a delete of C4 (in silver) and one of C30 (never seen)."""
    land(lake_ctx.profile.landing_root, "customers", [
        customer("C2", updated_at="2026-04-01T00:00:00Z"),
        customer("C3"),
        customer("C20", updated_at=NEW),
        customer("C20", updated_at=NEW),
        customer("C20", updated_at="2026-12-01T11:00:00Z"),
        customer("C21", email="not an address", updated_at=NEW),
        {"customer_id": "C4", "updated_at": NEW, "_deleted": True},
        {"customer_id": "C30", "updated_at": NEW, "_deleted": True},
    ], "b.json")  # fmt: skip
    ctx = replace(lake_ctx, run_id="clean")
    bronze.run(spark, ctx, progress=quiet)
    result = silver.run(spark, ctx, progress=quiet)
    return ctx, result


def test_the_reconciliation_accounts_for_every_kind_of_superseded_row(spark, clean_run):
    ctx, result = clean_run
    (reconciled,) = [c for c in result.details["checks"] if c["check"] == "reconciled"]
    assert reconciled["terms"] == {
        "bronze_rows": 8,
        "upserted": 2,  # C20's newest inserted, C4 deleted
        "quarantined": 1,  # C21
        "deferred": 0,
        "superseded_in_batch": 2,  # C20 twice, older than its third snapshot
        "superseded_by_silver": 2,  # C2 older than silver's, C3 equal to it
        "behind_tombstones": 0,
        "deletes_absent": 1,  # C30
    }
    rows = dataset_rows(spark, ctx.run_id)
    assert rows["reconciled"] == ("fail", 8, 0)
    # C1's duplicate stays out of sight: the run wrote no C1 row (judged when it was written)
    assert rows["key_unique"] == ("fail", 1, 0)
    # 8 rows against the median of the spike run (10) and an earlier run (2): within 3x
    assert rows["landed_volume"] == ("fail", 8, 0)


def test_a_skipped_task_judges_freshness_from_what_its_last_run_saw(spark, lake_ctx, clean_run):
    ctx, result = clean_run
    assert result.state["newest_updated_at"] == "2026-12-01T11:00:00+00:00"
    # what run_task records after the run's success, but the newest ingest a month old and
    # the newest snapshot two months old
    inputs = silver.inputs(ctx, Versions.local(ctx.profile), None).values
    state = {**result.state, "newest_ingested_at": "2026-11-01T00:00:00+00:00",
             "newest_updated_at": "2026-10-01T00:00:00+00:00"}  # fmt: skip
    Consumed(inputs, state, ctx.run_id).save(ctx.profile, "silver_customers")
    skipped = replace(lake_ctx, run_id="skipped")
    said: list[str] = []
    with pytest.raises(DatasetCheckFailed, match=r"'landing_fresh' \(freshness\) failed.*newest "
                       r"ingest into bronze is 2026-11-01T00:00:00\+00:00"):  # fmt: skip
        run_task("silver_customers", skipped, silver.run, said.append, silver.inputs)
    # the warning goes through the task's progress (the runner's lines), like a run's
    (warning,) = [m for m in said if m.startswith("WARNING")]
    assert warning.startswith(
        "WARNING: customers: dataset check 'silver_fresh' (freshness) failed (severity warn): "
        "newest updated_at in silver is 2026-10-01T00:00:00+00:00, "
    ), said
    pending = (Path(ctx.profile.checkpoint_root) / PENDING_RUNS).read_text().splitlines()
    (record,) = [r for r in map(json.loads, pending) if r["run_id"] == "skipped"]
    assert record["status"] == "FAILED"
    assert "landing_fresh" in record["error"]
    assert json.loads(record["details"])["skipped"].startswith("nothing new since run clean")


def test_gold_reports_an_orphan_product_as_warn_and_an_orphan_order_as_fail(spark, lake_ctx):
    ctx = replace(lake_ctx, entity=None, run_id="gold", as_of=datetime(2026, 5, 2, tzinfo=UTC))
    merge_silver(spark, ctx, "products", [product("P1")])
    merge_silver(spark, ctx, "orders", [order("O1", "C5")])
    merge_silver(spark, ctx, "line_items", [
        line_item("L1", "O1", "P1"),
        line_item("L2", "O1", "P404"),  # its product never reached silver
        line_item("L3", "O404", "P1"),  # nor its order
    ])  # fmt: skip
    warnings: list[str] = []
    with pytest.raises(DatasetCheckFailed) as failure:
        gold.run(spark, ctx, progress=warnings.append)
    assert str(failure.value) == (
        "gold: dataset check 'order_exists' (references) failed (severity fail): 1 of 3 "
        "gold_order_details rows (every row) have no row in silver_orders for their "
        "order_id, e.g. 'O404'"
    )
    assert any("'product_exists' (references) failed (severity warn)" in w for w in warnings)
    assert dataset_rows(spark, ctx.run_id) == {
        "order_exists": ("fail", 3, 1),
        "product_exists": ("warn", 3, 1),
    }
    # all of gold was checked from the tables' files; Spark's joins (Databricks) agree
    lake = Lakehouse(spark, ctx.profile)
    frames = {n: lake.read(silver_table(n)) for n in GOLD_INPUTS}
    versions = {n: lake.version(silver_table(n)) for n in GOLD_INPUTS}
    verdicts = []
    for at in (versions, None):
        said: list[str] = []
        with pytest.raises(DatasetCheckFailed) as again:
            gold_checks(lake, load_gold_checks(GOLD_INPUTS), f"again-{at is None}",
                        lake.read(ORDER_DETAILS), frames, ctx.entities, "every row", said.append,
                        versions=at)  # fmt: skip
        verdicts.append((str(again.value), said))
    assert verdicts[0] == verdicts[1]
    assert verdicts[0][0] == str(failure.value)
    # built incrementally, gold checks the rows of the orders it rebuilt (O1), their
    # references listed (jobs/gold.py MAX_LISTED_ORDERS): L3's orphan order is not among them
    merge_silver(spark, ctx, "line_items", [
        line_item("L4", "O1", "P405", updated_at="2026-05-01T00:00:00Z"),  # an orphan product
        line_item("L5", "O1", "P1", updated_at="2026-05-01T00:00:00Z"),
    ])  # fmt: skip
    warnings.clear()
    result = gold.run(spark, replace(ctx, run_id="gold-incremental"), progress=warnings.append)
    assert (result.details["mode"], result.details["affected_orders"]) == ("incremental", 1)
    assert dataset_rows(spark, "gold-incremental") == {
        "order_exists": ("fail", 4, 0),
        "product_exists": ("warn", 4, 2),
    }
    assert any(
        "'product_exists' (references) failed (severity warn): 2 of 4 gold_order_details rows "
        "(the orders this run rebuilt)"
        in w
        and "'P404'" in w
        for w in warnings
    )


@pytest.mark.parametrize(
    ("rows", "history", "failed"),
    [
        (100, [10, 10], 0),  # fewer runs than asked for: not judged
        (100, [10, 0, 10, 10], 70),  # runs that read nothing do not count
        (2, [10, 10, 10], 1),  # a drop: one row below a third of the median
        (0, [10, 10, 10], 0),  # nothing read: freshness's business
        (30, [10, 20, 5], 0),  # the median is 10; 30 is at the edge, not over
    ],
)
def test_volume_is_judged_against_the_median_of_the_last_runs(rows, history, failed) -> None:
    check = DatasetCheck("v", "volume", "warn", runs=3, factor=3)
    assert volume(check, "e", rows, history).rows_failed == failed


def test_freshness_of_no_row_at_all_is_stale() -> None:
    from order_pipeline.quality.dataset_checks import freshness

    check = DatasetCheck("f", "freshness", "warn", of="bronze", max_age_seconds=60)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert freshness(check, "e", None, now).rows_failed == 1
    assert freshness(check, "e", now - timedelta(seconds=61), now).rows_failed == 1
    assert freshness(check, "e", now - timedelta(seconds=60), now).rows_failed == 0


def test_snapshots_a_tombstone_beats_are_reconciled_as_behind_it(spark, lake_ctx, clean_run):
    """A later run lands C4 and C30 again, older than their deletes (tombstones of the clean
    run), and two new customers: the old snapshots are counted behind their tombstones and
    do not come back."""
    land(lake_ctx.profile.landing_root, "customers", [
        customer("C4", updated_at="2026-11-30T00:00:00Z"),
        customer("C30", updated_at="2026-11-30T00:00:00Z"),
        customer("C40", updated_at=NEW),
        customer("C41", updated_at=NEW),
    ], "c.json")  # fmt: skip
    ctx = replace(lake_ctx, run_id="after-deletes")
    bronze.run(spark, ctx, progress=quiet)
    result = silver.run(spark, ctx, progress=quiet)
    (reconciled,) = [c for c in result.details["checks"] if c["check"] == "reconciled"]
    assert reconciled["terms"] == {
        "bronze_rows": 4,
        "upserted": 2,  # C40, C41
        "quarantined": 0,
        "deferred": 0,
        "superseded_in_batch": 0,
        "superseded_by_silver": 0,
        "behind_tombstones": 2,  # C4, C30
        "deletes_absent": 0,
    }
    assert dataset_rows(spark, ctx.run_id)["reconciled"] == ("fail", 4, 0)
    live = {r.customer_id for r in spark.table("silver_customers").collect()}
    assert {"C40", "C41"} <= live and not {"C4", "C30"} & live


def test_duplicate_keys_and_run_history_agree_between_spark_and_the_files_read_with_arrow(
    spark, lake_ctx, clean_run
):
    """The unique-key check's figures and the volume check's history, by Spark (Databricks)
    and from the table's files with Arrow (locally), against figures counted by hand."""
    import pyarrow as pa

    from order_pipeline.jobs.checks import history_among, run_history
    from order_pipeline.quality.dataset_checks import duplicate_keys, duplicate_keys_among

    # keys the run "r" wrote: k1 (held 3 times), k2 (once), k4 (twice); k3 is held twice
    # but the run wrote none of its rows; a row without a run id
    silver = [("k1", "r"), ("k1", "old"), ("k1", "old"), ("k2", "r"), ("k3", "old"),
              ("k3", "old"), ("k4", "older"), ("k4", "r"), ("k5", None)]  # fmt: skip
    frame = spark.createDataFrame(silver, "key string, run string")
    arrow = pa.table({"key": [k for k, _ in silver], "run": [r for _, r in silver]})
    expected = (6, (2, 3, "k1"))  # rows holding k1, k2, k4; 2 keys, 3 extra rows
    checked, dups = duplicate_keys(frame, "key", "run", "r", "k1", "k4")
    assert (checked, (dups.keys, dups.extra_rows, dups.sample)) == expected
    checked, dups = duplicate_keys_among(arrow, "key", "run", "r")
    assert (checked, (dups.keys, dups.extra_rows, dups.sample)) == expected
    assert duplicate_keys_among(arrow, "key", "run", "none")[0] == 0

    metrics = [  # (entity, source, rule, run_id, rows_checked, measured_at)
        ("customers", "stream", "outcome:quarantined", "a", 5, datetime(2026, 1, 1, 10)),
        ("customers", "stream", "outcome:quarantined", "a", 7, datetime(2026, 1, 1, 11)),
        ("customers", "stream", "outcome:quarantined", "b", 0, datetime(2026, 1, 2)),  # none
        ("customers", "stream", "outcome:quarantined", "c", 3, datetime(2026, 1, 3)),
        ("customers", "stream", "rule_x", "d", 99, datetime(2026, 1, 4)),  # another rule
        ("orders", "stream", "outcome:quarantined", "e", 99, datetime(2026, 1, 5)),
        ("customers", "dataset", "outcome:quarantined", "f", 99, datetime(2026, 1, 6)),
        ("customers", "stream", "outcome:quarantined", "now", 50, datetime(2026, 1, 7)),
        ("customers", "stream", "outcome:quarantined", "g", 4, datetime(2025, 12, 1)),
    ]
    columns = ["entity", "source", "rule", "run_id", "rows_checked", "measured_at"]
    arrow = pa.table({c: [m[i] for m in metrics] for i, c in enumerate(columns)})
    assert history_among(arrow, "customers", "now", 2) == [3, 12]  # c, then a (5 + 7)
    assert history_among(arrow, "customers", "now", 5) == [3, 12, 4]
    # the module's own ops_quality_metrics (its runs above), both ways
    lake = Lakehouse(spark, lake_ctx.profile)
    local = run_history(lake, "customers", "another", 5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lake, "read_live", lambda *_: None)
        assert run_history(lake, "customers", "another", 5) == local
    assert local[-4:] == [8, 10, 2, 2]  # the clean, spike and two earlier runs (and newer)


def test_a_first_load_counts_each_key_once_however_often_its_batch_holds_it(
    spark, lake_ctx, tmp_path_factory
):
    """The first load's reconciliation terms come from the gate's own count of the batch's
    keys (no second pass over the batch): three snapshots of C1, two of C2, one bad row."""
    ctx = replace(make_context(tmp_path_factory.mktemp("first")), entity="customers")
    land(ctx.profile.landing_root, "customers", [
        customer("C1", updated_at="2026-12-01T09:00:00Z"),
        customer("C1", updated_at=NEW, city="Paris"),
        customer("C1", updated_at="2026-12-01T08:00:00Z"),
        customer("C2", updated_at=NEW),
        customer("C2", updated_at="2026-11-01T00:00:00Z"),
        customer("C3", email="not an address", updated_at=NEW),
    ], "first.json")  # fmt: skip
    try:
        Lakehouse(spark, ctx.profile)  # USE its own schema: silver starts empty
        bronze.run(spark, ctx, progress=quiet)
        result = silver.run(spark, ctx, progress=quiet)
        (reconciled,) = [c for c in result.details["checks"] if c["check"] == "reconciled"]
        assert reconciled["terms"] == {
            "bronze_rows": 6,
            "upserted": 2,  # C1's and C2's newest
            "quarantined": 1,  # C3
            "deferred": 0,
            "superseded_in_batch": 3,  # C1 twice, C2 once
            "superseded_by_silver": 0,
            "behind_tombstones": 0,
            "deletes_absent": 0,
        }
        held = {r.customer_id: r.city for r in spark.table("silver_customers").collect()}
        assert held == {"C1": "Paris", "C2": "London"}
    finally:
        Lakehouse(spark, lake_ctx.profile)  # the module's schema again
