"""One run at a time per local data root, checked with real processes and real flocks.

A child Python process holds the lock (or is killed holding it); this process runs the
lock module, ``order-pipeline run`` (``cli.main``) and ``run_task`` against it. No Spark:
the refusals happen before any session starts, and where a run gets through, the job graph
(or the task's Spark side) is replaced by a stand-in that checks who holds the lock.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from order_pipeline.cli import main as cli
from order_pipeline.cli import runner
from order_pipeline.common.config import load_entities, load_profile
from order_pipeline.common.runlock import LOCK_FILE, RunLocked, data_root_lock, run_lock
from order_pipeline.jobs import task as task_module
from order_pipeline.jobs.task import TaskContext, TaskResult, run_task

HOLD = """
import sys, time
from order_pipeline.common.runlock import data_root_lock
with data_root_lock(sys.argv[1], command="holder-for-test", run_id="run-child",
                    progress=lambda _: None):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""

# exits 0 when it got the lock at once, 3 when refused
PROBE = """
import sys
from order_pipeline.common.runlock import RunLocked, data_root_lock
try:
    with data_root_lock(sys.argv[1], command="probe", progress=lambda _: None):
        pass
except RunLocked:
    sys.exit(3)
"""


@contextmanager
def child_holding(root: Path, seconds: float = 60) -> Iterator[subprocess.Popen[str]]:
    """A child process that holds ``root``'s lock for ``seconds`` (killed at the end)."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root), str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "locked\n", child.communicate()[1]
        yield child
    finally:
        child.kill()
        child.communicate()


def probe(root: Path) -> str:
    """Whether another process can take ``root``'s lock right now."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(root)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode in (0, 3), done.stderr
    return "free" if done.returncode == 0 else "held"


def local_context(root: Path) -> TaskContext:
    return TaskContext(
        profile=load_profile("local", root), entities=load_entities(), run_id="run-here"
    )


@pytest.fixture
def graph_stand_in(monkeypatch) -> list[dict[str, object]]:
    """Replace the job graph `run` would execute; record who held the lock while it ran."""
    calls: list[dict[str, object]] = []

    def run_graph(graph, variables, parameters, run_id, extra_args, **kwargs):
        root = Path(extra_args[extra_args.index("--data-root") + 1])
        calls.append({"lock_file": (root / LOCK_FILE).read_text(), "others": probe(root)})
        return []

    monkeypatch.setattr(runner, "run_graph", run_graph)
    return calls


def test_a_second_run_is_refused_at_once_naming_the_running_one(tmp_path, capsys) -> None:
    with child_holding(tmp_path) as child:
        started = time.monotonic()
        status = cli.main(["run", "--data-root", str(tmp_path)])
        seconds = time.monotonic() - started
    err = capsys.readouterr().err
    assert status == cli.EXIT_RUN_LOCKED == 75
    assert seconds < 5
    assert len(err.strip().splitlines()) == 1  # one line, no stack trace
    assert re.fullmatch(
        rf"error: another order-pipeline run holds {re.escape(str(tmp_path.resolve()))} "
        rf"\(pid {child.pid} on \S+, `holder-for-test`, run run-child, since "
        r"\d\d:\d\d:\d\d UTC\); wait for it or pass --wait SECONDS\n",
        err,
    ), err


def test_replay_and_demo_are_refused_too(tmp_path, capsys) -> None:
    with child_holding(tmp_path) as child:
        assert cli.main(["replay", "customers", "--data-root", str(tmp_path)]) == 75
        assert f"(pid {child.pid} on " in capsys.readouterr().err
        assert cli.main(["demo", "--data-root", str(tmp_path), "--scale", "0.0001"]) == 75
        assert f"(pid {child.pid} on " in capsys.readouterr().err
    assert not (tmp_path / "landing").exists()  # demo generated nothing


def test_with_wait_a_run_waits_for_the_running_one_then_proceeds(
    tmp_path, capsys, graph_stand_in
) -> None:
    with child_holding(tmp_path, seconds=2) as child:
        started = time.monotonic()
        status = cli.main(["run", "--wait", "10", "--data-root", str(tmp_path)])
        seconds = time.monotonic() - started
        assert child.wait(timeout=5) == 0  # it finished its 2 s; nobody killed it
    out = capsys.readouterr().out
    assert status == 0
    assert 1 < seconds < 8
    assert f"(pid {child.pid} on " in out
    assert "waiting up to 10s for it to finish" in out
    assert re.search(r"is free after \d+\.\ds; starting", out)
    [call] = graph_stand_in
    assert f'"pid": {os.getpid()}' in call["lock_file"]  # the graph ran holding the lock
    assert '"command": "order-pipeline run"' in call["lock_file"]
    assert call["others"] == "held"
    assert probe(tmp_path) == "free"  # and let it go afterwards


