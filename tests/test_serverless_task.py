"""The pipeline as a serverless Databricks task runs it: the wheel alone, on Spark Connect.

A task gets the wheel the bundle builds and the job's parameters, nothing else: no
repository, no conf/ folder beside it, no working directory of ours. Serverless runs it on
Spark Connect, where every foreachBatch function is pickled into a separate Python worker,
``persist`` and the sparkContext are refused and only a documented handful of Spark
properties may be set (so the MERGE goes without Delta's txnAppId/txnVersion settings).

This module builds the wheel with the exact command of databricks.yml, on a PATH where only
``python3`` exists, installs it with its ``local`` extra into a fresh virtualenv outside the
repository and, from an empty folder, runs a task's entry point as a process of its own and
then the whole job graph twice with ORDER_PIPELINE_SPARK_MODE=connect (a local Spark Connect
server with Delta). This process then reads the tables with its own classic session and runs
the end-to-end tests of test_end_to_end.py on them: the same plain-Python expectations.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import TEST_SPARK_SETTINGS, data_root_of, make_context
from expectations import KEYS, expected_silver
from test_end_to_end import (
    AS_OF,
    GRAPH_ORDER,
    WorkflowRun,
    assert_gold_matches,
    assert_silver_matches,
    assert_task_records,
    land_batch,
    test_bronze_holds_every_landed_line,
    test_each_injected_fault_is_quarantined_with_the_right_rule,
    test_gold_equals_python_computation,
    test_line_items_without_their_order_wait_in_deferred,
    test_quarantine_holds_every_invalid_line_with_its_reasons,
    test_silver_equals_the_latest_valid_snapshot_per_key,
    use,
)

from order_pipeline.cli.runner import load_job_graph
from order_pipeline.common.config import conf_dir, load_profile
from order_pipeline.common.contract import TASK_RUNS
from order_pipeline.common.io import Lakehouse

pytestmark = pytest.mark.usefixtures("repository_conf")  # every dataset check

__all__ = [  # the shared end-to-end tests, collected again here against this module's runs
    "test_bronze_holds_every_landed_line",
    "test_each_injected_fault_is_quarantined_with_the_right_rule",
    "test_every_task_of_the_graph_succeeds_in_dependency_order",
    "test_every_task_run_is_recorded_in_ops_task_runs",
    "test_gold_equals_python_computation",
    "test_line_items_without_their_order_wait_in_deferred",
    "test_quarantine_holds_every_invalid_line_with_its_reasons",
    "test_silver_equals_the_latest_valid_snapshot_per_key",
]

REPO = Path(__file__).resolve().parents[1]
# what a checkout holds that a clean clone does not
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", ".local", ".databricks", "dist", "build", "*.egg-info", "__pycache__",
    ".pytest_cache", ".ruff_cache",
)  # fmt: skip
STANDALONE_RUN_ID = "standalone-bronze"


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{output[-4000:]}"
    return output


def base_python() -> str:
    """The interpreter this virtualenv was made from: a plain python3 with pip."""
    return getattr(sys, "_base_executable", None) or sys.executable


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("bundle") / "order-pipeline"
    shutil.copytree(REPO, source, ignore=NOT_IN_A_CLONE)
    bin_dir = tmp_path_factory.mktemp("python3-only")
    (bin_dir / "python3").symlink_to(base_python())
    path = os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])
    assert shutil.which("python", path=path) is None, "the build must not find a `python`"
    build = yaml.safe_load((REPO / "databricks.yml").read_text())["artifacts"]["default"]["build"]
    run(["bash", "-c", build], source, {"PATH": path, "HOME": os.environ.get("HOME", "/root")}, 600)
    (built,) = (source / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def task_env(wheel, tmp_path_factory) -> dict[str, str]:
    """A fresh virtualenv with the wheel and its local extra, and the environment a task
    process gets there: no repository on any path, no conf/ override, Spark Connect."""
    venv = tmp_path_factory.mktemp("task-venv")
    run([base_python(), "-m", "venv", str(venv)], venv, dict(os.environ))
    pip_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    # --no-compile: byte-compiling pyspark is half of the install, and imports compile lazily
    install = ["install", "--quiet", "--no-compile", "--disable-pip-version-check"]
    run([str(venv / "bin" / "pip"), *install, f"{wheel}[local]"], venv, pip_env)
    java = shutil.which("java")
    assert java, "Java is needed"
    bins = [str(venv / "bin"), str(Path(java).resolve().parent), "/usr/bin", "/bin"]
    env = {
        "PATH": os.pathsep.join(bins),
        "HOME": os.environ.get("HOME", "/root"),
        "TZ": "UTC",
        "ORDER_PIPELINE_SPARK_MODE": "connect",  # as serverless runs the tasks
        "ORDER_PIPELINE_MASTER": "local[2]",
        "VIRTUAL_ENV": str(venv),
    }
    for name in ("JAVA_HOME", "ORDER_PIPELINE_JAR_CACHE"):  # the machine's Java and Delta jars
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def conf_for_tests(root: Path) -> Path:
    """conf/ with the test session's small-data Spark settings and gold always incremental,
    for the graph runs (ORDER_PIPELINE_CONF); the standalone task reads the wheel's own."""
    conf = root / "conf"
    shutil.copytree(conf_dir(), conf)
    local = yaml.safe_load((conf / "local.yml").read_text())
    local["spark"] = {**local["spark"], **TEST_SPARK_SETTINGS}
    local["gold"] = {"max_incremental_share": 1.0}
    local["parallel_tasks"] = 4  # the four bronze tasks side by side, as Databricks runs them
    (conf / "local.yml").write_text(yaml.safe_dump(local))
    return conf


