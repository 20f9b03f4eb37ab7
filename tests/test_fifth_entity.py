"""Adding an entity is a change to conf/, not to Python: a fifth entity, payments (a child of
orders, with long, double and array fields), declared in a copy of conf/ runs through the
same bronze and silver entry points, and the job graph says exactly what to add."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from builders import T0, land, order
from chispa import assert_df_equality
from conftest import data_root_of
from pipeline_helpers import merge_silver, quarantine_rows

from order_pipeline.cli import job_graph
from order_pipeline.common.config import conf_dir, load_entities
from order_pipeline.jobs import bronze, silver

PAYMENTS = """
  payments:
    key: payment_id
    sequence: updated_at
    parents:
      order_id: orders
    fields:
      payment_id: string
      order_id: string
      amount: decimal(10,2)
      attempt: long
      fx_rate: double
      tags: array<string>
      updated_at: timestamp
"""
PAYMENT_RULES = """
max_quarantine_ratio: 1.0
rules:
  - {name: malformed_record, kind: malformed, severity: quarantine}
  - {name: payment_id_not_null, kind: not_null, column: payment_id, severity: quarantine}
  - {name: updated_at_not_null, kind: not_null, column: updated_at, severity: quarantine}
  - {name: amount_positive, kind: range, column: amount, min: 0, strict_min: true, severity: quarantine}
  - {name: order_exists, kind: foreign_key, column: order_id, parent: orders, severity: defer}
"""
LATER = "2026-05-02T10:00:00Z"


def payment(payment_id: str, order_id: str = "O1", **overrides) -> dict:
    record = {"payment_id": payment_id, "order_id": order_id, "amount": 10.5, "attempt": 1,
              "fx_rate": 1.0825, "tags": ["card"], "updated_at": T0}  # fmt: skip
    return {**record, **overrides}


@pytest.fixture
def payments_conf(tmp_path: Path, monkeypatch) -> Path:
    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    with (conf / "pipeline.yml").open("a", encoding="utf-8") as pipeline:
        pipeline.write(PAYMENTS)
    (conf / "quality" / "payments.yml").write_text(PAYMENT_RULES, encoding="utf-8")
    monkeypatch.setenv("ORDER_PIPELINE_CONF", str(conf))
    return conf


def test_the_job_graph_says_exactly_what_to_add_for_a_new_entity(payments_conf) -> None:
    tasks = {t["task_key"]: t for t in job_graph.job_tasks(load_entities())}
    assert [d["task_key"] for d in tasks["silver_payments"]["depends_on"]] == [
        "bronze_payments",
        "silver_orders",
    ]
    assert "depends_on" not in tasks["bronze_payments"]
    assert tasks["gold"]["depends_on"] == [{"task_key": "silver_line_items"}]  # not a gold input
    difference = job_graph.difference(
        Path(__file__).resolve().parents[1] / "resources" / "jobs.yml", load_entities()
    )
    added = [line[1:].strip() for line in difference.splitlines() if line.startswith("+ ")]
    removed = [line for line in difference.splitlines() if line.startswith("- ")]
    assert "- task_key: bronze_payments" in added and "- task_key: silver_payments" in added
    assert not removed  # the other tasks stay as they are


def test_a_fifth_entity_runs_through_bronze_and_silver_without_python(
    spark, ctx, payments_conf
) -> None:
    ctx = replace(ctx, entities=load_entities())
    merge_silver(spark, ctx, "orders", [order("O1")])  # the parent, already in silver
    land(ctx.profile.landing_root, "payments", [
        payment("P1"),
        payment("P1", amount=11.25, attempt=2, tags=["card", "retry"], updated_at=LATER),
        payment("P2", order_id="O9"),  # its order has not arrived: it waits
        payment("P3", amount=-1),
        '{"payment_id": "P4", "attempt": "second"}',  # a value that is not a long
    ])  # fmt: skip
    task_args = ["--schema", ctx.profile.schema, "--data-root", str(data_root_of(ctx))]
    for main in (bronze.main, silver.main):  # the tasks' own entry points
        assert main(["--entity", "payments", *task_args, "--run-id", "fifth"]) == 0

    actual = spark.table("silver_payments").select(*ctx.entities["payments"].columns)
    expected = spark.createDataFrame(
        [("P1", "O1", Decimal("11.25"), 2, 1.0825, ["card", "retry"], datetime(2026, 5, 2, 10))],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_nullable=True)
    assert [r.payment_id for r in spark.table("deferred_payments").collect()] == ["P2"]
    assert quarantine_rows(spark, "payments") == [
        ("P3", ("amount_positive",), "open", None),
        # the fields that did parse are kept beside the raw text
        ("P4", ("malformed_record",), "open", '{"payment_id": "P4", "attempt": "second"}'),
    ]
    (run,) = spark.table("ops_task_runs").where("task = 'silver_payments'").collect()
    assert (run.rows_in, run.rows_out, json.loads(run.details)["deferred"]) == (5, 2, 1)
