"""`order-pipeline trigger`: start the deployed job on Databricks and follow the run.

Finds the job by name (a development deploy is named "[dev <user>] order-pipeline", so an
exact match is tried first, then a single name ending with the given one), calls run-now
with the job parameters, prints the run page URL, polls the run and prints a line whenever
the run or one of its tasks changes state, and ends with a table of every task's result and
duration. Authentication is the Databricks SDK's: DATABRICKS_HOST and DATABRICKS_TOKEN, a
profile in ~/.databrickscfg (--profile), or any other unified-auth method.

Exit codes: 0 the run succeeded (or was started with --no-wait), 1 the run failed, was
cancelled, skipped or timed out on Databricks, 2 the run could not be started or followed
(authentication, job not found or ambiguous, bad parameters), 3 we stopped waiting (the run
goes on), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.errors import DatabricksError, PermissionDenied, Unauthenticated
from databricks.sdk.service.jobs import (
    BaseJob,
    Run,
    RunLifeCycleState,
    RunLifecycleStateV2State,
    RunState,
    RunStatus,
    RunTask,
    TerminationCodeCode,
)

from order_pipeline.cli.arguments import add_parameters

DEFAULT_JOB_NAME = "order-pipeline"
DEFAULT_TIMEOUT_MINUTES = 120.0
DEFAULT_POLL_SECONDS = 10.0
# The SDK retries unreachable hosts and 429/503 answers for 5 minutes by default; a command
# line should say what is wrong sooner.
API_RETRY_SECONDS = 60

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_ERROR = 2
EXIT_STOPPED_WAITING = 3
EXIT_INTERRUPTED = 130

_TERMINAL_LIFE_CYCLE = {
    RunLifeCycleState.TERMINATED,
    RunLifeCycleState.SKIPPED,
    RunLifeCycleState.INTERNAL_ERROR,
}

Printer = Callable[[str], None]
# What a failed API call raises: the service's errors, or no answer (the SDK's TimeoutError
# after retrying, requests' connection errors). All are OSErrors, DatabricksError included.
_API_ERRORS = (DatabricksError, OSError)


class TriggerError(Exception):
    """The run could not be started or followed; the message says which step and why."""


def _print_error(message: str) -> None:
    print(message, file=sys.stderr)


# --- command line -----------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--job-name",
        default=DEFAULT_JOB_NAME,
        help="deployed job name; a dev deploy's '[dev <user>] NAME' is found too "
        f"(default: {DEFAULT_JOB_NAME})",
    )
    add_parameters(
        parser, "job parameter for this run, e.g. --param full_refresh=true (repeatable)"
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="start the run, print its URL and return"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_MINUTES,
        metavar="MINUTES",
        help=f"stop waiting after this many minutes (default: {DEFAULT_TIMEOUT_MINUTES:g}); "
        "the run itself goes on",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_SECONDS,
        metavar="SECONDS",
        help=f"seconds between status checks (default: {DEFAULT_POLL_SECONDS:g})",
    )
    parser.add_argument(
        "--profile", help="profile in ~/.databrickscfg (default: DATABRICKS_* environment)"
    )
    parser.add_argument("--host", help="workspace URL (default: DATABRICKS_HOST or the profile)")


def run_cli(args: argparse.Namespace) -> int:
    try:
        config = Config(
            profile=args.profile,
            host=args.host,
            product="order-pipeline",
            product_version=_version(),
            retry_timeout_seconds=API_RETRY_SECONDS,
        )
    except ValueError as exc:
        _print_error(
            f"error: could not configure Databricks authentication: {exc}\n"
            "Set DATABRICKS_HOST and DATABRICKS_TOKEN, or pass --profile."
        )
        return EXIT_ERROR
    return trigger_job(
        WorkspaceClient(config=config),
        args.job_name,
        dict(args.param),
        wait=not args.no_wait,
        timeout=timedelta(minutes=args.timeout),
        poll_interval=args.poll_interval,
    )


def _version() -> str:
    try:
        return importlib.metadata.version("order-pipeline")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


# --- trigger and follow -----------------------------------------------------------------


def trigger_job(
    client: WorkspaceClient,
    job_name: str = DEFAULT_JOB_NAME,
    params: Mapping[str, str] | None = None,
    wait: bool = True,
    timeout: timedelta = timedelta(minutes=DEFAULT_TIMEOUT_MINUTES),
    progress: Printer = print,
    *,
    poll_interval: float = DEFAULT_POLL_SECONDS,
    report_error: Printer = _print_error,
) -> int:
    """Start ``job_name`` with ``params`` as job parameters; follow it if ``wait``.

    Returns the exit code (see the module docstring). Progress goes to ``progress``,
    errors to ``report_error`` (stderr by default).
    """
    try:
        job = find_job(client, job_name)
        progress(f"job {_job_name(job)!r} (id {job.job_id})")
        run_id = start_run(client, job, dict(params or {}))
        run = _get_run(client, run_id)
        progress(f"run {run_id}: {run.run_page_url or '(no run page URL returned)'}")
        if not wait:
            return EXIT_OK
        return follow_run(client, run, timeout, progress, poll_interval)
    except TriggerError as exc:
        report_error(f"error: {exc}")
        return EXIT_ERROR


def find_job(client: WorkspaceClient, job_name: str) -> BaseJob:
    """The one job named ``job_name``, else the one job whose name ends with it."""
    exact = _list_jobs(client, job_name, name=job_name)
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        raise TriggerError(f"{len(exact)} jobs are named {job_name!r}: {_describe(exact)}")
    suffixed = [j for j in _list_jobs(client, job_name) if _job_name(j).endswith(job_name)]
    if len(suffixed) == 1:
        return suffixed[0]
    if suffixed:
        raise TriggerError(
            f"no job is named exactly {job_name!r} and {len(suffixed)} end with it: "
            f"{_describe(suffixed)}; pass the full name with --job-name"
        )
    raise TriggerError(
        f"no job named {job_name!r} (or ending with it) in {client.config.host}; "
        "deploy the bundle first (databricks bundle deploy) or check --job-name"
    )


def _list_jobs(client: WorkspaceClient, job_name: str, name: str | None = None) -> list[BaseJob]:
    what = f"jobs named {name!r}" if name else f"jobs to find one ending with {job_name!r}"
    try:
        return list(client.jobs.list(name=name, limit=100))
    except _API_ERRORS as exc:
        raise TriggerError(
            f"listing {what} at {client.config.host} failed: {_explain(exc)}"
        ) from exc


def start_run(client: WorkspaceClient, job: BaseJob, params: dict[str, str]) -> int:
    _check_params(job, params)
    try:
        waiter = client.jobs.run_now(job_id=job.job_id, job_parameters=params or None)
    except _API_ERRORS as exc:
        raise TriggerError(f"starting job {_job_name(job)!r} failed: {_explain(exc)}") from exc
    return waiter.response.run_id


def _check_params(job: BaseJob, params: Mapping[str, str]) -> None:
    declared = [p.name for p in (job.settings.parameters or [])] if job.settings else []
    unknown = sorted(set(params) - set(declared))
    if declared and unknown:
        raise TriggerError(
            f"job {_job_name(job)!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"it declares: {', '.join(declared)}"
        )


def _get_run(client: WorkspaceClient, run_id: int) -> Run:
    try:
        return client.jobs.get_run(run_id)
    except _API_ERRORS as exc:
        raise TriggerError(f"reading the state of run {run_id} failed: {_explain(exc)}") from exc


def follow_run(
    client: WorkspaceClient,
    run: Run,
    timeout: timedelta,
    progress: Printer = print,
    poll_interval: float = DEFAULT_POLL_SECONDS,
) -> int:
    """Poll ``run`` until it ends, printing state changes; then the task table."""
    started = time.monotonic()
    deadline = started + timeout.total_seconds()
    previous: dict[str, str] = {}
    try:
        while True:
            current = _snapshot(run)
            for line in _changes(previous, current):
                progress(f"[{_clock(time.monotonic() - started)}] {line}")
            previous = current
            if _is_finished(run.status, run.state):
                break
            if time.monotonic() >= deadline:
                progress(
                    f"stopped waiting after {_duration(timeout.total_seconds() * 1000)}; "
                    f"run {run.run_id} goes on: {run.run_page_url}"
                )
                return EXIT_STOPPED_WAITING
            time.sleep(poll_interval)
            run = _refresh(client, run)
    except KeyboardInterrupt:
        progress(f"interrupted; run {run.run_id} goes on: {run.run_page_url}")
        return EXIT_INTERRUPTED
    for line in summary_lines(run):
        progress(line)
    return EXIT_OK if _succeeded(run.status, run.state) else EXIT_RUN_FAILED


def _refresh(client: WorkspaceClient, run: Run) -> Run:
    try:
        return _get_run(client, run.run_id)
    except TriggerError as exc:
        raise TriggerError(f"{exc}; the run goes on: {run.run_page_url}") from exc


# --- run and task states ----------------------------------------------------------------

_RUN = ""  # snapshot key of the run itself (a task key is never empty)


def _snapshot(run: Run) -> dict[str, str]:
    """State label of the run and of each task, keyed by "run" and task key."""
    states = {_RUN: _state_label(run.status, run.state)}
    for task in run.tasks or []:
        states[task.task_key] = _state_label(task.status, task.state)
    return states


def _changes(previous: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """Lines for what changed: the run's new state before its tasks, or after them once
    the run has ended (so the last line is the run's end)."""
    lines = [
        f"  {key}: {label}"
        for key, label in current.items()
        if key != _RUN and previous.get(key) != label
    ]
    run_label = current[_RUN]
    if previous.get(_RUN) != run_label:
        ended = run_label.split()[0] in {"TERMINATED", *(s.value for s in _TERMINAL_LIFE_CYCLE)}
        lines = [*lines, f"run {run_label}"] if ended else [f"run {run_label}", *lines]
    return lines


def _state_label(status: RunStatus | None, state: RunState | None) -> str:
    """e.g. "QUEUED", "RUNNING", "TERMINATED SUCCESS", "TERMINATED FAILED"."""
    if status and status.state:
        label = status.state.value
        if status.state == RunLifecycleStateV2State.TERMINATED:
            return f"{label} {_result(status, state)}"
        return label
    if state and state.life_cycle_state:
        label = state.life_cycle_state.value
        return f"{label} {state.result_state.value}" if state.result_state else label
    return "UNKNOWN"


def _result(status: RunStatus | None, state: RunState | None) -> str:
    """The most specific result: the result state (UPSTREAM_FAILED, ...) or termination code."""
    if state and state.result_state:
        return state.result_state.value
    details = status.termination_details if status else None
    if details and details.code:
        return details.code.value
    if status and status.state == RunLifecycleStateV2State.TERMINATED:
        return "TERMINATED"
    return "-"


def _is_finished(status: RunStatus | None, state: RunState | None) -> bool:
    if status and status.state:
        return status.state == RunLifecycleStateV2State.TERMINATED
    return bool(state and state.life_cycle_state in _TERMINAL_LIFE_CYCLE)


def _succeeded(status: RunStatus | None, state: RunState | None) -> bool:
    details = status.termination_details if status else None
    if details and details.code:
        return details.code == TerminationCodeCode.SUCCESS
    return bool(state and state.result_state and state.result_state.value == "SUCCESS")


def _message(status: RunStatus | None, state: RunState | None) -> str:
    """Why the run ended: the (more specific) state message, else the termination message."""
    details = status.termination_details if status else None
    return (state.state_message if state else None) or (details.message if details else None) or ""


# --- summary ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskRow:
    task_key: str
    result: str
    duration: str


def task_rows(run: Run) -> list[TaskRow]:
    return [
        TaskRow(t.task_key, _result(t.status, t.state), _task_duration(t)) for t in run.tasks or []
    ]


def summary_lines(run: Run) -> list[str]:
    rows = task_rows(run)
    header = TaskRow("task", "result", "duration")
    key_width = max(len(r.task_key) for r in [header, *rows])
    result_width = max(len(r.result) for r in [header, *rows])
    lines = [""]
    for row in [header, *rows]:
        lines.append(f"{row.task_key:<{key_width}}  {row.result:<{result_width}}  {row.duration}")
    outcome = _result(run.status, run.state)
    elapsed = _duration(_run_duration_ms(run))
    lines.append("")
    lines.append(f"run {run.run_id} {outcome} in {elapsed}: {run.run_page_url}")
    message = _message(run.status, run.state)
    if message and not _succeeded(run.status, run.state):
        lines.append(message)
    return lines


def _task_duration(task: RunTask) -> str:
    if task.run_duration:
        return _duration(task.run_duration)
    phases = [task.setup_duration, task.execution_duration, task.cleanup_duration]
    if any(phases):
        return _duration(sum(p or 0 for p in phases))
    if task.start_time and task.end_time:
        return _duration(task.end_time - task.start_time)
    return "-"


def _run_duration_ms(run: Run) -> int | None:
    if run.run_duration:
        return run.run_duration
    if run.start_time and run.end_time:
        return run.end_time - run.start_time
    return None


def _duration(milliseconds: float | None) -> str:
    if milliseconds is None:
        return "-"
    seconds = round(milliseconds / 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


# --- naming -----------------------------------------------------------------------------


def _job_name(job: BaseJob) -> str:
    return (job.settings.name if job.settings else None) or ""


def _describe(jobs: list[BaseJob]) -> str:
    return ", ".join(f"{_job_name(j)!r} (id {j.job_id})" for j in jobs)


def _explain(exc: Exception) -> str:
    if isinstance(exc, Unauthenticated | PermissionDenied):
        return (
            f"not authorised: {exc}; check DATABRICKS_HOST and DATABRICKS_TOKEN (or --profile) "
            "and the job's permissions"
        )
    if isinstance(exc, DatabricksError):  # an OSError too, so first
        return f"{type(exc).__name__}: {exc}"
    return f"no answer from the workspace ({type(exc).__name__}: {exc}); check DATABRICKS_HOST"
