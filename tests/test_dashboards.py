"""The AI/BI dashboards (src/dashboards/*.lvdash.json) and the SQL alerts
(resources/alerts.yml): their structure, and every query run on local Spark.

One small landing batch with faults goes through bronze and silver of every entity, each
task recorded in ops_task_runs as the job records it, with the quarantine tables in a
schema of their own as on Databricks. A dashboard's queries name tables without catalog or
schema: the bundle sets both per dashboard (dataset_catalog, dataset_schema), which here is
``USE`` of the matching local schema. The alerts' ``${var.catalog}.${var.schema}`` become the
local catalog and schema. The results are compared with the plain-Python reading of the
landed files (tests/expectations.py) and with what the tables hold.

The same run feeds ``order-pipeline report --html``: the page is written once, checked as
text (self-contained, escaped, masked) and opened in headless Chromium. One hostile customer
line lands beside the generated ones for it: its key closes the page's table and opens a
script, and its personal fields must never reach the page.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from collections import Counter
from dataclasses import replace
from datetime import date
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from conftest import make_context
from expectations import expected_silver, read_landing
from pipeline_helpers import quiet

from order_pipeline.common.config import dependency_order, load_entities
from order_pipeline.common.contract import bronze_task, silver_task
from order_pipeline.common.io import Lakehouse
from order_pipeline.jobs import bronze, silver
from order_pipeline.jobs.task import run_task
from order_pipeline.synthetic.generator import GeneratorConfig, generate

pytestmark = pytest.mark.usefixtures("repository_conf")  # every dataset check

REPO_ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_FILES = {
    # bundle resource key -> the schema its dataset_schema names (resources/dashboards.yml)
    "pipeline_health": "pipeline",
    "quarantine_review": "quarantine",
}
SCALE = {"seed": 11, "customers": 25, "products": 8, "orders": 70, "files_per_entity": 1,
         "fault_rate": 0.08, "end_date": date(2026, 10, 31), "months": 2}  # fmt: skip
GRID_COLUMNS = 6  # a Lakeview canvas page is six columns wide
# a customer key that closes the page's table and runs a script if it is not escaped; its
# personal fields must not reach the HTML report in clear
HOSTILE_ID = "C-</td></tr></table><script>window.__pwned = 1</script><b>bold"
HOSTILE_PERSONAL = {"first_name": "Mallory", "last_name": "Hostile</td>",
                    "email": "mallory.private@example", "city": "<script>alert(2)</script>"}  # fmt: skip
HOSTILE_LINE = json.dumps(
    {
        "customer_id": HOSTILE_ID,
        **HOSTILE_PERSONAL,
        "phone": None,
        "country": "NO",
        "created_at": "2026-10-01T08:00:00Z",
        "updated_at": 1764669600000,
    }
)


def load_dashboard(key: str) -> dict[str, Any]:
    return json.loads((REPO_ROOT / "src" / "dashboards" / f"{key}.lvdash.json").read_text())


def dataset_sql(dataset: dict[str, Any]) -> str:
    return "".join(dataset["queryLines"])


def widgets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(page name, widget, position) of every widget."""
    return [
        (page["name"], item["widget"], item["position"])
        for page in dashboard["pages"]
        for item in page["layout"]
    ]


# ---------------------------------------------------------------------------------------
# One recorded run of bronze and silver
# ---------------------------------------------------------------------------------------


class Run:
    def __init__(self, spark, ctx, manifest: dict) -> None:
        self.spark, self.ctx, self.manifest = spark, ctx, manifest
        self.landing = Path(ctx.profile.landing_root)
        self.entities = list(load_entities())
        self.landed = {e: read_landing(self.landing, e) for e in self.entities}
        self.silver, self.deferred = expected_silver(self.landing)

    def schema_of(self, key: str) -> str:
        profile = self.ctx.profile
        return profile.schema if DASHBOARD_FILES[key] == "pipeline" else profile.quarantine_schema

    def dataset(self, key: str, name: str):
        """The dataset's query as the dashboard runs it: in its dashboard's schema."""
        [found] = [d for d in load_dashboard(key)["datasets"] if d["name"] == name]
        self.spark.sql(f"USE {self.schema_of(key)}")
        return self.spark.sql(dataset_sql(found))

    @cached_property
    def report(self):
        """What ``report --html`` shows of this run (every quarantined row, the dashboard's
        LIMIT 500, not only the page's 50): every dataset is run once, in its dashboard's
        schema, by html_report, and the tests below read its rows, so the page's numbers are
        the ones compared with the landed files (and no query runs twice)."""
        from order_pipeline.cli.html_report import collect_report

        return collect_report(Lakehouse(self.spark, self.ctx.profile), self.ctx.entities, rows=500)

    def rows(self, key: str, name: str) -> list[SimpleNamespace]:
        found = self.report.datasets[f"{key}.{name}"]
        assert found.error is None, f"{key}.{name}: {found.error}"
        return [SimpleNamespace(**row) for row in found.rows]


