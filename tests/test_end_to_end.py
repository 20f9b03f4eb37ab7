"""The whole job graph on generated data with faults, against plain-Python expectations
computed from the landed files (tests/expectations.py).

These tests run the graph in this process on classic Spark; test_serverless_task.py runs the
same tests on the tables of the installed wheel's runs on Spark Connect, and a second landing
batch there (deferred rows promoted, gold built incrementally)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import pytest
from chispa import assert_df_equality
from conftest import data_root_of, make_context
from expectations import (
    KEYS,
    TYPES,
    expected_fold,
    expected_silver,
    expected_state,
    read_landing,
)
from pipeline_helpers import assert_gold_equals, quiet

from order_pipeline.cli.runner import bundle_variables, load_job_graph, run_graph
from order_pipeline.common.io import Lakehouse
from order_pipeline.jobs.task import TaskContext, collected_task_runs
from order_pipeline.synthetic.generator import GeneratorConfig, generate

pytestmark = pytest.mark.usefixtures("repository_conf")  # every dataset check

ENTITIES = ("customers", "products", "orders", "line_items")
AS_OF = datetime(2026, 10, 20)
SCALE = {"seed": 7, "customers": 60, "products": 12, "orders": 240, "files_per_entity": 3,
         "fault_rate": 0.05, "delete_rate": 0.03, "end_date": date(2026, 10, 31),
         "months": 3}  # fmt: skip


def run_workflow(ctx):
    graph = load_job_graph()
    variables = bundle_variables(graph.source.parent.parent, ctx.profile)
    params = {"as_of": AS_OF.isoformat() + "Z"}
    with collected_task_runs(ctx.profile):  # as `order-pipeline run` does
        return run_graph(
            graph,
            variables,
            params,
            ctx.run_id,
            ["--data-root", str(data_root_of(ctx))],
            progress=quiet,
        )


@dataclass(frozen=True)
class WorkflowRun:
    """One run of the whole graph: the context to read its tables with, the manifest of
    the batch it landed, each task's outcome in graph order, and the runs so far."""

    ctx: TaskContext
    manifest: dict
    outcomes: list[tuple[str, str]]
    run_ids: tuple[str, ...]


def land_batch(ctx, batch: int) -> dict:
    return generate(
        GeneratorConfig(landing=Path(ctx.profile.landing_root), batch=batch, **SCALE),
        progress=quiet,
    )


@pytest.fixture(scope="module")
def first_run(spark, tmp_path_factory):
    ctx = make_context(tmp_path_factory.mktemp("e2e"))
    manifest = land_batch(ctx, 0)
    outcomes = [(o.key, o.status) for o in run_workflow(ctx)]
    return WorkflowRun(ctx, manifest, outcomes, (ctx.run_id,))


def use(spark, ctx) -> Path:
    Lakehouse(spark, ctx.profile)  # USE the test's schema
    return Path(ctx.profile.landing_root)


def assert_silver_matches(spark, landing: Path) -> None:
    silver, _ = expected_silver(landing)
    for entity in ENTITIES:
        columns = list(TYPES[entity])
        actual = spark.table(f"silver_{entity}").select(*columns)
        expected = spark.createDataFrame(
            [tuple(r[c] for c in columns) for r in silver[entity].values()], actual.schema
        )
        assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


GRAPH_ORDER = [
    "bronze_customers", "bronze_products", "bronze_orders", "bronze_line_items",
    "silver_customers", "silver_products", "silver_orders", "silver_line_items", "gold",
]  # fmt: skip


def test_every_task_of_the_graph_succeeds_in_dependency_order(first_run) -> None:
    assert first_run.outcomes == [(task, "SUCCESS") for task in GRAPH_ORDER]


def test_every_task_run_is_recorded_in_ops_task_runs(spark, first_run) -> None:
    assert_task_records(spark, first_run)


def assert_task_records(spark, first_run: WorkflowRun, skipped: frozenset[str] = frozenset()):
    """Each task of the run recorded once, with what it did; ``skipped`` tasks found nothing
    new (their input was consumed before the run)."""
    ctx, manifest = first_run.ctx, first_run.manifest
    use(spark, ctx)
    run_id = first_run.run_ids[-1]
    runs = {r.task: r for r in spark.table("ops_task_runs").where(f"run_id = '{run_id}'").collect()}
    assert set(runs) == {t.key for t in load_job_graph().tasks.values()}
    assert {t: r.status for t, r in runs.items()} == {
        t: "SKIPPED" if t in skipped else "SUCCESS" for t in runs
    }
    assert all(r.ended_at >= r.started_at for r in runs.values())
    assert runs["bronze_orders"].rows_in == manifest["counts"]["orders"]["lines"]
    assert runs["gold"].rows_out == spark.table("gold_order_details").count()
    # what silver reports comes from what its batches wrote, and adds up to what it holds
    landing = Path(ctx.profile.landing_root)
    for entity in ENTITIES:
        details = json.loads(runs[f"silver_{entity}"].details)
        expected = read_landing(landing, entity)
        assert runs[f"silver_{entity}"].rows_in == manifest["counts"][entity]["lines"], entity
        assert details["quarantined"] == sum(expected.quarantined.values()), entity
        assert details["batches"] >= 1, entity


