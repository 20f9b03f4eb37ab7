"""`order-pipeline trigger` against a local Jobs API stand-in, through the real SDK client.

The stand-in job has the task graph and parameter names of resources/jobs.yml, named as a
development deploy names it ("[dev alice] order-pipeline"). Expected output is written
out here from the stand-in's script (every task runs for exactly one step = one minute).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import yaml
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from jobs_api_standin import JobsApiStandIn, RecordedRequest, StandInJob

from order_pipeline.cli.trigger import (
    DEFAULT_REQUEST_TIMEOUT_SECONDS,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_RUN_FAILED,
    EXIT_STOPPED_WAITING,
    configure_parser,
    run_cli,
    trigger_job,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_NAME = "[dev alice] order-pipeline"
DEPLOYED_DEFAULTS = {
    "catalog": "main",
    "schema": "order_pipeline_alice",
    "landing_root": "/Volumes/main/order_pipeline_alice/landing",
    "checkpoint_root": "/Volumes/main/order_pipeline_alice/checkpoints",
    "full_refresh": "false",
    "as_of": "",
}


def _bundle_job() -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """Task graph and parameters of the job in resources/jobs.yml, as deployed to dev."""
    spec = yaml.safe_load((REPO_ROOT / "resources" / "jobs.yml").read_text(encoding="utf-8"))
    job = spec["resources"]["jobs"]["order_pipeline"]
    tasks = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in job["tasks"]}
    parameters = [
        {"name": p["name"], "default": DEPLOYED_DEFAULTS[p["name"]]} for p in job["parameters"]
    ]
    return tasks, parameters


TASKS, PARAMETERS = _bundle_job()


@pytest.fixture(autouse=True)
def isolated_databricks_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DATABRICKS_* variables or ~/.databrickscfg of the machine running the tests."""
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no.databrickscfg"))


@pytest.fixture
def api() -> Iterator[JobsApiStandIn]:
    with JobsApiStandIn(token="x") as standin:
        yield standin


def _client(api: JobsApiStandIn, token: str = "x") -> WorkspaceClient:
    return WorkspaceClient(host=api.url, token=token)


def _add_dev_job(api: JobsApiStandIn, failing: set[str] | None = None) -> StandInJob:
    return api.add_job(DEV_NAME, TASKS, PARAMETERS, failing_tasks=failing)


def _trigger(api: JobsApiStandIn, **kwargs: object) -> tuple[int, list[str], list[str]]:
    out: list[str] = []
    errors: list[str] = []
    options: dict[str, object] = {
        "job_name": "order-pipeline",
        "params": {},
        "wait": True,
        "timeout": timedelta(minutes=5),
        "poll_interval": 0.0,
        **kwargs,
    }
    client = options.pop("client", None) or _client(api)
    code = trigger_job(client, progress=out.append, report_error=errors.append, **options)  # type: ignore[arg-type]
    return code, out, errors


def _table(out: list[str]) -> dict[str, tuple[str, str]]:
    """task -> (result, duration) from the summary table."""
    header = out.index(next(line for line in out if re.match(r"^task\s+result\s+duration$", line)))
    rows = {}
    for line in out[header + 1 :]:
        if not line:
            break
        key, result, duration = re.split(r"\s{2,}", line)
        rows[key] = (result, duration)
    return rows


# --- success -----------------------------------------------------------------------------


def test_success_runs_the_dev_job_with_the_given_parameters(api: JobsApiStandIn) -> None:
    job = _add_dev_job(api)

    code, out, errors = _trigger(api, params={"full_refresh": "true", "as_of": "2026-01-31"})

    assert (code, errors) == (EXIT_OK, [])
    [run_now] = api.requests_to("POST", "/api/2.2/jobs/run-now")
    assert run_now.body == {
        "job_id": job.job_id,
        "job_parameters": {"full_refresh": "true", "as_of": "2026-01-31"},
    }
    assert run_now.headers["Authorization"] == "Bearer x"
    [run_id] = api.runs
    url = f"{api.url}/jobs/{job.job_id}/runs/{run_id}?o=1234567890123456"
    assert f"run {run_id}: {url}" in out
    assert out[-1] == f"run {run_id} SUCCESS in 6m 00s: {url}"