@pytest.fixture(scope="module")
def run(spark, tmp_path_factory) -> Run:
    ctx = make_context(tmp_path_factory.mktemp("dashboards"))
    ctx = replace(
        ctx, profile=replace(ctx.profile, quarantine_schema=f"{ctx.profile.schema}_quarantine")
    )
    manifest = generate(
        GeneratorConfig(landing=Path(ctx.profile.landing_root), **SCALE), progress=quiet
    )
    # one hostile line beside the generated ones, for the HTML report (its raw text is kept:
    # the timestamp is a number); the plain-Python reading of landing counts it like any other
    hostile = Path(ctx.profile.landing_root) / "customers" / "hostile.json"
    hostile.write_text(HOSTILE_LINE + "\n", encoding="utf-8")
    manifest["counts"]["customers"]["lines"] += 1
    for entity in dependency_order(ctx.entities):
        task_ctx = replace(ctx, entity=entity)
        run_task(bronze_task(entity), task_ctx, lambda s, c: bronze.run(s, c, quiet), quiet)
        run_task(silver_task(entity), task_ctx, lambda s, c: silver.run(s, c, quiet), quiet)
    Lakehouse(spark, ctx.profile)  # registers both schemas' tables
    return Run(spark, ctx, manifest)


# ---------------------------------------------------------------------------------------
# Well-formed Lakeview
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(DASHBOARD_FILES))
def test_every_widget_encodes_fields_of_an_existing_dataset(run: Run, key: str) -> None:
    dashboard = load_dashboard(key)
    datasets = {d["name"]: d for d in dashboard["datasets"]}
    assert len(datasets) == len(dashboard["datasets"]), "dataset names repeat"
    # what each dataset's SELECT list gives, as Spark analyses the query
    columns = {name: set(run.dataset(key, name).columns) for name in datasets}
    used = set()
    names = [w["name"] for _, w, _ in widgets(dashboard)]
    assert len(names) == len(set(names)), "widget names repeat"
    for page, widget, _ in widgets(dashboard):
        where = f"{key}: page {page}, widget {widget['name']}"
        if "multilineTextboxSpec" in widget:
            continue
        fields: set[str] = set()
        for q in widget["queries"]:
            query = q["query"]
            assert query["datasetName"] in datasets, f"{where}: {query['datasetName']}"
            used.add(query["datasetName"])
            available = columns[query["datasetName"]]
            expressions = [f["expression"] for f in query["fields"]]
            expressions += [o["expression"] for o in query.get("orders", [])]
            for expression in expressions:
                referenced = set(re.findall(r"`([^`]+)`", expression))
                assert referenced and referenced <= available, (
                    f"{where}: {expression} names {referenced - available or 'no column'}; "
                    f"the dataset has {sorted(available)}"
                )
            fields |= {f["name"] for f in query["fields"]}
        encodings = widget["spec"]["encodings"]
        encoded = [e["fieldName"] for e in encodings.get("columns", [])] + [
            e["fieldName"] for e in encodings.values() if isinstance(e, dict) and "fieldName" in e
        ]
        assert encoded, f"{where} encodes nothing"
        assert set(encoded) <= fields, f"{where}: encodes {set(encoded) - fields}"
    assert used == set(datasets), f"{key}: datasets no widget shows: {set(datasets) - used}"


@pytest.mark.parametrize("key", list(DASHBOARD_FILES))
def test_widgets_fit_the_grid_without_overlapping(key: str) -> None:
    taken: dict[str, set[tuple[int, int]]] = {}
    for page, widget, p in widgets(load_dashboard(key)):
        assert p["x"] >= 0 and p["width"] >= 1 and p["x"] + p["width"] <= GRID_COLUMNS, widget
        cells = {
            (x, y)
            for x in range(p["x"], p["x"] + p["width"])
            for y in range(p["y"], p["y"] + p["height"])
        }
        overlap = taken.setdefault(page, set()) & cells
        assert not overlap, f"{key}: {widget['name']} overlaps another widget at {overlap}"
        taken[page] |= cells


