"""`order-pipeline run --watch`: one process serving new files, idle polls that write nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from builders import customer, land

from order_pipeline.cli import main as cli
from order_pipeline.cli import watch as watching
from order_pipeline.common.delta_log import delta_log_version
from order_pipeline.common.inputs import Consumed
from order_pipeline.common.runlock import RunLocked
from order_pipeline.jobs.task import PENDING_RUNS, PendingTask


def pending(task: str, landing: str) -> PendingTask:
    return PendingTask(task, "moved: landing", {"landing": landing})


def test_the_loop_runs_only_for_pending_work_and_not_again_for_what_failed() -> None:
    # what each poll finds, in order; a RunLocked poll is another process holding the root
    polls = iter([
        [], [pending("bronze_orders", "a")],                  # run 1: fails
        [pending("bronze_orders", "a")], [],                  # same inputs: not again
        RunLocked(Path("/data"), None, "held by replay"), [pending("bronze_orders", "b")],  # run 2: succeeds
        [], [pending("gold", "x")],                           # run 3 (max_runs)
        [pending("never", "asked")],
    ])  # fmt: skip
    statuses = iter([1, 0, 0])
    said: list[str] = []

    def poll() -> list[PendingTask]:
        found = next(polls)
        if isinstance(found, Exception):
            raise found
        return found

    stop = watching.StopRequest()
    status, stats = watching.watch(poll, lambda: next(statuses), 0.0, 3, stop, said.append)
    assert (status, stats.runs, stats.failed_runs, stats.polls, stats.busy_polls) == (0, 3, 1, 8, 1)
    runs = [line.split(" ", 1)[1] for line in said if " run #" in line]
    assert runs == [
        "run #1: bronze_orders (moved: landing)",
        "run #2: bronze_orders (moved: landing)",
        "run #3: gold (moved: landing)",
    ]
    assert any(line.endswith("(holder not recorded yet); held by replay") for line in said), said
    assert "3 run(s), 1 failed; 8 poll(s)" in said[-1]


def test_a_stop_request_ends_the_watch_between_polls() -> None:
    stop = watching.StopRequest()
    polls = []

    def poll() -> list[PendingTask]:
        polls.append(1)
        if len(polls) == 3:
            stop.set()
        return []

    status, stats = watching.watch(poll, lambda: pytest.fail("nothing was pending"), 0.0,
                                   stop=stop, say=lambda line: None)  # fmt: skip
    assert (status, stats.runs, stats.polls) == (0, 0, 3)


def test_watch_ingests_files_landed_while_it_waits_and_idle_polls_write_nothing(
    spark, tmp_path: Path, monkeypatch, capsys
) -> None:
    root, landing = tmp_path, tmp_path / "landing"
    land(landing, "customers", [customer("C1")])
    stop = watching.StopRequest()
    monkeypatch.setattr(watching, "StopRequest", lambda: stop)
    argv = ["run", "--watch", "--task", "bronze_customers", "--interval", "0.2",
            "--max-runs", "2", "--param", "schema=watch_test", "--data-root", str(root)]  # fmt: skip
    outcome: list[int] = []
    watcher = threading.Thread(target=lambda: outcome.append(cli.main(argv)))
    watcher.start()
    try:
        consumed = Consumed.path(cli.local_context(str(root)).profile, "bronze_customers")
        pending_runs = root / "checkpoints" / PENDING_RUNS
        task_runs = root / "warehouse" / "watch_test" / "ops_task_runs"
        wait_until(consumed.is_file, 240, "the first run")
        # the run's record reaches ops_task_runs at its end
        wait_until(lambda: delta_log_version(task_runs) is not None and not pending_runs.exists(),
                   60, "the first run's record")  # fmt: skip
        first, version = consumed.read_bytes(), delta_log_version(task_runs)
        time.sleep(1.5)  # several idle polls: they must not run or record anything
        assert consumed.read_bytes() == first and not pending_runs.exists()
        assert delta_log_version(task_runs) == version
        land(landing, "customers", [customer("C2"), customer("C3")])
        watcher.join(240)
    finally:
        stop.set()
        watcher.join(60)
    assert outcome == [0]
    out = capsys.readouterr().out
    assert "run #2: bronze_customers (moved: landing)" in out, out
    [summary] = [line for line in out.splitlines() if "watch ended:" in line]
    polls = int(summary.split("; ")[1].split(" poll")[0])
    assert "2 run(s), 0 failed" in summary and polls >= 4, summary
    ids = spark.sql("SELECT customer_id FROM watch_test.bronze_customers").collect()
    assert sorted(r.customer_id for r in ids) == ["C1", "C2", "C3"]
    runs = spark.sql(
        "SELECT run_id, status, rows_in FROM watch_test.ops_task_runs ORDER BY started_at"
    ).collect()
    assert [(r.status, r.rows_in) for r in runs] == [("SUCCESS", 1), ("SUCCESS", 2)]
    assert runs[0].run_id != runs[1].run_id


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s")
        time.sleep(0.1)