def test_bronze_holds_every_landed_line(spark, first_run) -> None:
    ctx, manifest = first_run.ctx, first_run.manifest
    use(spark, ctx)
    for entity in ENTITIES:
        assert spark.table(f"bronze_{entity}").count() == manifest["counts"][entity]["lines"], (
            entity
        )


def test_silver_equals_the_latest_valid_snapshot_per_key(spark, first_run) -> None:
    assert_silver_matches(spark, use(spark, first_run.ctx))


def test_quarantine_holds_every_invalid_line_with_its_reasons(spark, first_run) -> None:
    landing = use(spark, first_run.ctx)
    for entity in ENTITIES:
        expected = read_landing(landing, entity).quarantined
        rows = (
            spark.table(f"quarantine_{entity}")
            .selectExpr(f"record.{KEYS[entity]} as key", "reasons")
            .collect()
        )
        actual = {}
        for r in rows:
            reasons = tuple(sorted(r.reasons))
            key = (None if reasons == ("malformed_record",) else r.key, reasons)
            actual[key] = actual.get(key, 0) + 1
        assert actual == dict(expected), entity


def test_each_injected_fault_is_quarantined_with_the_right_rule(spark, first_run) -> None:
    manifest = first_run.manifest
    landing = use(spark, first_run.ctx)
    faults = [
        f
        for f in manifest["faults"]
        if f["expected_rule"] and not f["expected_rule"].endswith("_exists")
    ]
    assert len(faults) > 20  # the generator injected a real variety at this fault rate
    assert {f["kind"] for f in faults} >= {
        "malformed_json",
        "wrong_type",
        "null_key",
        "null_updated_at",
    }
    quarantined = {  # every quarantine row once, matched in Python below
        entity: spark.table(f"quarantine_{entity}")
        .selectExpr(f"record.{KEYS[entity]} as key", "raw_record", "source_file", "reasons")
        .collect()
        for entity in ENTITIES
    }
    for fault in faults:
        line = (landing / fault["file"]).read_text().splitlines()[fault["line"] - 1]
        if fault["expected_rule"] == "malformed_record":
            hits = [r for r in quarantined[fault["entity"]] if r.raw_record == line]
        else:
            key = None if fault["kind"] == "null_key" else fault["key"]
            hits = [r for r in quarantined[fault["entity"]] if r.key == key]
        reasons = {
            reason
            for row in hits
            if row.source_file.endswith(fault["file"])
            for reason in row.reasons
        }
        assert fault["expected_rule"] in reasons, fault


def test_landed_deletes_leave_silver_and_keep_their_tombstones(spark, first_run) -> None:
    """The generator's deletes (in its manifest) reach silver: every tombstone is the newest
    delete per key (cascaded line items of deleted orders included), and silver holds no
    key whose newest snapshot is a delete (test_silver_equals... checks the rest)."""
    manifest = first_run.manifest
    landing = use(spark, first_run.ctx)
    # at this size: a dozen products, a few of their lines deleted or none
    assert {d["entity"] for d in manifest["deletes"]} >= {"customers", "orders", "line_items"}
    _, _, tombstones = expected_state(landing)
    for entity in ENTITIES:
        key = KEYS[entity]
        rows = spark.table(f"tombstones_{entity}").select(key, "updated_at").collect()
        assert {r[0]: r[1] for r in rows} == tombstones[entity], entity
        landed = {d["key"] for d in manifest["deletes"] if d["entity"] == entity}
        assert landed <= set(tombstones[entity]), entity
    cascaded = spark.table("tombstones_line_items").where("_deleted_by = 'cascade:order_id'")
    assert cascaded.count() > 0  # the orders' deletes reached their line items


def test_line_items_without_their_order_wait_in_deferred(spark, first_run) -> None:
    manifest = first_run.manifest
    landing = use(spark, first_run.ctx)
    _, deferred = expected_silver(landing)
    early = {f["key"] for f in manifest["faults"] if f["kind"] == "early_line_item"}
    waiting = {r.line_item_id for r in spark.table("deferred_line_items").collect()}
    assert early and early <= waiting
    assert waiting == {r["line_item_id"] for r in deferred["line_items"]}