def test_only_the_quarantine_dashboard_reads_quarantined_rows() -> None:
    # The operators who view pipeline_health have no grant on the quarantine schema.
    for key, schema in DASHBOARD_FILES.items():
        sql = " ".join(dataset_sql(d) for d in load_dashboard(key)["datasets"])
        reads_quarantine = re.search(r"\b(?:FROM|JOIN)\s+quarantine_\w+", sql) is not None
        assert reads_quarantine == (schema == "quarantine"), key
        assert "raw_record" not in sql and "record." not in sql, f"{key} shows raw records"


# ---------------------------------------------------------------------------------------
# Pipeline health, on the run's tables
# ---------------------------------------------------------------------------------------


def test_latest_run_is_the_run_with_every_task(run: Run) -> None:
    [latest] = run.rows("pipeline_health", "latest_run")
    assert latest.run_id == run.ctx.run_id
    assert (latest.tasks, latest.failed_tasks) == (2 * len(run.entities), 0)
    assert 0 < latest.wall_minutes < 30
    assert 0 <= latest.hours_since_run_ended < 1


def test_rows_per_layer_are_the_landed_files_counted(run: Run) -> None:
    actual = {
        (r.run_id, r.entity, r.stage): r.row_count
        for r in run.rows("pipeline_health", "rows_per_run")
    }
    expected = {}
    for entity in run.entities:
        landed = run.landed[entity]
        quarantined = sum(landed.quarantined.values())
        deferred = len(run.deferred[entity])
        lines = run.manifest["counts"][entity]["lines"]
        for stage, rows in (
            ("landed (bronze)", lines),
            ("merged into silver", len(landed.valid) - deferred),
            ("quarantined", quarantined),
            ("deferred", deferred),
            ("promoted from deferred", 0),
            ("expired to quarantine", 0),
        ):
            expected[(run.ctx.run_id, entity, stage)] = rows
    assert actual == expected
    assert sum(r for (_, _, s), r in expected.items() if s == "quarantined") > 0
    assert sum(r for (_, _, s), r in expected.items() if s == "deferred") > 0


def test_task_durations_are_the_recorded_tasks(run: Run) -> None:
    rows = run.rows("pipeline_health", "task_durations")
    assert sorted(r.task for r in rows) == sorted(
        t(e) for e in run.entities for t in (bronze_task, silver_task)
    )
    for r in rows:
        assert r.layer == r.task.split("_")[0] and r.task.endswith(r.entity)
        assert r.status == "SUCCESS" and r.error is None
        assert r.seconds == pytest.approx((r.ended_at - r.started_at).total_seconds())
        assert r.run_started_at <= r.started_at


def test_quarantine_rate_per_rule_counts_the_rows_each_rule_rejected(run: Run) -> None:
    rows = run.rows("pipeline_health", "quarantine_rate")
    quarantine_rules = {
        (entity, rule["name"])
        for entity in run.entities
        for rule in yaml.safe_load((REPO_ROOT / "conf" / "quality" / f"{entity}.yml").read_text())[
            "rules"
        ]
        if rule["severity"] == "quarantine"
    }
    assert {(r.entity, r.rule) for r in rows} == quarantine_rules
    held = Counter(
        (entity, reason)
        for entity in run.entities
        for row in run.spark.table(f"{run.ctx.profile.quarantine_schema}.quarantine_{entity}")
        .select("reasons")
        .collect()
        for reason in row.reasons
    )
    for r in rows:
        landed = run.landed[r.entity]
        expected = sum(n for (_, reasons), n in landed.quarantined.items() if r.rule in reasons)
        assert r.rows_quarantined == expected == held[(r.entity, r.rule)], (r.entity, r.rule)
        assert r.rows_checked == run.manifest["counts"][r.entity]["lines"]
        assert r.quarantine_rate == pytest.approx(expected / r.rows_checked)
        assert r.entity_rule == f"{r.entity}.{r.rule}" and r.run_id == run.ctx.run_id
    assert sum(r.rows_quarantined for r in rows) > 0


def test_deferred_backlog_is_the_rows_waiting_for_their_parent(run: Run) -> None:
    rows = {r.entity: r for r in run.rows("pipeline_health", "deferred_backlog")}
    assert set(rows) == set(run.entities)
    for entity, r in rows.items():
        assert r.deferred_rows == len(run.deferred[entity]), entity
        if r.deferred_rows:
            assert 0 <= r.oldest_age_hours < 1, entity
        else:
            assert r.oldest_deferred_at is None and r.oldest_age_hours is None, entity
    assert sum(r.deferred_rows for r in rows.values()) > 0


