"""The job graph of resources/jobs.yml, read and run locally.

Databricks runs the bundle's job; ``order-pipeline run`` reads the very same file (tasks,
dependencies, entry points, parameters), resolves ``${var.*}`` and ``{{job.parameters.*}}``
from the local profile, and calls each task's entry point in dependency order, in this
process, so the local and the deployed workflow cannot drift apart.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml

from order_pipeline.common.config import ConfigError, Profile
from order_pipeline.jobs.task import PendingTask, pending_work, task_status

VAR_REF = re.compile(r"\$\{var\.([A-Za-z0-9_]+)\}")
DYNAMIC_REF = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")


@dataclass(frozen=True)
class Task:
    key: str
    entry_point: str
    parameters: tuple[str, ...]
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobGraph:
    name: str
    source: Path
    parameters: dict[str, str]
    tasks: dict[str, Task]

    def ordered(self) -> list[Task]:
        """Tasks in dependency order; among ready tasks, the file's order."""
        done: set[str] = set()
        ordered: list[Task] = []
        pending = list(self.tasks.values())
        while pending:
            ready = [t for t in pending if set(t.depends_on) <= done]
            if not ready:
                cycle = ", ".join(t.key for t in pending)
                raise ConfigError(self.source, "tasks", f"dependency cycle among {cycle}")
            task = ready[0]
            ordered.append(task)
            done.add(task.key)
            pending.remove(task)
        return ordered


def bundle_root() -> Path:
    """The folder with resources/jobs.yml: $ORDER_PIPELINE_BUNDLE_ROOT, else the repository
    this package is installed from (an editable install), else the package itself (the
    wheel carries resources/ as order_pipeline/resources)."""
    if env := os.environ.get("ORDER_PIPELINE_BUNDLE_ROOT"):
        return Path(env)
    here = Path(__file__).resolve()
    for candidate in (here.parents[2], here.parents[1]):
        if (candidate / "resources" / "jobs.yml").is_file():
            return candidate
    raise ConfigError(
        "resources/jobs.yml",
        "<file>",
        "not found beside the package; set ORDER_PIPELINE_BUNDLE_ROOT",
    )


def load_job_graph(root: Path | None = None, job_key: str = "order_pipeline") -> JobGraph:
    root = root or bundle_root()
    path = root / "resources" / "jobs.yml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(path, "<file>", str(exc)) from exc
    try:
        job = data["resources"]["jobs"][job_key]
    except (KeyError, TypeError):
        raise ConfigError(path, f"resources.jobs.{job_key}", "job not defined") from None
    tasks: dict[str, Task] = {}
    for index, spec in enumerate(job.get("tasks") or []):
        where = f"resources.jobs.{job_key}.tasks[{index}]"
        wheel = spec.get("python_wheel_task")
        if not wheel or "entry_point" not in wheel:
            raise ConfigError(
                path,
                f"{where}.python_wheel_task",
                "the local runner needs a python_wheel_task with an entry_point",
            )
        key = spec["task_key"]
        tasks[key] = Task(
            key=key,
            entry_point=wheel["entry_point"],
            parameters=tuple(str(p) for p in wheel.get("parameters") or ()),
            depends_on=tuple(d["task_key"] for d in spec.get("depends_on") or ()),
        )
    for task in tasks.values():
        for dep in task.depends_on:
            if dep not in tasks:
                raise ConfigError(path, f"tasks.{task.key}.depends_on", f"unknown task {dep!r}")
    parameters = {p["name"]: str(p.get("default", "")) for p in job.get("parameters") or ()}
    return JobGraph(name=job.get("name", job_key), source=path, parameters=parameters, tasks=tasks)


def bundle_variables(root: Path, profile: Profile) -> dict[str, str]:
    """databricks.yml variable defaults, with the local profile's values for the ones the
    profile knows (catalog, schema, landing and checkpoint roots)."""
    path = root / "databricks.yml"
    values: dict[str, str] = {}
    if path.is_file():
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for name, spec in (data.get("variables") or {}).items():
            default = spec.get("default") if isinstance(spec, dict) else spec
            if default is not None and not isinstance(default, (dict, list)):
                values[name] = str(default)
    values.update(
        catalog=profile.catalog,
        schema=profile.schema,
        landing_root=profile.landing_root,
        checkpoint_root=profile.checkpoint_root,
    )
    return values