def test_success_reports_every_task_with_result_and_duration(api: JobsApiStandIn) -> None:
    _add_dev_job(api)

    code, out, _ = _trigger(api)

    assert code == EXIT_OK
    assert _table(out) == {key: ("SUCCESS", "1m 00s") for key in TASKS}


def test_progress_lines_follow_the_run_life_cycle(api: JobsApiStandIn) -> None:
    _add_dev_job(api)

    _, out, _ = _trigger(api)

    run_lines = [
        re.sub(r"^\[\d\d:\d\d\] ", "", line)
        for line in out
        if re.match(r"^\[\d\d:\d\d\] run ", line)
    ]
    assert run_lines == ["run PENDING", "run RUNNING", "run TERMINATED SUCCESS"]
    gold = [line.split("] ", 1)[1] for line in out if re.match(r"^\[\d\d:\d\d\]\s+gold: ", line)]
    assert gold == ["  gold: BLOCKED", "  gold: RUNNING", "  gold: TERMINATED SUCCESS"]


def test_job_is_found_by_dev_prefix_only_after_an_exact_search(api: JobsApiStandIn) -> None:
    _add_dev_job(api)

    _trigger(api)

    lists = api.requests_to("GET", "/api/2.2/jobs/list")
    assert [r.query.get("name") for r in lists] == [["order-pipeline"], None]


def test_an_exactly_named_job_wins_over_a_dev_copy(api: JobsApiStandIn) -> None:
    _add_dev_job(api)
    prod = api.add_job("order-pipeline", TASKS, PARAMETERS)

    code, _, _ = _trigger(api)

    assert code == EXIT_OK
    [run_now] = api.requests_to("POST", "/api/2.2/jobs/run-now")
    assert run_now.body == {"job_id": prod.job_id}


def test_jobs_are_searched_across_pages(api: JobsApiStandIn) -> None:
    api.page_size_cap = 2
    for n in range(5):
        api.add_job(f"other-job-{n}", {"t": []})
    job = _add_dev_job(api)

    code, _, _ = _trigger(api)

    assert code == EXIT_OK
    [run_now] = api.requests_to("POST", "/api/2.2/jobs/run-now")
    assert run_now.body == {"job_id": job.job_id}
    assert len(api.requests_to("GET", "/api/2.2/jobs/list")) == 1 + 3


def test_no_wait_returns_after_printing_the_url(api: JobsApiStandIn) -> None:
    _add_dev_job(api)

    code, out, _ = _trigger(api, wait=False)

    assert code == EXIT_OK
    assert len(api.requests_to("GET", "/api/2.2/jobs/runs/get")) == 1
    assert any("/runs/" in line for line in out)


# --- failure -----------------------------------------------------------------------------


def test_a_failed_task_fails_the_command_and_skips_downstream(api: JobsApiStandIn) -> None:
    _add_dev_job(api, failing={"silver_orders"})

    code, out, _ = _trigger(api)

    assert code == EXIT_RUN_FAILED
    table = _table(out)
    assert table["silver_orders"] == ("FAILED", "1m 00s")
    assert table["silver_line_items"] == ("UPSTREAM_FAILED", "-")
    assert table["gold"] == ("UPSTREAM_FAILED", "-")
    assert {k for k, (result, _) in table.items() if result == "SUCCESS"} == set(TASKS) - {
        "silver_orders",
        "silver_line_items",
        "gold",
    }
    assert "FAILED in" in out[-2]
    assert out[-1] == "Task silver_orders failed with message: workload failed."


def test_stopping_to_wait_is_its_own_exit_code(api: JobsApiStandIn) -> None:
    _add_dev_job(api)

    code, out, _ = _trigger(api, timeout=timedelta(0))

    assert code == EXIT_STOPPED_WAITING
    assert out[-1].startswith("stopped waiting after 0s; run ")


# --- errors ------------------------------------------------------------------------------


def test_job_not_found_is_a_clear_error(api: JobsApiStandIn) -> None:
    api.add_job("some-other-job", {"t": []})

    code, _, errors = _trigger(api)

    assert code == EXIT_ERROR
    assert errors == [
        f"error: no job named 'order-pipeline' (or ending with it) in {api.url}; deploy the "
        "bundle first (databricks bundle deploy) or check --job-name"
    ]
    assert api.requests_to("POST", "/api/2.2/jobs/run-now") == []


