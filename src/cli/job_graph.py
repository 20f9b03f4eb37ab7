"""The job's tasks, generated from conf/pipeline.yml, the one statement of the entity graph.

Every entity gets a bronze task and a silver task; silver_<child> waits for bronze_<child>
and for silver_<parent> of each parent (its foreign keys are checked against the parent's
silver table); gold waits for the silver tasks of its inputs that no other input needs.
``order-pipeline job-graph --write`` rewrites the ``tasks:`` block of resources/jobs.yml
(everything after its marker line; the job's other settings stay hand-written), and
tests/test_bundle.py fails, showing the difference, when the file and conf/ disagree.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from order_pipeline.common.config import Entity, dependency_order
from order_pipeline.transforms.gold import GOLD_INPUTS

MARKER = "      # tasks: generated from conf/pipeline.yml by `order-pipeline job-graph --write`"
PACKAGE = "order_pipeline"
ENTRY_POINTS = {
    "bronze": "order-pipeline-bronze",
    "silver": "order-pipeline-silver",
    "gold": "order-pipeline-gold",
}
COMMON_PARAMETERS = [
    "--catalog", "{{job.parameters.catalog}}",
    "--schema", "{{job.parameters.schema}}",
    "--landing-root", "{{job.parameters.landing_root}}",
    "--checkpoint-root", "{{job.parameters.checkpoint_root}}",
    "--full-refresh", "{{job.parameters.full_refresh}}",
    "--run-id", "{{job.run_id}}",
]  # fmt: skip


def _task(key: str, layer: str, depends_on: list[str], parameters: list[str]) -> dict[str, Any]:
    task: dict[str, Any] = {"task_key": key}
    if depends_on:
        task["depends_on"] = [{"task_key": d} for d in depends_on]
    task["environment_key"] = "default"
    task["python_wheel_task"] = {
        "package_name": PACKAGE,
        "entry_point": ENTRY_POINTS[layer],
        "parameters": parameters,
    }
    return task


def ancestors(entities: dict[str, Entity], name: str) -> set[str]:
    found: set[str] = set()
    for parent in entities[name].parents.values():
        found |= {parent} | ancestors(entities, parent)
    return found


def job_tasks(entities: dict[str, Entity]) -> list[dict[str, Any]]:
    order = dependency_order(entities)
    tasks = [_task(f"bronze_{e}", "bronze", [], ["--entity", e, *COMMON_PARAMETERS]) for e in order]
    for e in order:
        parents = dict.fromkeys(entities[e].parents.values())
        needs = [f"bronze_{e}", *(f"silver_{p}" for p in parents)]
        tasks.append(_task(f"silver_{e}", "silver", needs, ["--entity", e, *COMMON_PARAMETERS]))
    inputs = [e for e in order if e in GOLD_INPUTS]
    needed = set().union(*(ancestors(entities, e) for e in inputs))
    gold_needs = [f"silver_{e}" for e in inputs if e not in needed]
    gold_parameters = [*COMMON_PARAMETERS, "--as-of", "{{job.parameters.as_of}}"]
    tasks.append(_task("gold", "gold", gold_needs, gold_parameters))
    return tasks


class _IndentedLists(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def render_tasks(entities: dict[str, Entity]) -> str:
    """The ``tasks:`` block of the job, as it sits in resources/jobs.yml."""
    body = yaml.dump(
        {"tasks": job_tasks(entities)},
        Dumper=_IndentedLists,
        sort_keys=False,
        default_flow_style=False,
        width=100,
    )
    indented = "".join(f"      {line}" if line.strip() else line for line in body.splitlines(True))
    return f"{MARKER}\n{indented}"


def tasks_block(text: str) -> tuple[str, str]:
    """resources/jobs.yml split at the marker: (hand-written head, generated tasks)."""
    head, marker, tail = text.partition(MARKER)
    if not marker:
        raise ValueError(f"resources/jobs.yml has no line {MARKER.strip()!r}")
    return head, marker + tail


def difference(jobs_yml: Path, entities: dict[str, Entity]) -> str:
    """A unified diff from the file's tasks to conf's; empty when they agree."""
    _, current = tasks_block(jobs_yml.read_text(encoding="utf-8"))
    wanted = render_tasks(entities)
    return "".join(
        difflib.unified_diff(
            current.splitlines(True),
            wanted.splitlines(True),
            f"{jobs_yml} (tasks)",
            "generated from conf/pipeline.yml",
        )
    )


def write(jobs_yml: Path, entities: dict[str, Entity]) -> bool:
    """Rewrite the tasks of ``jobs_yml`` from conf; True when the file changed."""
    text = jobs_yml.read_text(encoding="utf-8")
    head, current = tasks_block(text)
    wanted = render_tasks(entities)
    if current == wanted:
        return False
    jobs_yml.write_text(head + wanted, encoding="utf-8")
    return True