def resolve(text: str, variables: dict[str, str], dynamic: dict[str, str], where: str) -> str:
    def var(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise ConfigError(
                where, f"${{var.{name}}}", "variable is not defined in databricks.yml"
            )
        return variables[name]

    def ref(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in dynamic:
            raise ConfigError(where, f"{{{{{name}}}}}", "reference cannot be resolved locally")
        return dynamic[name]

    # a job parameter default may itself use ${var.*}: resolve twice
    return VAR_REF.sub(var, DYNAMIC_REF.sub(ref, VAR_REF.sub(var, text)))


OK = ("SUCCESS", "SKIPPED")  # what lets the dependent tasks run


@dataclass
class TaskOutcome:
    key: str
    status: str  # SUCCESS, SKIPPED (nothing new), FAILED, UPSTREAM_FAILED
    seconds: float = 0.0
    error: str | None = None


def load_entry_point(name: str) -> Callable[[list[str]], Any]:
    found = entry_points(group="console_scripts", name=name)
    if not found:
        raise ConfigError(
            "pyproject.toml", f"project.scripts.{name}",
            "entry point named in resources/jobs.yml is not installed; run `make setup`",
        )  # fmt: skip
    return next(iter(found)).load()


def plan(
    graph: JobGraph,
    variables: dict[str, str],
    parameters: dict[str, str],
    run_id: str,
    extra_args: list[str],
    only: str | None = None,
) -> tuple[list[Task], Callable[[Task], list[str]]]:
    """The tasks to run (the graph, or one task), in dependency order, and how to build a
    task's arguments: its parameters with ``${var.*}`` and ``{{...}}`` resolved, resolved
    when asked so that a reference error stops a run just before the task that has it."""
    job_parameters = {
        name: resolve(default, variables, {}, f"{graph.source}: parameters.{name}")
        for name, default in graph.parameters.items()
    }
    job_parameters.update({k: v for k, v in parameters.items() if v is not None})
    unknown = set(parameters) - set(graph.parameters)
    if unknown:
        raise ConfigError(graph.source, "parameters", f"unknown job parameter(s) {sorted(unknown)}")
    if only is not None and only not in graph.tasks:
        raise ConfigError(graph.source, "tasks", f"no task {only!r}; tasks: {list(graph.tasks)}")
    dynamic = {f"job.parameters.{k}": v for k, v in job_parameters.items()}
    dynamic.update({"job.run_id": run_id, "job.name": graph.name})

    def argv_of(task: Task) -> list[str]:
        where = f"{graph.source}: tasks.{task.key}.parameters"
        values = {**dynamic, "task.name": task.key}
        return [resolve(p, variables, values, where) for p in task.parameters] + extra_args

    return [t for t in graph.ordered() if only is None or t.key == only], argv_of


def pending_tasks(
    graph: JobGraph,
    variables: dict[str, str],
    parameters: dict[str, str],
    extra_args: list[str],
    only: str | None = None,
) -> list[PendingTask]:
    """The tasks a run started now would not skip, with why, decided by each task's own
    entry point (``jobs.task.pending_work``): nothing runs, nothing is recorded, and on the
    local profile no Spark session is needed."""
    tasks, argv_of = plan(graph, variables, parameters, "{{job.run_id}}", extra_args, only)
    with pending_work() as found:
        for task in tasks:
            load_entry_point(task.entry_point)(argv_of(task))
    return list(found)


def run_graph(
    graph: JobGraph,
    variables: dict[str, str],
    parameters: dict[str, str],
    run_id: str,
    extra_args: list[str],
    only: str | None = None,
    progress: Callable[[str], None] = print,
    parallel: int = 1,
    on_done: Callable[[TaskOutcome], None] | None = None,
) -> list[TaskOutcome]:
    """Run the graph (or one task) in dependency order, up to ``parallel`` independent
    tasks at once (threads sharing the process's Spark session). A failed task marks its
    dependents UPSTREAM_FAILED, as Databricks does, and independent tasks still run.
    Outcomes come back in the graph's order whatever order the tasks finished in;
    ``on_done`` hears of each as it is decided (a progress bar advances on it)."""
    tasks, argv_of = plan(graph, variables, parameters, run_id, extra_args, only)
    selected = {t.key for t in tasks}
    position = {t.key: i for i, t in enumerate(tasks, start=1)}

    def execute(task: Task, argv: list[str]) -> TaskOutcome:
        started = time.monotonic()
        try:
            load_entry_point(task.entry_point)(argv)
        except Exception as exc:  # a task failure must not hide the rest of the graph
            error = f"{type(exc).__name__}: {exc}"
            progress(f"  {task.key} FAILED: {error}")
            return TaskOutcome(task.key, "FAILED", time.monotonic() - started, error)
        # a task that found nothing new ends well, as on Databricks, and says so here
        status = "SKIPPED" if task_status(run_id, task.key) == "SKIPPED" else "SUCCESS"
        return TaskOutcome(task.key, status, time.monotonic() - started)

    outcomes: dict[str, TaskOutcome] = {}
    pending = list(tasks)
    running: dict[Future[TaskOutcome], Task] = {}
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="task") as pool:
        while pending or running:
            for task in list(pending):
                upstream = [d for d in task.depends_on if d in selected]
                if any(d in outcomes and outcomes[d].status not in OK for d in upstream):
                    pending.remove(task)
                    outcomes[task.key] = TaskOutcome(task.key, "UPSTREAM_FAILED")
                    if on_done:
                        on_done(outcomes[task.key])
                    progress(
                        f"[{position[task.key]}/{len(tasks)}] {task.key}: skipped, an upstream "
                        "task failed"
                    )
                elif len(running) < parallel and all(d in outcomes for d in upstream):
                    pending.remove(task)
                    argv = argv_of(task)  # a reference error stops the run before this task
                    progress(f"[{position[task.key]}/{len(tasks)}] {task.key} ({task.entry_point})")
                    running[pool.submit(execute, task, argv)] = task
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                outcome = future.result()
                outcomes[outcome.key] = outcome
                del running[future]
                if on_done:
                    on_done(outcome)
    return [outcomes[t.key] for t in tasks]
