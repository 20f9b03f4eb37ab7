"""`order-pipeline trigger`: start the deployed job on Databricks and follow the run.

Finds the job by name (a development deploy is named "[dev <user>] order-pipeline", so an
exact match is tried first, then a single name ending with the given one), calls run-now
with the job parameters, prints the run page URL, polls the run and prints a line whenever
the run or one of its tasks changes state, and ends with a table of every task's result and
duration. Authentication is the Databricks SDK's: DATABRICKS_HOST and DATABRICKS_TOKEN, a
profile in ~/.databrickscfg (--profile), or any other unified-auth method.

Every wait is bounded. Each HTTP request gets --request-timeout seconds (default 30).
Until the workspace has answered once, a refused connection, an unknown host name or a
request timing out ends the command at once, without the SDK's retries: a wrong host
or a dead network is reported in about one request timeout, not minutes. Signing in
(the SDK's configuration and credentials, some of whose requests have no timeout of their
own) gets twice the request timeout in all. Once the workspace has answered, the SDK
retries dropped connections, timed-out reads and 429/503 answers for up to
API_RETRY_SECONDS per call, and --timeout bounds following the run.

Exit codes: 0 the run succeeded (or was started with --no-wait), 1 the run failed, was
cancelled, skipped or timed out on Databricks, 2 the run could not be started or followed
(workspace unreachable or silent, authentication, job not found or ambiguous, bad
parameters), 3 we stopped waiting (the run goes on), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3.exceptions
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

from order_pipeline.cli.trigger_options import (  # noqa: F401 (the command line's, re-exported)
    DEFAULT_JOB_NAME,
    DEFAULT_POLL_SECONDS,
    DEFAULT_REQUEST_TIMEOUT_SECONDS,
    DEFAULT_TIMEOUT_MINUTES,
    SIGN_IN_REQUEST_TIMEOUTS,
    configure_parser,
)

# Once the workspace has answered, the SDK retries dropped connections, timed-out reads and
# 429/503 answers for 5 minutes by default; a command line should say what is wrong sooner.
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


_CHECK_HOST = (
    "check DATABRICKS_HOST (or the host of --profile) and the network (VPN, proxy, firewall)"
)


class TriggerError(Exception):
    """The run could not be started or followed; the message says which step and why."""


class WorkspaceUnreachable(ConnectionError):
    """No connection to the workspace could be made: refused, unknown host name, no route."""


class WorkspaceSilent(TimeoutError):
    """The workspace took no connection, or gave no answer, within the request timeout."""


def _print_error(message: str) -> None:
    print(message, file=sys.stderr)


# --- command line -----------------------------------------------------------------------


def run_cli(args: argparse.Namespace) -> int:
    try:
        client = connect(args.host, args.profile, args.request_timeout)
    except TriggerError as exc:
        _print_error(f"error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _print_error("interrupted while connecting; no run was started")
        return EXIT_INTERRUPTED
    return trigger_job(
        client,
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


# --- connecting -------------------------------------------------------------------------


def connect(host: str | None, profile: str | None, request_timeout: float) -> WorkspaceClient:
    """A signed-in client whose every request is bounded by ``request_timeout``.

    The SDK's configuration makes requests of its own (host metadata, and OAuth discovery
    and token requests, some without a timeout), so it runs in a daemon thread we stop
    waiting for after SIGN_IN_REQUEST_TIMEOUTS request timeouts, or as soon as the
    transport knows the workspace is unreachable or silent.
    """
    transport = _WorkspaceTransport(request_timeout)
    outcome: list[WorkspaceClient | Exception] = []

    def sign_in() -> None:
        # The SDK logs a warning when its host-metadata probe fails and carries on; when
        # that failure is the transport's, the error printed below says it better.
        sdk_log = logging.getLogger("databricks.sdk")
        sdk_log.addFilter(transport.is_news)
        try:
            config = Config(
                profile=profile,
                host=host,
                product="order-pipeline",
                product_version=_version(),
                http_timeout_seconds=request_timeout,
                retry_timeout_seconds=API_RETRY_SECONDS,
                http_adapter=transport,
            )
            config.authenticate()  # an OAuth token is fetched here, within the bound
            outcome.append(WorkspaceClient(config=config))
        except Exception as exc:
            outcome.append(exc)
        finally:
            sdk_log.removeFilter(transport.is_news)

    bound = SIGN_IN_REQUEST_TIMEOUTS * request_timeout
    thread = threading.Thread(target=sign_in, name="databricks-sign-in", daemon=True)
    thread.start()
    give_up_at = time.monotonic() + bound
    while thread.is_alive() and transport.failure is None and time.monotonic() < give_up_at:
        thread.join(0.05)

    where = transport.host or host or "the workspace"
    if transport.failure is not None:
        raise TriggerError(f"connecting to {where} failed: {transport.failure}")
    if not outcome:
        dropped = (
            f" (it closed the connection without an answer {transport.dropped} times)"
            if transport.dropped
            else ""
        )
        raise TriggerError(
            f"signing in to {where} did not finish within {bound:g} s{dropped}; {_CHECK_HOST}, "
            "and the credentials (DATABRICKS_* variables or the --profile)"
        )
    [result] = outcome
    if isinstance(result, ValueError):
        raise TriggerError(
            f"could not configure Databricks authentication: {result}\n"
            "Set DATABRICKS_HOST and DATABRICKS_TOKEN, or pass --profile."
        )
    if isinstance(result, Exception):
        raise TriggerError(f"signing in to {where} failed: {_explain(result)}") from result
    return result


class _WorkspaceTransport(requests.adapters.HTTPAdapter):
    """The SDK client's HTTP transport: until the workspace has answered once, a failed
    connection or a timeout is final (a WorkspaceUnreachable or WorkspaceSilent, which the
    SDK does not retry) and every later request fails with it at once.

    The SDK retries connection errors and timeouts for its whole retry budget, as it
    should for a workspace that glitches; for one that never answered, retrying a refused
    connection or another full timeout only delays the answer. A connection that is made
    and then dropped is still retried: proxies and endpoint protection do that to
    connections that are not authenticated yet.
    """

    def __init__(self, request_timeout: float) -> None:
        super().__init__()
        self.request_timeout = request_timeout
        self.host: str | None = None  # scheme://host[:port] of the first request
        self.answered = False
        self.failure: WorkspaceUnreachable | WorkspaceSilent | None = None
        self.dropped = 0  # connections made and closed without an answer, left to retry

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if self.answered:
            return super().send(request, *args, **kwargs)
        if self.host is None:
            url = urlsplit(request.url or "")
            self.host = f"{url.scheme}://{url.netloc}"
        if self.failure is not None:
            raise self.failure
        try:
            response = super().send(request, *args, **kwargs)
        except requests.ConnectTimeout as exc:
            self.failure = WorkspaceSilent(
                f"no connection within {self.request_timeout:g} s; {_CHECK_HOST}, or wait "
                "longer with --request-timeout"
            )
            raise self.failure from exc
        except requests.Timeout as exc:
            self.failure = WorkspaceSilent(
                f"connected, but no answer within {self.request_timeout:g} s; {_CHECK_HOST}, "
                "or wait longer with --request-timeout"
            )
            raise self.failure from exc
        except requests.exceptions.SSLError as exc:
            self.failure = WorkspaceUnreachable(
                f"TLS handshake failed ({_tls_problem(exc)}); {_CHECK_HOST}, and "
                "REQUESTS_CA_BUNDLE behind a proxy that inspects TLS"
            )
            raise self.failure from exc
        except requests.ConnectionError as exc:
            why = _why_no_connection(exc)
            if why is None:
                self.dropped += 1
                raise
            self.failure = WorkspaceUnreachable(f"{why}; {_CHECK_HOST}")
            raise self.failure from exc
        self.answered = True
        return response

    def is_news(self, record: logging.LogRecord) -> bool:
        """A logging filter: False for a record that repeats this transport's failure."""
        return self.failure is None or str(self.failure) not in record.getMessage()