def test_freshness_is_the_newest_snapshot_and_landing_per_entity(run: Run) -> None:
    rows = {r.entity: r for r in run.rows("pipeline_health", "freshness")}
    assert set(rows) == set(run.entities)
    for entity, r in rows.items():
        silver = run.silver[entity]
        assert r.silver_rows == len(silver), entity
        assert r.newest_updated_at == max(v["updated_at"] for v in silver.values()), entity
        assert r.newest_ingested_at is not None and 0 <= r.hours_since_ingested < 1, entity


# ---------------------------------------------------------------------------------------
# Quarantine review, on the quarantine schema
# ---------------------------------------------------------------------------------------


def test_rows_per_reason_are_the_landed_lines_each_reason_rejected(run: Run) -> None:
    expected: Counter = Counter()
    for entity in run.entities:
        for (_, reasons), n in run.landed[entity].quarantined.items():
            for reason in reasons:
                expected[(entity, reason, "open")] += n
    actual = {
        (r.entity, r.reason, r.status): r.row_count
        for r in run.rows("quarantine_review", "quarantine_by_reason")
    }
    assert actual == dict(expected)


def test_latest_quarantined_rows_and_open_counters(run: Run) -> None:
    total = sum(sum(run.landed[e].quarantined.values()) for e in run.entities)
    latest = run.rows("quarantine_review", "latest_quarantined")
    assert len(latest) == total
    times = [r.quarantined_at for r in latest]
    assert times == sorted(times, reverse=True)
    expected_keys = Counter(
        (entity, tuple(sorted(reasons)))
        for entity in run.entities
        for (_, reasons), n in run.landed[entity].quarantined.items()
        for _ in range(n)
    )
    assert Counter((r.entity, tuple(sorted(r.reasons.split(", ")))) for r in latest) == (
        expected_keys
    )
    assert {r.run_id for r in latest} == {run.ctx.run_id}
    [counters] = run.rows("quarantine_review", "open_quarantine")
    assert counters.open_rows == total
    assert counters.oldest_open_at == min(times)
    assert 0 <= counters.oldest_open_age_days < 1


# ---------------------------------------------------------------------------------------
# The alerts' queries
# ---------------------------------------------------------------------------------------


def alert_rows(run: Run, key: str) -> list:
    alerts = yaml.safe_load((REPO_ROOT / "resources" / "alerts.yml").read_text())
    query = alerts["resources"]["alerts"][key]["query_text"]
    profile = run.ctx.profile
    local = query.replace("${var.catalog}", profile.catalog).replace(
        "${var.schema}", profile.schema
    )
    assert "${" not in local, local
    return run.spark.sql(local).collect()


def test_freshness_alert_sees_every_entity_fresh_after_a_run(run: Run) -> None:
    rows = {r.entity: r for r in alert_rows(run, "pipeline_freshness")}
    assert set(rows) == set(run.entities)
    threshold = yaml.safe_load((REPO_ROOT / "databricks.yml").read_text())["variables"][
        "stale_after_hours"
    ]["default"]
    # the alert compares the largest value with the threshold: this run is hours below it
    assert all(0 <= r.hours_since_success < 1 < threshold for r in rows.values())


def test_quarantine_ratio_alert_computes_each_entitys_share(run: Run) -> None:
    rows = {r.entity: r for r in alert_rows(run, "quarantine_ratio")}
    assert set(rows) == set(run.entities)
    for entity, r in rows.items():
        lines = run.manifest["counts"][entity]["lines"]
        quarantined = sum(run.landed[entity].quarantined.values())
        assert (r.rows_checked, r.rows_quarantined) == (lines, quarantined), entity
        assert r.quarantine_ratio == pytest.approx(quarantined / lines), entity


# ---------------------------------------------------------------------------------------
# The same picture locally: `order-pipeline report --html`, opened in headless Chromium
# ---------------------------------------------------------------------------------------

CHARTS = {
    "quarantine-rate", "quarantined-per-rule", "rows-per-stage", "task-seconds",
    "latest-run-tasks", "deferred-backlog", "freshness", "rows-per-reason",
}  # fmt: skip
ARTIFACTS = REPO_ROOT / "test-artifacts"  # ignored by git: the screenshot of the last run