def task_command(env: dict[str, str], name: str, *args: str) -> list[str]:
    return [str(Path(env["VIRTUAL_ENV"]) / "bin" / name), *args]


def run_graph_on_connect(ctx, env: dict[str, str], conf: Path) -> str:
    """``order-pipeline run`` of the installed wheel over the context's data root and
    schema, from an empty folder; returns the run id the run recorded."""
    folder = data_root_of(ctx) / f"cwd-{len(list(data_root_of(ctx).glob('cwd-*')))}"
    folder.mkdir()
    output = run(
        task_command(env, "order-pipeline", "run", "--data-root", str(data_root_of(ctx)),
                     "--param", f"schema={ctx.profile.schema}", "--as-of", AS_OF.isoformat() + "Z"),
        folder, {**env, "ORDER_PIPELINE_CONF": str(conf)},
    )  # fmt: skip
    assert "Streaming ForeachBatch worker" in output  # the batches ran on Spark Connect
    assert f"tasks from {Path(env['VIRTUAL_ENV'])}" in output  # the wheel's resources/jobs.yml
    return next(
        line.rsplit(" ", 1)[1]
        for line in output.splitlines()
        if line.startswith("job ") and ", run " in line
    )


def python_slow_once(folder: Path, python: Path) -> str:
    """A PYSPARK_PYTHON whose first start sleeps past the 10 seconds in which Spark waits
    for a foreachBatch worker to connect back: a worker starting on a busy machine."""
    script = folder / "python-slow-once"
    first = shlex.quote(str(folder / "first-start"))
    script.write_text(
        f"#!/bin/sh\nif mkdir {first} 2>/dev/null; then sleep 12; fi\n"
        f'exec {shlex.quote(str(python))} "$@"\n'
    )
    script.chmod(0o755)
    return str(script)


def outcomes(spark, ctx, run_id: str) -> list[tuple[str, str]]:
    lake = Lakehouse(spark, ctx.profile)
    status = {
        r.task: r.status for r in lake.read(TASK_RUNS).where(f"run_id = '{run_id}'").collect()
    }
    return [(task.key, status.get(task.key, "NOT RUN")) for task in load_job_graph().ordered()]


