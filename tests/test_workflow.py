"""The local runner reads resources/jobs.yml itself and runs it like Databricks would."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from order_pipeline.cli import runner as workflow
from order_pipeline.cli.runner import bundle_variables, load_job_graph, resolve, run_graph
from order_pipeline.common.config import ConfigError, load_profile


@pytest.fixture
def graph():
    return load_job_graph()


@pytest.fixture
def variables(tmp_path: Path, graph):
    return bundle_variables(graph.source.parent.parent, load_profile("local", tmp_path))


def test_graph_order_respects_every_dependency(graph) -> None:
    order = [t.key for t in graph.ordered()]
    assert order[:4] == [
        "bronze_customers",
        "bronze_products",
        "bronze_orders",
        "bronze_line_items",
    ]
    position = {key: i for i, key in enumerate(order)}
    for task in graph.tasks.values():
        for dep in task.depends_on:
            assert position[dep] < position[task.key], (dep, task.key)
    assert graph.tasks["silver_line_items"].depends_on == (
        "bronze_line_items",
        "silver_orders",
        "silver_products",
    )
    assert order[-1] == "gold"


def test_references_resolve_from_the_local_profile(tmp_path: Path, variables) -> None:
    dynamic = {"job.parameters.landing_root": "/x/landing", "job.run_id": "R1"}
    assert resolve("{{job.parameters.landing_root}}", variables, dynamic, "here") == "/x/landing"
    assert resolve("${var.schema}", variables, dynamic, "here") == "lakehouse"
    assert resolve("{{ job.run_id }}", variables, dynamic, "here") == "R1"
    with pytest.raises(ConfigError, match=r"\$\{var\.nope\}.*not defined"):
        resolve("${var.nope}", variables, dynamic, "here")
    with pytest.raises(ConfigError, match=r"\{\{job\.parameters\.nope\}\}"):
        resolve("{{job.parameters.nope}}", variables, dynamic, "here")


class Recorder:
    def __init__(self, failing: set[str] = frozenset()) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.failing = failing

    def load(self, name: str):
        def main(argv: list[str]) -> int:
            entity = argv[argv.index("--entity") + 1] if "--entity" in argv else None
            self.calls.append((name, argv))
            if (name, entity) in self.failing:
                raise RuntimeError(f"boom in {name} {entity}")
            return 0

        return main


def test_tasks_get_resolved_parameters_and_failures_skip_only_dependents(
    monkeypatch, graph, variables
) -> None:
    recorder = Recorder(failing={("order-pipeline-silver", "customers")})
    monkeypatch.setattr(workflow, "load_entry_point", recorder.load)
    outcomes = run_graph(
        graph,
        variables,
        {"as_of": "2026-01-01"},
        "R7",
        ["--data-root", "D"],
        progress=lambda _: None,
    )
    status = {o.key: o.status for o in outcomes}
    assert status == {
        "bronze_customers": "SUCCESS", "bronze_products": "SUCCESS", "bronze_orders": "SUCCESS",
        "bronze_line_items": "SUCCESS", "silver_customers": "FAILED", "silver_products": "SUCCESS",
        "silver_orders": "UPSTREAM_FAILED", "silver_line_items": "UPSTREAM_FAILED", "gold": "UPSTREAM_FAILED",
    }  # fmt: skip
    name, argv = recorder.calls[0]
    assert name == "order-pipeline-bronze"
    assert argv == [
        "--entity", "customers", "--catalog", "spark_catalog", "--schema", "lakehouse",
        "--landing-root", variables["landing_root"], "--checkpoint-root", variables["checkpoint_root"],
        "--full-refresh", "false", "--run-id", "R7", "--data-root", "D",
    ]  # fmt: skip


class Overlap:
    """Entry points that record which tasks were running at the same time."""

    def __init__(self, failing: str | None = None) -> None:
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.together: set[frozenset[str]] = set()
        self.started: list[str] = []
        self.failing = failing

    def load(self, name: str):
        def main(argv: list[str]) -> int:
            layer = name.removeprefix("order-pipeline-")
            key = f"{layer}_{argv[argv.index('--entity') + 1]}" if "--entity" in argv else layer
            with self.lock:
                self.started.append(key)
                self.together.update(frozenset({key, other}) for other in self.running)
                self.running.add(key)
            time.sleep(0.15)  # long enough for a parallel sibling to start
            with self.lock:
                self.running.discard(key)
            if key == self.failing:
                raise RuntimeError(f"boom in {key}")
            return 0

        return main


def test_parallel_runner_overlaps_only_independent_tasks(monkeypatch, graph, variables) -> None:
    overlap = Overlap(failing="silver_products")
    monkeypatch.setattr(workflow, "load_entry_point", overlap.load)
    outcomes = run_graph(
        graph,
        variables,
        {},
        "R10",
        [],
        progress=lambda _: None,
        parallel=2,
    )
    # outcomes in the graph's order, whatever order the threads finished in
    assert [o.key for o in outcomes] == [t.key for t in graph.ordered()]
    status = {o.key: o.status for o in outcomes}
    assert status["silver_products"] == "FAILED"
    assert status["silver_orders"] == "SUCCESS"  # does not need products
    assert status["silver_line_items"] == status["gold"] == "UPSTREAM_FAILED"
    assert overlap.together, "no two tasks ever ran at the same time with parallel=2"
    for pair in overlap.together:
        a, b = sorted(pair)
        assert a not in graph.tasks[b].depends_on and b not in graph.tasks[a].depends_on, pair
    assert frozenset({"bronze_customers", "bronze_products"}) in overlap.together


def test_one_task_and_job_parameters(monkeypatch, graph, variables) -> None:
    recorder = Recorder()
    monkeypatch.setattr(workflow, "load_entry_point", recorder.load)
    outcomes = run_graph(
        graph,
        variables,
        {"as_of": "2026-02-03", "full_refresh": "true"},
        "R8",
        [],
        only="gold",
        progress=lambda _: None,
    )
    assert [(o.key, o.status) for o in outcomes] == [("gold", "SUCCESS")]
    ((_, argv),) = recorder.calls
    assert argv[argv.index("--as-of") + 1] == "2026-02-03"
    assert argv[argv.index("--full-refresh") + 1] == "true"
    with pytest.raises(ConfigError, match="unknown job parameter"):
        run_graph(graph, variables, {"asof": "x"}, "R9", [], progress=lambda _: None)
    with pytest.raises(ConfigError, match="no task 'golden'"):
        run_graph(graph, variables, {}, "R9", [], only="golden", progress=lambda _: None)


def test_every_entry_point_of_the_graph_is_installed(graph) -> None:
    for task in graph.tasks.values():
        assert callable(workflow.load_entry_point(task.entry_point))
