"""Pay only for new data: a task whose inputs did not move since it last succeeded is skipped,
a run with nothing new starts no JVM, and the run records reach ops_task_runs once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from builders import customer, edit_text, land, line_item, order, product

from order_pipeline.cli import main as cli
from order_pipeline.common.config import conf_dir, load_profile
from order_pipeline.common.inputs import CONSUMED_FOLDER, Versions, delta_log_version
from order_pipeline.jobs.task import PENDING_RUNS, flush_ops_rows

SCHEMA = "skip_test"
TASKS = [f"{layer}_{e}" for layer in ("bronze", "silver")
         for e in ("customers", "products", "orders", "line_items")] + ["gold"]  # fmt: skip
NOW = datetime.now(UTC).replace(microsecond=0)
IN_WINDOW = NOW - timedelta(days=29)  # the one delivered order: 29 days before now


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def root(spark, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("skip")
    conf = root / "conf"
    shutil.copytree(conf_dir(), conf)
    local = conf / "local.yml"
    edit_text(local, ("schema: lakehouse", f"schema: {SCHEMA}"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORDER_PIPELINE_CONF", str(conf))
        landing = root / "landing"
        land(landing, "customers", [customer("C1")])
        land(landing, "products", [product("P1")])
        land(landing, "orders", [order("O1", order_ts=iso(IN_WINDOW), updated_at=iso(IN_WINDOW))])
        delivered = iso(IN_WINDOW + timedelta(hours=1))
        land(landing, "line_items", [
            line_item("L1", status="delivered", delivered_at=delivered, updated_at=delivered),
            line_item("L2", order_id="O2"),  # waits for its order
        ])  # fmt: skip
        assert run(root) == 0
        yield root


def run(root: Path, *args: str) -> int:
    return cli.main(["run", "--data-root", str(root), *args])


def statuses(spark, run_id: str) -> dict[str, str]:
    rows = spark.sql(
        f"SELECT task, status FROM {SCHEMA}.ops_task_runs WHERE run_id = '{run_id}'"
    ).collect()
    return {r["task"]: r["status"] for r in rows}


def last_run_id(spark) -> str:
    return spark.sql(
        f"SELECT run_id FROM {SCHEMA}.ops_task_runs ORDER BY started_at DESC LIMIT 1"
    ).first()[0]


def table_versions(root: Path) -> dict[str, int | None]:
    warehouse = root / "warehouse" / SCHEMA
    return {t.name: delta_log_version(t) for t in sorted(warehouse.iterdir())}


def consumed(root: Path, task: str) -> dict:
    return json.loads((root / "checkpoints" / CONSUMED_FOLDER / f"{task}.json").read_text())


def test_the_first_run_records_what_each_task_consumed(spark, root) -> None:
    assert statuses(spark, last_run_id(spark)) == dict.fromkeys(TASKS, "SUCCESS")
    silver = consumed(root, "silver_line_items")
    assert silver["inputs"]["bronze"] == delta_log_version(
        root / "warehouse" / SCHEMA / "bronze_line_items"
    )
    assert silver["state"]["waiting"] == 1  # L2 waits for O2
    assert silver["state"]["parents"] == {
        p: delta_log_version(root / "warehouse" / SCHEMA / f"silver_{p}")
        for p in ("orders", "products")
    }
    # the most-sold answer holds until L1's order, 29 days old, leaves the 30-day window
    assert (
        consumed(root, "gold")["state"]["most_sold_valid_until"]
        == (IN_WINDOW + timedelta(days=30)).isoformat()
    )


def test_a_run_with_nothing_new_starts_no_jvm_and_changes_no_table(spark, root) -> None:
    before = table_versions(root)
    # No Java at all: the run can only succeed if it never starts Spark.
    env = {
        **os.environ,
        "JAVA_HOME": str(root / "no-java"),
        "ORDER_PIPELINE_CONF": str(root / "conf"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "order_pipeline.cli.main", "run", "--data-root", str(root)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    table = [
        line.split()
        for line in done.stdout.splitlines()
        if line.split()[:1] in [[t] for t in TASKS]
    ]
    assert {row[0]: row[1] for row in table} == dict.fromkeys(TASKS, "SKIPPED")
    assert table_versions(root) == before
    pending = (root / "checkpoints" / PENDING_RUNS).read_text().splitlines()
    assert [json.loads(line)["status"] for line in pending] == ["SKIPPED"] * len(TASKS)


def test_new_data_runs_only_what_it_reaches_and_a_moved_parent_resolves_deferred_rows(
    spark, root, monkeypatch
) -> None:
    monkeypatch.setenv("ORDER_PIPELINE_CONF", str(root / "conf"))
    land(root / "landing", "orders", [order("O2")])
    assert run(root) == 0
    assert statuses(spark, last_run_id(spark)) == {
        "bronze_customers": "SKIPPED", "bronze_products": "SKIPPED",
        "bronze_orders": "SUCCESS", "bronze_line_items": "SKIPPED",
        "silver_customers": "SKIPPED", "silver_products": "SKIPPED",
        "silver_orders": "SUCCESS",
        "silver_line_items": "SUCCESS",  # its parent silver_orders moved while L2 waited
        "gold": "SUCCESS",
    }  # fmt: skip
    ids = {
        r[0] for r in spark.sql(f"SELECT line_item_id FROM {SCHEMA}.silver_line_items").collect()
    }
    assert ids == {"L1", "L2"}
    assert consumed(root, "silver_line_items")["state"]["waiting"] == 0
    # the earlier run's skipped rows, kept pending while no JVM ran, arrived with this run's
    assert not (root / "checkpoints" / PENDING_RUNS).exists()
    counts = spark.sql(
        f"SELECT status, count(*) AS n FROM {SCHEMA}.ops_task_runs GROUP BY status"
    ).collect()
    assert {r["status"]: r["n"] for r in counts} == {"SUCCESS": 9 + 4, "SKIPPED": 9 + 5}


def test_a_due_deferral_or_window_makes_the_task_run_again(spark, root, monkeypatch) -> None:
    monkeypatch.setenv("ORDER_PIPELINE_CONF", str(root / "conf"))
    local = root / "conf" / "local.yml"
    original = local.read_text()
    edit_text(local, ("defer_max_age: 7 days", "defer_max_age: 3 seconds"))
    try:
        land(root / "landing", "line_items", [line_item("L3", order_id="O3")])
        assert run(root) == 0
        state = consumed(root, "silver_line_items")["state"]
        assert state["waiting"] == 1
        expires = datetime.fromisoformat(state["oldest_deferred_at"]) + timedelta(seconds=3)
        # as if the days went by: the most-sold window has moved past an order
        gold = root / "checkpoints" / CONSUMED_FOLDER / "gold.json"
        record = json.loads(gold.read_text())
        record["state"]["most_sold_valid_until"] = (NOW - timedelta(seconds=1)).isoformat()
        gold.write_text(json.dumps(record))
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.5)

        assert run(root) == 0
    finally:
        local.write_text(original)
    ran = statuses(spark, last_run_id(spark))
    assert ran["silver_line_items"] == "SUCCESS"  # bronze unchanged, but a deferral expired
    assert ran["gold"] == "SUCCESS"  # silver unchanged, but the window moved
    assert {k for k, v in ran.items() if v == "SUCCESS"} == {"silver_line_items", "gold"}
    expired = spark.sql(
        f"SELECT record.line_item_id, status FROM {SCHEMA}.quarantine_line_items"
    ).collect()
    assert [tuple(r) for r in expired] == [("L3", "expired")]
    as_of = spark.sql(f"SELECT as_of FROM {SCHEMA}.gold_most_sold_product_last_30d").first()[0]
    assert as_of.replace(tzinfo=UTC) > NOW  # recomputed now


def test_full_refresh_never_skips(spark, root, monkeypatch) -> None:
    monkeypatch.setenv("ORDER_PIPELINE_CONF", str(root / "conf"))
    assert run(root, "--task", "bronze_products", "--full-refresh", "--yes") == 0
    assert statuses(spark, last_run_id(spark)) == {"bronze_products": "SUCCESS"}


def test_pending_run_records_reach_the_table_once_even_when_flushed_twice(spark, root) -> None:
    profile = load_profile("local", root, {"schema": SCHEMA})
    pending = root / "checkpoints" / PENDING_RUNS
    rows = [{"task": "gold", "entity": None, "run_id": "flush-twice", "started_at": NOW.isoformat(),
             "ended_at": NOW.isoformat(), "seconds": 0.0, "rows_in": 0, "rows_out": 0,
             "status": "SKIPPED", "error": None, "details": "{}"}]  # fmt: skip
    text = "".join(json.dumps(r) + "\n" for r in rows)
    pending.parent.mkdir(parents=True, exist_ok=True)
    pending.write_text(text)
    assert flush_ops_rows(spark, profile) == 1
    pending.write_text(text)  # as if the process died after the commit, before the unlink
    assert flush_ops_rows(spark, profile) == 1
    assert statuses(spark, "flush-twice") == {"gold": "SKIPPED"}
    n = spark.sql(f"SELECT count(*) FROM {SCHEMA}.ops_task_runs WHERE run_id = 'flush-twice'")
    assert n.first()[0] == 1


def test_versions_read_through_spark_agree_with_the_delta_log(spark, root) -> None:
    """Databricks reads input versions with DESCRIBE HISTORY: the same numbers."""
    through_spark = Versions.from_spark(spark)
    from_log = table_versions(root)
    assert {name: through_spark(f"{SCHEMA}.{name}") for name in from_log} == from_log
    assert through_spark(f"{SCHEMA}.no_such_table") is None
