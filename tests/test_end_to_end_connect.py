"""The end-to-end tests of test_end_to_end.py, with the workflow run as serverless runs it:
on Spark Connect (ORDER_PIPELINE_SPARK_MODE=connect starts a local Connect server with
Delta), where every foreachBatch function is pickled into a separate Python worker,
``persist`` and the sparkContext are refused and only serverless's settable Spark
properties may be set, so the MERGE goes without Delta's txnAppId/txnVersion settings.

The workflow runs in a child process (``order-pipeline run``, the command users run), twice,
as in the classic tests; this process then reads the tables it wrote with its own classic
session and checks them against the same plain-Python expectations.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import TEST_SPARK_SETTINGS, make_context
from test_end_to_end import (
    AS_OF,
    WorkflowRun,
    land_batch,
    test_bronze_holds_every_landed_line,
    test_each_injected_fault_is_quarantined_with_the_right_rule,
    test_every_task_of_the_graph_succeeds_in_dependency_order,
    test_every_task_run_is_recorded_in_ops_task_runs,
    test_gold_equals_python_computation,
    test_line_items_without_their_order_wait_in_deferred,
    test_quarantine_holds_every_invalid_line_with_its_reasons,
    test_second_batch_promotes_deferred_items_and_matches_python,
    test_silver_equals_the_latest_valid_snapshot_per_key,
)

from order_pipeline.common.config import conf_dir, load_profile
from order_pipeline.common.io import TASK_RUNS, Lakehouse
from order_pipeline.common.workflow import load_job_graph

__all__ = [  # the shared tests, collected again here against this module's fixtures
    "test_bronze_holds_every_landed_line",
    "test_each_injected_fault_is_quarantined_with_the_right_rule",
    "test_every_task_of_the_graph_succeeds_in_dependency_order",
    "test_every_task_run_is_recorded_in_ops_task_runs",
    "test_gold_equals_python_computation",
    "test_line_items_without_their_order_wait_in_deferred",
    "test_quarantine_holds_every_invalid_line_with_its_reasons",
    "test_second_batch_promotes_deferred_items_and_matches_python",
    "test_silver_equals_the_latest_valid_snapshot_per_key",
]


def conf_for_tests(root: Path) -> Path:
    """conf/ with the test session's small-data Spark settings and gold always incremental
    (the child process loads its profile from here, through ORDER_PIPELINE_CONF)."""
    conf = root / "conf"
    shutil.copytree(conf_dir(), conf)
    local = yaml.safe_load((conf / "local.yml").read_text())
    local["spark"] = {**local["spark"], **TEST_SPARK_SETTINGS}
    local["gold"] = {"max_incremental_share": 1.0}
    (conf / "local.yml").write_text(yaml.safe_dump(local))
    return conf


def run_on_connect(ctx, conf: Path) -> str:
    """``order-pipeline run`` on Spark Connect over the context's data root and schema;
    returns the run id the run recorded."""
    env = {
        **os.environ,
        "ORDER_PIPELINE_SPARK_MODE": "connect",
        "ORDER_PIPELINE_CONF": str(conf),
        "PYSPARK_PYTHON": sys.executable,
    }
    command = [
        sys.executable, "-m", "order_pipeline.jobs.cli", "run",
        "--data-root", str(ctx.data_root),
        "--param", f"schema={ctx.profile.schema}",
        "--as-of", AS_OF.isoformat() + "Z",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "Streaming ForeachBatch worker" in done.stdout + done.stderr  # it ran on Connect
    return next(
        line.rsplit(" ", 1)[1]
        for line in done.stdout.splitlines()
        if line.startswith("job ") and ", run " in line
    )


def outcomes(spark, ctx, run_id: str) -> list[tuple[str, str]]:
    lake = Lakehouse(spark, ctx.profile)
    status = {
        r.task: r.status for r in lake.read(TASK_RUNS).where(f"run_id = '{run_id}'").collect()
    }
    return [(task.key, status.get(task.key, "NOT RUN")) for task in load_job_graph().ordered()]


@pytest.fixture(scope="module")
def connect_ctx(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e-connect")
    ctx = make_context(root)
    # the child loads the profile from the copied conf: read the tables with the same one
    profile = load_profile("local", root, {"schema": ctx.profile.schema})
    return replace(ctx, profile=replace(profile, spark=ctx.profile.spark)), conf_for_tests(root)


@pytest.fixture(scope="module")
def first_run(spark, connect_ctx):
    ctx, conf = connect_ctx
    manifest = land_batch(ctx, 0)
    run_id = run_on_connect(ctx, conf)
    return WorkflowRun(ctx, manifest, outcomes(spark, ctx, run_id), (run_id,))


@pytest.fixture(scope="module")
def second_run(spark, first_run, connect_ctx):
    ctx, conf = connect_ctx
    manifest = land_batch(ctx, 1)
    run_id = run_on_connect(ctx, conf)
    return WorkflowRun(ctx, manifest, outcomes(spark, ctx, run_id), (*first_run.run_ids, run_id))