@pytest.fixture(scope="module")
def connect_ctx(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("serverless")
    ctx = make_context(root)
    # the graph runs load their profile from the copied conf: read the tables with it
    profile = load_profile("local", root, {"schema": ctx.profile.schema})
    return replace(ctx, profile=replace(profile, spark=ctx.profile.spark)), conf_for_tests(root)


@pytest.fixture(scope="module")
def first_run(spark, connect_ctx, task_env):
    ctx, conf = connect_ctx
    manifest = land_batch(ctx, 0)
    # the entry point Databricks calls for a task, alone in its process with the wheel's own
    # conf/: the very call that failed with "no conf/ folder found" before the wheel had it.
    # Its stream's Python worker starts too slowly once (CI, 2026-12-04): started again, the
    # stream then loads every landed line exactly once (test_bronze_holds_every_landed_line)
    folder = data_root_of(ctx) / "cwd-standalone"
    folder.mkdir()
    slow = python_slow_once(folder, Path(task_env["VIRTUAL_ENV"]) / "bin" / "python")
    output = run(task_command(task_env, "order-pipeline-bronze", "--entity", "customers",
                              "--schema", ctx.profile.schema, "--data-root", str(data_root_of(ctx)),
                              "--run-id", STANDALONE_RUN_ID),
                 folder, {**task_env, "PYSPARK_PYTHON": slow})  # fmt: skip
    assert "did not connect back in time" in output and "(attempt 2 of 3)" in output, output
    run_id = run_graph_on_connect(ctx, task_env, conf)
    return WorkflowRun(ctx, manifest, outcomes(spark, ctx, run_id), (run_id,))


def test_every_task_of_the_graph_succeeds_in_dependency_order(first_run) -> None:
    # bronze_customers ran alone from the wheel's entry point first: nothing new for it
    assert first_run.outcomes == [
        (task, "SKIPPED" if task == "bronze_customers" else "SUCCESS") for task in GRAPH_ORDER
    ]


def test_every_task_run_is_recorded_in_ops_task_runs(spark, first_run) -> None:
    assert_task_records(spark, first_run, skipped=frozenset({"bronze_customers"}))


@pytest.fixture(scope="module")
def second_run(spark, first_run, connect_ctx, task_env):
    ctx, conf = connect_ctx
    manifest = land_batch(ctx, 1)
    run_id = run_graph_on_connect(ctx, task_env, conf)
    return WorkflowRun(ctx, manifest, outcomes(spark, ctx, run_id), (*first_run.run_ids, run_id))


def test_second_batch_promotes_deferred_items_and_matches_python(
    spark, first_run, second_run
) -> None:
    ctx = second_run.ctx
    landing = use(spark, ctx)
    outcomes = dict(second_run.outcomes)
    assert set(outcomes.values()) <= {"SUCCESS", "SKIPPED"}
    for entity, counts in second_run.manifest["counts"].items():  # what batch 1 landed ran
        assert counts["lines"] == 0 or outcomes[f"bronze_{entity}"] == "SUCCESS", entity
    assert outcomes["silver_line_items"] == outcomes["gold"] == "SUCCESS"
    assert_silver_matches(spark, landing)
    _, deferred = expected_silver(landing)
    waiting = {r.line_item_id for r in spark.table("deferred_line_items").collect()}
    assert waiting == {r["line_item_id"] for r in deferred["line_items"]}
    # the line items batch 0 landed before their orders waited in the first run; batch 1
    # lands those orders, so the second run promotes them
    early = {f["key"] for f in first_run.manifest["faults"] if f["kind"] == "early_line_item"}
    promoted = {r.line_item_id for r in spark.table("silver_line_items").collect()}
    assert early and early <= promoted and not early & waiting
    # the second gold build is incremental, and equals the plain-Python gold all the same
    runs = ", ".join(f"'{run_id}'" for run_id in second_run.run_ids)
    modes = [
        json.loads(r.details)["mode"]
        for r in spark.table(TASK_RUNS)
        .where(f"task = 'gold' and run_id in ({runs})")
        .orderBy("started_at")
        .collect()
    ]
    assert modes == ["full", "incremental"]
    assert_gold_matches(spark, landing)


def test_the_wheel_carries_what_a_task_reads(wheel) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (
        "order_pipeline/conf/pipeline.yml",
        "order_pipeline/conf/local.yml",
        "order_pipeline/conf/databricks.yml",
        *(f"order_pipeline/conf/quality/{e}.yml" for e in KEYS),
        "order_pipeline/queries/most_sold_product_last_30d.sql",
        "order_pipeline/resources/jobs.yml",
    ):
        assert path in names, path


def test_the_task_imports_the_installed_wheel_not_the_repository(task_env, tmp_path) -> None:
    located = run(
        task_command(task_env, "python", "-c", "import order_pipeline; print(order_pipeline.__file__)"),
        tmp_path, task_env,
    )  # fmt: skip
    assert Path(task_env["VIRTUAL_ENV"]) in Path(located.strip()).parents


def test_a_task_entry_point_alone_loads_every_landed_customer(spark, first_run) -> None:
    ctx, manifest = first_run.ctx, first_run.manifest
    lake = Lakehouse(spark, ctx.profile)
    (standalone,) = lake.read(TASK_RUNS).where(f"run_id = '{STANDALONE_RUN_ID}'").collect()
    assert (standalone.task, standalone.status) == ("bronze_customers", "SUCCESS")
    assert standalone.rows_in == manifest["counts"]["customers"]["lines"]


REFUSALS = """
import sys
from pathlib import Path
from order_pipeline.common.config import load_profile
from order_pipeline.common.spark import get_spark

root = Path(sys.argv[1])
spark = get_spark(load_profile("local", root))
df = spark.range(3)

def outcome(name, call):
    try:
        call()
        result = "allowed"
    except Exception as exc:
        result = type(exc).__name__
        print(f"MESSAGE {name}: {exc}", flush=True)
    print(f"REFUSAL {name}: {result}", flush=True)

outcome("persist", df.persist)
outcome("cache", df.cache)
outcome("txn conf", lambda: spark.conf.set("spark.databricks.delta.write.txnAppId", "x"))
outcome("shuffle conf", lambda: spark.conf.set("spark.sql.shuffle.partitions", "3"))
outcome("sparkContext", lambda: spark.sparkContext)

def batch(frame, batch_id):  # pickled into the server's foreachBatch worker process
    import order_pipeline.common.platform  # what the pipeline's batch functions import
    frame.persist()

(root / "in").mkdir()
(root / "in" / "a.json").write_text('{"a": 1}\\n')
query = (spark.readStream.format("json").schema("a int").load(str(root / "in"))
         .writeStream.foreachBatch(batch).trigger(availableNow=True)
         .option("checkpointLocation", str(root / "checkpoint")).start())
outcome("persist in foreachBatch", query.awaitTermination)
"""


def test_connect_mode_refuses_what_serverless_refuses(task_env, tmp_path) -> None:
    output = run(
        task_command(task_env, "python", "-c", REFUSALS, str(tmp_path)), tmp_path, task_env
    )
    outcomes = dict(
        line.removeprefix("REFUSAL ").split(": ", 1)
        for line in output.splitlines()
        if line.startswith("REFUSAL ")
    )
    assert outcomes == {
        "persist": "NotAvailableOnServerless",
        "cache": "NotAvailableOnServerless",
        "txn conf": "ConfigNotAvailable",
        "shuffle conf": "allowed",
        "sparkContext": "PySparkAttributeError",
        "persist in foreachBatch": "StreamingQueryException",
    }
    assert "NOT_SUPPORTED_WITH_SERVERLESS" in output  # the worker's own refusal, reported back