def _why_no_connection(exc: requests.ConnectionError) -> str | None:
    """Why no connection was made at all ("connection refused", "host name not found",
    ...), or None when one was made and then dropped."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    via = ""
    if isinstance(reason, urllib3.exceptions.ProxyError):
        reason, via = reason.original_error, "proxy: "
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return f"{via}host name not found"
    if not isinstance(reason, urllib3.exceptions.NewConnectionError):
        return None
    cause = reason.__cause__ or reason.__context__
    if isinstance(cause, ConnectionRefusedError):
        return f"{via}connection refused"
    if isinstance(cause, OSError) and cause.strerror:
        return f"{via}{cause.strerror[0].lower()}{cause.strerror[1:]}"
    return f"{via}no connection"


def _tls_problem(exc: requests.exceptions.SSLError) -> str:
    """e.g. "certificate verify failed: self-signed certificate", "wrong version number"."""
    seen: Any = exc
    while seen is not None and not isinstance(seen, ssl.SSLError):
        seen = getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
    if seen is None:
        return str(exc)
    verify = getattr(seen, "verify_message", None)
    text = seen.reason.lower().replace("_", " ") if seen.reason else str(seen)
    return f"{text}: {verify}" if verify else text


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
        # run-now is a POST the SDK does not repeat after a timeout: it may have been done.
        maybe = (
            "" if isinstance(exc, DatabricksError) else "; the run may have started all the same"
        )
        raise TriggerError(
            f"starting job {_job_name(job)!r} failed: {_explain(exc)}{maybe}"
        ) from exc
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
            time.sleep(min(poll_interval, max(deadline - time.monotonic(), 0.0)))
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
    if isinstance(exc, WorkspaceUnreachable | WorkspaceSilent):
        return str(exc)  # says what happened and what to check
    return f"no answer from the workspace ({type(exc).__name__}: {exc}); {_CHECK_HOST}"