def test_two_dev_copies_are_ambiguous(api: JobsApiStandIn) -> None:
    alice = _add_dev_job(api)
    bob = api.add_job("[dev bob] order-pipeline", TASKS, PARAMETERS)

    code, _, errors = _trigger(api)

    assert code == EXIT_ERROR
    assert errors == [
        "error: no job is named exactly 'order-pipeline' and 2 end with it: "
        f"'[dev alice] order-pipeline' (id {alice.job_id}), "
        f"'[dev bob] order-pipeline' (id {bob.job_id}); pass the full name with --job-name"
    ]
    assert api.requests_to("POST", "/api/2.2/jobs/run-now") == []


def test_two_jobs_with_the_same_name_are_ambiguous(api: JobsApiStandIn) -> None:
    first = api.add_job("order-pipeline", TASKS, PARAMETERS)
    second = api.add_job("Order-Pipeline", TASKS, PARAMETERS)

    code, _, errors = _trigger(api)

    assert code == EXIT_ERROR
    assert errors == [
        "error: 2 jobs are named 'order-pipeline': "
        f"'order-pipeline' (id {first.job_id}), 'Order-Pipeline' (id {second.job_id})"
    ]


def test_a_bad_token_names_the_step_and_the_cause(api: JobsApiStandIn) -> None:
    _add_dev_job(api)

    code, _, errors = _trigger(api, client=_client(api, token="wrong"))

    assert code == EXIT_ERROR
    [error] = errors
    assert error.startswith(f"error: listing jobs named 'order-pipeline' at {api.url} failed: ")
    assert "not authorised: Invalid access token." in error


def test_losing_access_while_following_keeps_the_run_url(api: JobsApiStandIn) -> None:
    _add_dev_job(api)
    api.token_expires_after = 4  # list, list, run-now, first runs/get

    code, _, errors = _trigger(api)

    assert code == EXIT_ERROR
    [run_id] = api.runs
    [error] = errors
    assert error.startswith(f"error: reading the state of run {run_id} failed: not authorised: ")
    assert error.endswith(
        f"; the run goes on: {api.url}/jobs/1001/runs/{run_id}?o=1234567890123456"
    )


def test_an_unreachable_workspace_is_named(api: JobsApiStandIn) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    config = Config(host=f"http://127.0.0.1:{closed_port}", token="x", retry_timeout_seconds=1)

    code, _, errors = _trigger(api, client=WorkspaceClient(config=config))

    assert code == EXIT_ERROR
    [error] = errors
    assert error.startswith("error: listing jobs named 'order-pipeline' at http://127.0.0.1:")
    assert "no answer from the workspace" in error


def test_an_unknown_parameter_is_refused_before_starting(api: JobsApiStandIn) -> None:
    _add_dev_job(api)

    code, _, errors = _trigger(api, params={"fullrefresh": "true"})

    assert code == EXIT_ERROR
    assert errors == [
        f"error: job '{DEV_NAME}' has no parameter 'fullrefresh'; it declares: "
        "catalog, schema, landing_root, checkpoint_root, full_refresh, as_of"
    ]
    assert api.requests_to("POST", "/api/2.2/jobs/run-now") == []


# --- command line ------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="order-pipeline trigger")
    configure_parser(parser)
    return parser.parse_args(argv)


def test_parser_collects_repeated_params() -> None:
    args = _parse(["--param", "full_refresh=true", "--param", "as_of=2026-01-31T00:00:00Z=x"])

    assert dict(args.param) == {"full_refresh": "true", "as_of": "2026-01-31T00:00:00Z=x"}
    assert (args.job_name, args.no_wait, args.timeout) == ("order-pipeline", False, 120.0)


def test_parser_rejects_a_param_without_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(["--param", "full_refresh"])

    assert "expected KEY=VALUE, got 'full_refresh'" in capsys.readouterr().err