def test_gold_equals_python_computation(spark, first_run) -> None:
    assert_gold_matches(spark, use(spark, first_run.ctx))


def assert_gold_matches(spark, landing) -> None:
    silver, _ = expected_silver(landing)
    assert_gold_equals(spark, spark.table, silver, AS_OF)


def test_each_silver_run_reconciles_exactly_with_the_landed_files(spark, first_run) -> None:
    """bronze rows = upserted + quarantined + deferred + superseded + deletes, per silver
    run, and each term equals what the plain-Python fold of the landed files says (one
    micro-batch each, onto an empty silver: every live key is an insert, every key whose
    newest snapshot is a delete is a delete of an absent key, every other passing row lost
    to a newer or equal snapshot of its key in the batch)."""
    ctx, manifest = first_run.ctx, first_run.manifest
    landing = use(spark, ctx)
    fold = expected_fold(landing)
    silver, deferred = fold.silver, fold.deferred
    runs = {
        r.task: json.loads(r.details)
        for r in spark.table("ops_task_runs").where(f"run_id = '{ctx.run_id}'").collect()
    }
    metrics = {
        (r.entity, r.rule): (r.severity, r.rows_checked, r.rows_failed)
        for r in spark.table("ops_quality_metrics").where("source = 'dataset'").collect()
    }
    absent = 0
    for entity in ENTITIES:
        expected = read_landing(landing, entity)
        passing = len(fold.passed[entity])
        keys = {r[KEYS[entity]] for r in fold.passed[entity]}
        (reconciled,) = [
            c for c in runs[f"silver_{entity}"]["checks"] if c["kind"] == "reconciliation"
        ]
        assert reconciled["terms"] == {
            "bronze_rows": manifest["counts"][entity]["lines"],
            "upserted": len(silver[entity]),
            "quarantined": sum(expected.quarantined.values()) + fold.parent_deleted[entity],
            "deferred": len(deferred[entity]),
            "superseded_in_batch": passing - len(keys),
            "superseded_by_silver": 0,
            "behind_tombstones": 0,  # one batch onto empty tables: no tombstone before it
            "deletes_absent": len(keys) - len(silver[entity]),
        }, entity
        absent += reconciled["terms"]["deletes_absent"]
        lines = manifest["counts"][entity]["lines"]
        assert metrics[(entity, "reconciled")] == ("fail", lines, 0), entity
        assert metrics[(entity, "key_unique")] == ("fail", len(silver[entity]), 0), entity
    assert absent > 0  # the generated deletes reached the reconciliation
    for rule in ("line_item_order_exists", "line_item_product_exists"):
        assert metrics[("gold", rule)] == ("fail", len(silver["line_items"]), 0)


def test_ops_tables_write_a_log_checkpoint_every_50_commits(spark, first_run) -> None:
    lake = Lakehouse(spark, first_run.ctx.profile)
    for table in ("ops_task_runs", "ops_quality_metrics", "ops_gold_watermarks"):
        assert lake.properties(table).get("delta.checkpointInterval") == "50", table
    assert "delta.checkpointInterval" not in lake.properties("silver_orders")


def test_a_run_writes_its_run_records_and_dataset_check_rows_in_one_commit_each(
    spark, first_run
) -> None:
    warehouse = Path(first_run.ctx.profile.warehouse_root) / first_run.ctx.profile.schema

    def writers(table: str) -> list[str]:
        """The idempotent-write identity of each commit of ``table``, oldest first."""
        commits = sorted((warehouse / table / "_delta_log").glob("*.json"))
        actions = [[json.loads(line) for line in c.read_text().splitlines()] for c in commits]
        return [next((a["txn"]["appId"] for a in c if "txn" in a), "") for c in actions]

    checks = [w for w in writers("ops_quality_metrics") if w.startswith("dataset-checks-")]
    schema = first_run.ctx.profile.schema
    per_run = spark.sql(
        f"SELECT run_id, count(DISTINCT entity) AS tasks FROM {schema}.ops_quality_metrics "
        "WHERE source = 'dataset' GROUP BY run_id"
    ).collect()
    # one commit per run (this module's runs so far), holding the rows of all five checked
    # tasks: the four silver tasks and gold
    assert len(checks) == len(per_run) >= 1, (checks, per_run)
    assert {r.tasks for r in per_run} == {5}
    runs = [w for w in writers("ops_task_runs") if w]
    assert len(runs) == len(per_run) and all(w.startswith("task-runs-") for w in runs)