@pytest.fixture(scope="module")
def page(run: Run, tmp_path_factory) -> Path:
    from order_pipeline.cli.html_report import render

    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render(run.report), encoding="utf-8")
    return path


def landed_personal_values(run: Run) -> set[str]:
    """Every personal value of the landed customer lines (e-mails and last names: long enough
    not to match by chance), read from the files themselves."""
    values = set(HOSTILE_PERSONAL.values())
    for path in (run.landing / "customers").glob("*.json"):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                values |= {
                    v
                    for k, v in record.items()
                    if k in ("email", "last_name") and isinstance(v, str) and len(v) >= 5
                }
    return values


def test_html_report_is_self_contained_escaped_and_masked(run: Run, page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    # no script, no external resource: nothing to fetch, nothing to run
    assert "<script" not in text.lower() and "javascript:" not in text.lower()
    assert not re.search(r"""\b(?:src|href)\s*=""", text, re.IGNORECASE)
    assert re.findall(r"https?://[^\s\"'<>]+", text) == ["http://www.w3.org/2000/svg"] * text.count(
        "<svg"
    )
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    # the hostile key shows, escaped; no personal value of any landed customer does
    assert (
        html.escape(HOSTILE_ID, quote=True) in text
        or html.escape(json.dumps(HOSTILE_ID)[1:-1], quote=True) in text
    )
    leaked = {v for v in landed_personal_values(run) if v in text or html.escape(v) in text}
    assert not leaked


def chromium_driver():
    """Debian's chromium through its chromium-driver (make test installs both when missing)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip(
            "Chromium is not installed and could not be installed here (make test runs "
            "tools/install_chromium.sh: apt-get install chromium chromium-driver, as root)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,900", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def test_html_report_in_headless_chromium(run: Run, page: Path) -> None:
    from selenium.webdriver.common.by import By

    browser = chromium_driver()
    try:
        browser.get(page.as_uri())
        assert browser.execute_script("return document.readyState") == "complete"
        problems = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert problems == []
        assert browser.execute_script("return document.scripts.length") == 0
        assert browser.execute_script("return window.__pwned") is None

        # every chart, drawn: its marks are in the SVG, as many as it says it drew
        figures = browser.find_elements(By.CSS_SELECTOR, "figure[data-chart]")
        assert {f.get_attribute("data-chart") for f in figures} == CHARTS
        for f in figures:
            marks = f.find_elements(By.CSS_SELECTOR, "svg .mark")
            assert marks, f"chart {f.get_attribute('data-chart')} is empty: {f.text}"
            assert len(marks) == int(f.get_attribute("data-marks"))
            assert all(m.size["width"] > 0 and m.size["height"] > 0 for m in marks)

        # the lineage names every task of resources/jobs.yml and draws each dependency
        jobs = yaml.safe_load((REPO_ROOT / "resources" / "jobs.yml").read_text())
        [job] = jobs["resources"]["jobs"].values()
        expected_edges = {
            (d["task_key"], t["task_key"]) for t in job["tasks"] for d in t.get("depends_on", [])
        }
        boxes = browser.find_elements(By.CSS_SELECTOR, "#lineage g.task")
        assert sorted(b.text for b in boxes) == sorted(t["task_key"] for t in job["tasks"])
        edges = browser.find_elements(By.CSS_SELECTOR, "#lineage path.edge")
        assert {(e.get_attribute("data-from"), e.get_attribute("data-to")) for e in edges} == (
            expected_edges
        )

        # the quarantine table: one row per quarantined line, the hostile one as text, masked
        rows = browser.find_elements(By.CSS_SELECTOR, "#quarantine-table tbody tr")
        total = sum(sum(run.landed[e].quarantined.values()) for e in run.entities)
        assert len(rows) == total
        [hostile] = [r for r in rows if HOSTILE_ID in r.text]
        record = hostile.find_element(By.CSS_SELECTOR, "td.record").text
        assert json.loads(record)["customer_id"] == HOSTILE_ID
        for field, value in HOSTILE_PERSONAL.items():
            assert re.fullmatch(r"\*\*\*[0-9a-f]{8}", json.loads(record)[field]), (field, value)
        assert browser.find_element(By.TAG_NAME, "body").text.count("***") >= 4

        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1400, min(height, 6000))
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "report-html.png"
        assert browser.save_screenshot(str(shot))
        print(f"screenshot of the HTML report: {shot}")
    finally:
        browser.quit()