def test_cli_uses_the_sdk_environment_configuration(
    api: JobsApiStandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _add_dev_job(api)
    monkeypatch.setenv("DATABRICKS_HOST", api.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", "x")

    code = run_cli(_parse(["--param", "full_refresh=true", "--poll-interval", "0"]))

    assert code == EXIT_OK
    assert "SUCCESS in 6m 00s" in capsys.readouterr().out


def test_cli_without_credentials_says_how_to_configure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = run_cli(_parse([]))

    assert code == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: could not configure Databricks authentication: ")
    assert "Set DATABRICKS_HOST and DATABRICKS_TOKEN, or pass --profile." in err


# --- hostile network: every wait is bounded ----------------------------------------------

CHECK_HOST = (
    "check DATABRICKS_HOST (or the host of --profile) and the network (VPN, proxy, firewall)"
)


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._held.append(connection)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for connection in [*self._held, self._listener]:
            connection.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_cli_timed(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, float]:
    started = time.monotonic()
    code = run_cli(_parse(argv))
    elapsed = time.monotonic() - started
    return code, capsys.readouterr().err, elapsed


def test_a_closed_port_fails_at_once_naming_the_host(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("DATABRICKS_HOST", host)
    monkeypatch.setenv("DATABRICKS_TOKEN", "x")

    code, err, elapsed = _run_cli_timed([], capsys)  # the default request timeout of 30 s

    print(f"closed port: exit {code} after {elapsed:.2f} s")
    assert code == EXIT_ERROR
    assert err == f"error: connecting to {host} failed: connection refused; {CHECK_HOST}\n"
    assert elapsed < 5
    # The SDK's own warning about the failed host-metadata probe would only repeat it.
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


def test_a_server_that_never_answers_fails_after_the_request_timeout(
    silent: SilentServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABRICKS_HOST", silent.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", "x")

    code, err, elapsed = _run_cli_timed(["--request-timeout", "1"], capsys)

    print(f"silent server: exit {code} after {elapsed:.2f} s, {silent.connections} connection(s)")
    assert code == EXIT_ERROR
    assert err == (
        f"error: connecting to {silent.url} failed: connected, but no answer within 1 s; "
        f"{CHECK_HOST}, or wait longer with --request-timeout\n"
    )
    assert 1 <= elapsed < 15
    assert silent.connections == 1  # no retries once it kept silent


class _StandInWithTokenEndpoint(JobsApiStandIn):
    """The stand-in, also serving the OIDC discovery document of an OAuth sign-in, whose
    token endpoint is ``token_endpoint``."""

    def __init__(self, token_endpoint: str) -> None:
        super().__init__()
        self.token_endpoint = token_endpoint

    def handle(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        if (request.method, request.path) == (
            "GET",
            "/oidc/.well-known/oauth-authorization-server",
        ):
            return HTTPStatus.OK, {
                "authorization_endpoint": f"{self.url}/oidc/v1/authorize",
                "token_endpoint": self.token_endpoint,
            }
        return super().handle(request)


def test_signing_in_is_bounded_when_the_token_endpoint_never_answers(
    silent: SilentServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The SDK requests OAuth tokens with no timeout at all: only the sign-in bound ends it."""
    with _StandInWithTokenEndpoint(token_endpoint=f"{silent.url}/oidc/v1/token") as api:
        _add_dev_job(api)
        monkeypatch.setenv("DATABRICKS_HOST", api.url)
        monkeypatch.setenv("DATABRICKS_CLIENT_ID", "order-pipeline-ci")
        monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", "secret")

        code, err, elapsed = _run_cli_timed(["--request-timeout", "1"], capsys)

        print(f"silent token endpoint: exit {code} after {elapsed:.2f} s")
        assert code == EXIT_ERROR
        assert err == (
            f"error: signing in to {api.url} did not finish within 2 s; {CHECK_HOST}, and the "
            "credentials (DATABRICKS_* variables or the --profile)\n"
        )
        assert 2 <= elapsed < 15
        assert silent.connections == 1
        assert api.requests_to("GET", "/api/2.2/jobs/list") == []


def test_request_timeout_defaults_to_30_seconds_and_must_be_positive(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _parse([]).request_timeout == DEFAULT_REQUEST_TIMEOUT_SECONDS == 30.0
    assert _parse(["--request-timeout", "2.5"]).request_timeout == 2.5
    for bad in ["0", "-1", "soon"]:
        with pytest.raises(SystemExit):
            _parse(["--request-timeout", bad])
        assert f"expected a number of seconds above 0, got '{bad}'" in capsys.readouterr().err
