"""A local stand-in for the Databricks Jobs API, for driving the real SDK in tests.

An ``http.server`` on 127.0.0.1 (random port, own thread) serving what
``WorkspaceClient(host=..., token=...)`` calls for ``order-pipeline trigger``, with the
request and response shapes of the real service (paths and fields as in
databricks-sdk ``service/jobs.py``):

* ``GET /.well-known/databricks-config``   host metadata the SDK probes on start-up
* ``GET /api/2.2/jobs/list``               ``name`` (exact, case-insensitive), ``limit``,
                                            ``page_token`` paging
* ``POST /api/2.2/jobs/run-now``           ``{"job_id", "job_parameters"}`` -> ``{"run_id", "number_in_job"}``
* ``GET /api/2.2/jobs/runs/get``           ``run_id`` -> the run with ``state``, ``status``
                                            and per-task ``tasks``

Errors carry the service's bodies: ``{"error_code": 403, "message": "Invalid access
token."}`` for a wrong token, ``INVALID_PARAMETER_VALUE`` "Job N does not exist." /
"Run N does not exist." (HTTP 400, which the SDK maps to ResourceDoesNotExist), and
``ENDPOINT_NOT_FOUND`` for anything else.

Each run follows a script, one step per ``runs/get`` call, so tests never sleep: first
PENDING; then tasks whose upstream tasks all succeeded run for one step and end with the
result scripted for them (SUCCESS unless listed as failing); tasks below a failure end
UPSTREAM_FAILED; when every task has ended the run is TERMINATED, SUCCESS or FAILED.
Every request is recorded in ``requests``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from loopback import LoopbackServer, Request

WORKSPACE_ID = "1234567890123456"
CREATOR = "alice@example.com"
EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: fixed, so durations are predictable
STEP_MS = 60_000  # every runs/get call moves the scripted run one minute on


RecordedRequest = Request


@dataclass
class StandInJob:
    job_id: int
    name: str
    tasks: dict[str, list[str]]  # task_key -> upstream task keys
    parameters: list[dict[str, str]] = field(default_factory=list)
    failing_tasks: set[str] = field(default_factory=set)

    def as_base_job(self) -> dict[str, Any]:
        """A ``jobs/list`` element (BaseJob)."""
        return {
            "job_id": self.job_id,
            "creator_user_name": CREATOR,
            "created_time": EPOCH_MS - 86_400_000,
            "settings": {
                "name": self.name,
                "format": "MULTI_TASK",
                "max_concurrent_runs": 1,
                "queue": {"enabled": True},
                "parameters": self.parameters,
            },
        }


@dataclass
class _TaskState:
    phase: str = "WAITING"  # WAITING (shown as PENDING or BLOCKED) -> RUNNING -> TERMINATED
    result: str | None = None  # SUCCESS, FAILED, UPSTREAM_FAILED
    start_ms: int | None = None
    end_ms: int | None = None


class ScriptedRun:
    """One run of a StandInJob that moves one step per ``runs/get``."""

    def __init__(self, run_id: int, job: StandInJob, params: dict[str, str], base_url: str):
        self.run_id = run_id
        self.job = job
        self.params = params
        self.base_url = base_url
        self.step = 0
        self.tasks = {key: _TaskState() for key in job.tasks}
        self.phase = "PENDING"

    # -- life cycle ---------------------------------------------------------------------

    def advance(self) -> None:
        self.step += 1
        now = self._now()
        self.phase = "RUNNING"
        for state in self.tasks.values():
            if state.phase == "RUNNING":
                state.phase, state.end_ms = "TERMINATED", now
        for key, state in self.tasks.items():
            if state.phase == "TERMINATED" and state.result is None:
                state.result = "FAILED" if key in self.job.failing_tasks else "SUCCESS"
        self._start_or_skip(now)
        if all(s.phase == "TERMINATED" for s in self.tasks.values()):
            self.phase = "TERMINATED"

    def _start_or_skip(self, now: int) -> None:
        for key, state in self.tasks.items():
            if state.phase != "WAITING":
                continue
            upstream = [self.tasks[u] for u in self.job.tasks[key]]
            if any(u.result in ("FAILED", "UPSTREAM_FAILED") for u in upstream):
                state.phase, state.result, state.end_ms = "TERMINATED", "UPSTREAM_FAILED", now
            elif all(u.result == "SUCCESS" for u in upstream):
                state.phase, state.start_ms = "RUNNING", now

    def _now(self) -> int:
        return EPOCH_MS + self.step * STEP_MS

    # -- JSON ---------------------------------------------------------------------------

    @property
    def failed(self) -> bool:
        return any(s.result in ("FAILED", "UPSTREAM_FAILED") for s in self.tasks.values())

    def as_json(self) -> dict[str, Any]:
        """A ``runs/get`` response (Run)."""
        body: dict[str, Any] = {
            "job_id": self.job.job_id,
            "run_id": self.run_id,
            "number_in_job": self.run_id,
            "run_name": self.job.name,
            "creator_user_name": CREATOR,
            "run_page_url": (
                f"{self.base_url}/jobs/{self.job.job_id}/runs/{self.run_id}?o={WORKSPACE_ID}"
            ),
            "run_type": "JOB_RUN",
            "trigger": "ONE_TIME",
            "format": "MULTI_TASK",
            "start_time": EPOCH_MS,
            "job_parameters": [
                {"name": p["name"], "default": p["default"], **self._value(p["name"])}
                for p in self.job.parameters
            ],
            "state": self._run_state(),
            "status": self._run_status(),
            "tasks": [self._task_json(key, state) for key, state in self.tasks.items()],
        }
        if self.phase == "TERMINATED":
            body["end_time"] = self._now()
            body["run_duration"] = self._now() - EPOCH_MS
        return body

    def _value(self, name: str) -> dict[str, str]:
        return {"value": self.params[name]} if name in self.params else {}

    def _run_state(self) -> dict[str, Any]:
        if self.phase != "TERMINATED":
            return {
                "life_cycle_state": self.phase,
                "state_message": "",
                "user_cancelled_or_timedout": False,
            }
        failed = [k for k, s in self.tasks.items() if s.result == "FAILED"]
        return {
            "life_cycle_state": "TERMINATED",
            "result_state": "FAILED" if self.failed else "SUCCESS",
            "state_message": (
                f"Task {failed[0]} failed with message: workload failed." if failed else ""
            ),
            "user_cancelled_or_timedout": False,
        }

    def _run_status(self) -> dict[str, Any]:
        if self.phase != "TERMINATED":
            return {"state": self.phase}
        if self.failed:
            details = {
                "code": "RUN_EXECUTION_ERROR",
                "type": "CLIENT_ERROR",
                "message": "Workload failed, see run output for details",
            }
        else:
            details = {"code": "SUCCESS", "type": "SUCCESS", "message": ""}
        return {"state": "TERMINATED", "termination_details": details}

    def _task_json(self, key: str, state: _TaskState) -> dict[str, Any]:
        upstream = self.job.tasks[key]
        phase = state.phase
        if phase == "WAITING":
            phase = "BLOCKED" if upstream else "PENDING"
        task: dict[str, Any] = {
            "task_key": key,
            "run_id": self.run_id * 100 + list(self.tasks).index(key),
            "depends_on": [{"task_key": u} for u in upstream],
            "environment_key": "default",
            "attempt_number": 0,
            "start_time": state.start_ms or 0,
            "setup_duration": 0,
            "execution_duration": 0,
            "cleanup_duration": 0,
            "end_time": 0,
            "state": _legacy_task_state(phase, state.result),
            "status": _task_status(phase, state.result),
        }
        if state.end_ms is not None:
            task["end_time"] = state.end_ms
            if state.start_ms is not None:
                task["execution_duration"] = state.end_ms - state.start_ms
                task["run_duration"] = state.end_ms - state.start_ms
        return task


def _legacy_task_state(phase: str, result: str | None) -> dict[str, Any]:
    if phase != "TERMINATED":
        return {"life_cycle_state": phase, "state_message": "", "user_cancelled_or_timedout": False}
    skipped = result == "UPSTREAM_FAILED"
    return {
        "life_cycle_state": "SKIPPED" if skipped else "TERMINATED",
        "result_state": result,
        "state_message": "Upstream task(s) failed." if skipped else "",
        "user_cancelled_or_timedout": False,
    }


def _task_status(phase: str, result: str | None) -> dict[str, Any]:
    if phase != "TERMINATED":
        return {"state": phase}
    details = {
        "SUCCESS": {"code": "SUCCESS", "type": "SUCCESS", "message": ""},
        "FAILED": {
            "code": "RUN_EXECUTION_ERROR",
            "type": "CLIENT_ERROR",
            "message": "Workload failed, see run output for details",
        },
        "UPSTREAM_FAILED": {
            "code": "SKIPPED",
            "type": "CLIENT_ERROR",
            "message": "Upstream task(s) failed.",
        },
    }[result or "SUCCESS"]
    return {"state": "TERMINATED", "termination_details": details}


class ApiError(Exception):
    def __init__(self, status: int, error_code: str | int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error_code": error_code, "message": message}


class JobsApiStandIn(LoopbackServer):
    """Start with ``with JobsApiStandIn() as api:``; point the SDK at ``api.url``."""

    def __init__(self, token: str = "x", page_size_cap: int = 100) -> None:
        self.token = token
        self.page_size_cap = page_size_cap
        # After this many authenticated API calls the token stops working (it expired).
        self.token_expires_after: int | None = None
        self._authenticated_calls = 0
        self.jobs: dict[int, StandInJob] = {}
        self.runs: dict[int, ScriptedRun] = {}
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._next_run_id = 700_000_000
        self._start_server()

    # -- scripting ----------------------------------------------------------------------

    def add_job(
        self,
        name: str,
        tasks: dict[str, list[str]],
        parameters: list[dict[str, str]] | None = None,
        failing_tasks: set[str] | None = None,
    ) -> StandInJob:
        job = StandInJob(
            job_id=1000 + len(self.jobs) + 1,
            name=name,
            tasks=tasks,
            parameters=parameters or [],
            failing_tasks=failing_tasks or set(),
        )
        self.jobs[job.job_id] = job
        return job

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path == path]

    # -- endpoints ----------------------------------------------------------------------

    def respond(self, request: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        status, body = self.handle(request)
        return status, body, {}

    def handle(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(request)
            route = (request.method, request.path)
            if route == ("GET", "/.well-known/databricks-config"):
                return HTTPStatus.OK, self._host_metadata()
            try:
                self._authenticate(request)
                if route == ("GET", "/api/2.2/jobs/list"):
                    return HTTPStatus.OK, self._list_jobs(request.query)
                if route == ("POST", "/api/2.2/jobs/run-now"):
                    return HTTPStatus.OK, self._run_now(request.body or {})
                if route == ("GET", "/api/2.2/jobs/runs/get"):
                    return HTTPStatus.OK, self._get_run(request.query)
                raise ApiError(
                    HTTPStatus.NOT_FOUND,
                    "ENDPOINT_NOT_FOUND",
                    f"No API found for '{request.method} {request.path.removeprefix('/api/2.2')}'",
                )
            except ApiError as exc:
                return exc.status, exc.body

    def _host_metadata(self) -> dict[str, Any]:
        return {"oidc_endpoint": f"{self.url}/oidc", "workspace_id": WORKSPACE_ID}

    def _authenticate(self, request: RecordedRequest) -> None:
        header = request.headers.get("Authorization", "")
        if not header:
            raise ApiError(
                HTTPStatus.UNAUTHORIZED,
                401,
                "Credential was not sent or was of an unsupported type for this API.",
            )
        expired = (
            self.token_expires_after is not None
            and self._authenticated_calls >= self.token_expires_after
        )
        if header != f"Bearer {self.token}" or expired:
            raise ApiError(HTTPStatus.FORBIDDEN, 403, "Invalid access token.")
        self._authenticated_calls += 1

    def _list_jobs(self, query: dict[str, list[str]]) -> dict[str, Any]:
        name = _one(query, "name")
        limit = min(int(_one(query, "limit") or 20), self.page_size_cap)
        if not 0 < limit <= 100:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, "INVALID_PARAMETER_VALUE", "limit must be in [1, 100]"
            )
        jobs = [j for j in self.jobs.values() if name is None or j.name.lower() == name.lower()]
        offset = int(_one(query, "page_token") or 0)
        page = jobs[offset : offset + limit]
        body: dict[str, Any] = {"has_more": offset + limit < len(jobs)}
        if page:
            body["jobs"] = [j.as_base_job() for j in page]
        if body["has_more"]:
            body["next_page_token"] = str(offset + limit)
        return body

    def _run_now(self, body: dict[str, Any]) -> dict[str, Any]:
        job = self.jobs.get(body.get("job_id"))  # type: ignore[arg-type]
        if job is None:
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                "INVALID_PARAMETER_VALUE",
                f"Job {body.get('job_id')} does not exist.",
            )
        self._next_run_id += 1
        run_id = self._next_run_id
        params = dict(body.get("job_parameters") or {})
        self.runs[run_id] = ScriptedRun(run_id, job, params, self.url)
        return {"run_id": run_id, "number_in_job": run_id}

    def _get_run(self, query: dict[str, list[str]]) -> dict[str, Any]:
        run_id = int(_one(query, "run_id") or 0)
        run = self.runs.get(run_id)
        if run is None:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, "INVALID_PARAMETER_VALUE", f"Run {run_id} does not exist."
            )
        body = run.as_json()
        if run.phase != "TERMINATED":
            run.advance()
        return body


def _one(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None
