"""The command line on a local data root: run, sql --json, quarantine, replay, report."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from builders import customer, edit_text, land, order

from order_pipeline.cli import main as cli
from order_pipeline.common.config import conf_dir


@pytest.fixture(scope="module")
def data_root(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    conf = root / "conf"
    shutil.copytree(conf_dir(), conf)
    local = conf / "local.yml"
    edit_text(local, ("defer_max_age: 7 days", "defer_max_age: 0 seconds"),
              ("schema: lakehouse", "schema: cli_test"))  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORDER_PIPELINE_CONF", str(conf))
        landing = root / "landing"
        land(landing, "customers", [customer("C1"), customer("C2", email="c2@example.test1")])
        land(landing, "orders", [order("O1"), order("O2", customer_id="C9")])
        for task in (
            "bronze_customers",
            "bronze_orders",
            "silver_customers",
            "silver_orders",
            "gold",
        ):
            with contextlib.redirect_stdout(io.StringIO()) as out:  # not a terminal
                assert cli.main(["run", "--task", task, "--data-root", str(root)]) == 0
            RUN_OUTPUT[task] = out.getvalue()
        yield root


RUN_OUTPUT: dict[str, str] = {}  # what each `run --task` of the fixture printed


def test_run_prints_plain_progress_lines_when_not_a_terminal(data_root) -> None:
    lines = RUN_OUTPUT["silver_orders"].splitlines()
    assert re.fullmatch(r"job \S+: 9 tasks from \S+/resources/jobs\.yml, run local-\S+", lines[0])
    assert "[1/1] silver_orders (order-pipeline-silver)" in lines
    [done] = [line for line in lines if line.startswith("[done ")]
    assert re.fullmatch(r"\[done 1/1\] silver_orders: SUCCESS in \d+\.\ds", done), done
    assert lines.index(done) > lines.index("[1/1] silver_orders (order-pipeline-silver)")
    # the task's own lines are there, and nothing a terminal would draw
    assert any(line.startswith("silver_orders: success in") for line in lines), lines
    assert "\x1b" not in RUN_OUTPUT["silver_orders"] and "━" not in RUN_OUTPUT["silver_orders"]


def sql_json(capsys, root: Path, query: str) -> list[dict]:
    capsys.readouterr()
    assert cli.main(["sql", "--json", query, "--data-root", str(root)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_sql_json_prints_json_lines(capsys, data_root) -> None:
    assert sql_json(capsys, data_root, "select count(*) as n from bronze_orders") == [{"n": 2}]


def test_quarantine_summary_and_rows(capsys, data_root) -> None:
    capsys.readouterr()
    cli.main(["quarantine", "--json", "--data-root", str(data_root)])
    summary = {
        (r["entity"], r["rule"], r["status"], r["rows"])
        for r in map(json.loads, capsys.readouterr().out.splitlines())
    }
    assert summary == {
        ("customers", "email_valid", "open", 1),
        ("orders", "customer_exists", "expired", 1),
    }
    cli.main(
        [
            "quarantine",
            "--entity",
            "orders",
            "--status",
            "expired",
            "--json",
            "--data-root",
            str(data_root),
        ]
    )
    (row,) = map(json.loads, capsys.readouterr().out.splitlines())
    assert row["reasons"] == ["customer_exists"] and json.loads(row["record"])["order_id"] == "O2"


def test_report_prints_the_gold_answers(capsys, data_root) -> None:
    # before any replay: C2 (bad e-mail) and O2 (customer C9 never came, expired) quarantined
    capsys.readouterr()
    assert cli.main(["report", "--data-root", str(data_root)]) == 0
    lines = [line.rstrip() for line in capsys.readouterr().out.splitlines()]

    def row(*cells: object) -> bool:
        """A line that starts with exactly these cells."""
        pattern = r"\s+".join(map(re.escape, map(str, cells))) + r"(\s.*)?"
        return any(re.fullmatch(pattern, line) for line in lines)

    assert row("customers", 2, 1, 1, 0) and row(
        "orders", 2, 1, 1, 0
    )  # bronze silver quarantine deferred
    # nothing landed: no bronze, and the empty silver tables gold made sure of
    assert row("products", 0) and row("line_items", 0), "\n".join(lines)
    assert row("In Progress", 1, 0, 0)  # O1 has no line items yet
    most_sold = lines.index("Most sold product, last 30 days (gold_most_sold_product_last_30d)")
    assert lines[most_sold + 3] == "(no rows)"  # nothing delivered
    assert row("customers", "email_valid", "open", 1)
    assert row("orders", "customer_exists", "expired", 1)


def test_replay_after_the_parent_lands_and_after_a_rule_fix(capsys, data_root, monkeypatch) -> None:
    conf = data_root / "conf"
    monkeypatch.setenv("ORDER_PIPELINE_CONF", str(conf))
    land(data_root / "landing", "customers", [customer("C9")])
    assert cli.main(["run", "--task", "bronze_customers", "--data-root", str(data_root)]) == 0
    assert cli.main(["run", "--task", "silver_customers", "--data-root", str(data_root)]) == 0
    assert cli.main(["replay", "orders", "--status", "expired", "--data-root", str(data_root)]) == 0
    assert sql_json(capsys, data_root, "select order_id from silver_orders order by order_id") == [
        {"order_id": "O1"}, {"order_id": "O2"}
    ]  # fmt: skip
    before = [
        sql_json(capsys, data_root, f"describe history {t}")[0]["version"]
        for t in ("silver_orders", "quarantine_orders")
    ]
    assert cli.main(["replay", "orders", "--status", "expired", "--data-root", str(data_root)]) == 0
    after = [
        sql_json(capsys, data_root, f"describe history {t}")[0]["version"]
        for t in ("silver_orders", "quarantine_orders")
    ]
    assert after == before  # a second replay commits nothing

    rules = conf / "quality" / "customers.yml"
    edit_text(rules, (r"\.[A-Za-z]{2,}\z", r"\.[A-Za-z0-9]{2,}\z"))
    assert (
        cli.main(["replay", "customers", "--rule", "email_valid", "--data-root", str(data_root)])
        == 0
    )
    assert sql_json(capsys, data_root, "select customer_id from silver_customers order by 1") == [
        {"customer_id": "C1"}, {"customer_id": "C2"}, {"customer_id": "C9"}
    ]  # fmt: skip
    statuses = sql_json(
        capsys, data_root, "select record.customer_id as id, status from quarantine_customers"
    )
    assert statuses == [{"id": "C2", "status": "replayed"}]


def test_unknown_task_is_a_clear_error(capsys, data_root) -> None:
    assert cli.main(["run", "--task", "golden", "--data-root", str(data_root)]) == 2
    assert "no task 'golden'" in capsys.readouterr().err


def test_report_html_writes_the_page_and_prints_its_path(capsys, data_root, tmp_path) -> None:
    capsys.readouterr()
    target = tmp_path / "out" / "report.html"
    assert cli.main(["report", "--data-root", str(data_root), "--html", str(target)]) == 0
    assert capsys.readouterr().out.strip() == f"report written to {target.resolve()}"
    page = target.read_text(encoding="utf-8")
    # the runs' charts are drawn; no product or line item ever landed here, so the dashboards'
    # queries over all four entities fail, and the page says on which table
    marks = dict(re.findall(r'data-chart="([\w-]+)" data-marks="(\d+)"', page))
    assert int(marks["task-seconds"]) > 0 and int(marks["latest-run-tasks"]) > 0
    assert "query failed: [TABLE_OR_VIEW_NOT_FOUND]" in page and "`quarantine_products`" in page
    assert 'data-task="gold"' in page and "c2@example.test1" not in page