def test_waiting_gives_up_after_the_timeout(tmp_path, capsys) -> None:
    with child_holding(tmp_path) as child:
        started = time.monotonic()
        status = cli.main(["run", "--wait", "1", "--data-root", str(tmp_path)])
        seconds = time.monotonic() - started
    assert status == 75
    assert 1 <= seconds < 4
    err = capsys.readouterr().err
    assert f"(pid {child.pid} on " in err
    assert "and still did after waiting 1s" in err


def test_a_killed_holder_leaves_nothing_stuck(tmp_path, capsys, graph_stand_in) -> None:
    with child_holding(tmp_path) as child:
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert f'"pid": {child.pid}' in (tmp_path / LOCK_FILE).read_text()  # its name stays
        started = time.monotonic()
        status = cli.main(["run", "--data-root", str(tmp_path)])
        seconds = time.monotonic() - started
    out = capsys.readouterr().out
    assert status == 0
    assert seconds < 5
    assert f"the previous run on {tmp_path.resolve()} (pid {child.pid} on " in out
    assert "ended without releasing its lock (killed?)" in out
    assert len(graph_stand_in) == 1
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released cleanly this time


def test_the_process_holding_the_lock_reenters_it_from_task_threads(tmp_path, monkeypatch) -> None:
    """`run` holds the lock; its tasks run in threads and take it again through run_task
    (the task's Spark side replaced: this is about the lock)."""
    ran: list[str] = []

    class NoLakehouse:
        def __init__(self, spark, profile) -> None:
            pass

        def ensure(self, *args, **options) -> None:
            pass

        def append(self, *args) -> None:
            pass

    class NoSpark:
        def createDataFrame(self, *args) -> None:
            pass

    def body(spark, ctx) -> TaskResult:
        ran.append(probe(tmp_path))
        return TaskResult()

    def run_graph(graph, variables, parameters, run_id, extra_args, **kwargs):
        ctx = local_context(tmp_path)
        with ThreadPoolExecutor(2, thread_name_prefix="task") as pool:
            futures = [
                pool.submit(run_task, name, ctx, body, progress=lambda _: None)
                for name in ("bronze_customers", "bronze_orders")
            ]
            for future in futures:
                future.result()
        return []

    monkeypatch.setattr(task_module, "get_spark", lambda profile, app_name: NoSpark())
    monkeypatch.setattr(task_module, "Lakehouse", NoLakehouse)
    monkeypatch.setattr(runner, "run_graph", run_graph)
    assert cli.main(["run", "--data-root", str(tmp_path)]) == 0
    assert ran == ["held", "held"]  # both tasks ran, and no other process got in meanwhile
    assert probe(tmp_path) == "free"


def test_reentry_counts_and_releases_with_the_outermost(tmp_path) -> None:
    with data_root_lock(tmp_path, command="outer", progress=print):
        entered = threading.Event()
        leave = threading.Event()

        def task_thread() -> None:
            with data_root_lock(tmp_path, command="task", progress=print):
                entered.set()
                leave.wait(30)

        thread = threading.Thread(target=task_thread)
        thread.start()
        assert entered.wait(10)
        assert '"command": "outer"' in (tmp_path / LOCK_FILE).read_text()
        leave.set()
        thread.join()
        assert probe(tmp_path) == "held"  # the inner exit did not release the outer hold
    assert probe(tmp_path) == "free"


def test_tasks_starting_together_without_a_runner_do_not_refuse_each_other(tmp_path) -> None:
    """Threads of one process that take a free lock at the same moment (run_graph called
    without `run` holding it) must not refuse each other: 30 rounds of 8 at once."""
    threads = 8
    barrier = threading.Barrier(threads)

    def task(_: int) -> str:
        barrier.wait()
        with data_root_lock(tmp_path, command="task", progress=print):
            time.sleep(0.005)
            return "ran"

    with ThreadPoolExecutor(threads) as pool:
        for _ in range(30):
            assert list(pool.map(task, range(threads))) == ["ran"] * threads
    assert probe(tmp_path) == "free"


def test_a_task_on_its_own_is_refused_before_it_starts(tmp_path) -> None:
    def body(spark, ctx) -> TaskResult:
        raise AssertionError("the task ran while another run held the data root")

    with child_holding(tmp_path) as child, pytest.raises(RunLocked) as refused:
        run_task("silver_orders", local_context(tmp_path), body, progress=print)
    assert f"(pid {child.pid} on " in str(refused.value)
    assert str(refused.value).endswith("; wait for it to finish, then start this task again")


def test_a_task_console_script_exits_75_naming_the_holder(tmp_path, capsys) -> None:
    from order_pipeline.jobs import gold

    with child_holding(tmp_path) as child:
        status = gold.main(["--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 75
    assert err.startswith("error: another order-pipeline run holds ")
    assert f"(pid {child.pid} on " in err
    assert "Traceback" not in err


def test_databricks_takes_no_lock(tmp_path) -> None:
    profile = load_profile("databricks", tmp_path)
    with child_holding(tmp_path), run_lock(profile, command="databricks task"):
        pass  # max_concurrent_runs: 1 serializes the job there: nothing to refuse here
