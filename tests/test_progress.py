"""Progress of the long commands: a bar in a terminal, plain lines anywhere else.

No Spark here: the bar and the lines of ``generate`` and of the progress module itself.
``run``'s plain lines are asserted in tests/test_cli.py, on the runs its fixture makes.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from order_pipeline.cli import generate as generate_job
from order_pipeline.cli import main as cli
from order_pipeline.cli.display import print_table
from order_pipeline.cli.progress import PlainProgress, progress

ENTITIES = ("customers", "products", "orders", "line_items")
BAR = "━"  # rich's bar glyph


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=100, color_system="standard"), out


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()  # not a TTY
    with progress("run r1", 3, out=out) as shown:
        assert isinstance(shown, PlainProgress)
        shown.log("[1/3] bronze_orders (order-pipeline-bronze)")
        shown.doing("bronze_orders")  # a bar's description only: no line
        shown.advance("bronze_orders: SUCCESS in 1.0s")
        shown.advance("silver_orders: FAILED in 2.0s")
    assert out.getvalue().splitlines() == [
        "[1/3] bronze_orders (order-pipeline-bronze)",
        "[done 1/3] bronze_orders: SUCCESS in 1.0s",
        "[done 2/3] silver_orders: FAILED in 2.0s",
    ]
    assert "\x1b" not in out.getvalue()  # no terminal control codes in a log


def test_a_terminal_gets_a_bar_with_the_messages_above_it() -> None:
    console, out = terminal()
    with progress("run r1", 2, console=console) as shown:
        shown.log("starting bronze_orders")
        shown.advance("bronze_orders: SUCCESS in 1.0s")
        shown.advance("gold: SUCCESS in 2.0s")
    text = out.getvalue()
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert "\x1b[" in text and BAR in plain  # drawn, with terminal codes
    assert "starting bronze_orders" in plain and "done: gold: SUCCESS in 2.0s" in plain
    assert "2/2" in plain  # the last frame: every step done


def test_generate_prints_plain_lines_when_not_a_terminal(tmp_path: Path, capsys) -> None:
    argv = ["--data-root", str(tmp_path), "--seed", "5", "--scale", "0.001"]
    assert generate_job.main([*argv, "--end-date", "2026-05-01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    manifest = json.loads((tmp_path / "landing" / "_manifests" / "s5-b0000.json").read_text())
    for entity in ENTITIES:
        counts = manifest["counts"][entity]
        faults = sum(counts["faults"].values())
        files = sum(1 for f in manifest["files"] if f["entity"] == entity)
        assert f"{entity}: {counts['lines']:,} lines in {files} files, {faults:,} faults" in lines
    assert "[done 1] batch 0 written" in lines
    assert not any("\x1b" in line or BAR in line for line in lines)


def test_generate_draws_a_bar_in_a_terminal(tmp_path: Path) -> None:
    console, out = terminal()
    parser = cli.build_parser()
    args = parser.parse_args(
        ["generate", "--data-root", str(tmp_path), "--scale", "0.001", "--end-date", "2026-05-01"]
    )
    assert generate_job.run_cli(args, console=console) == 0
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert BAR in plain and "generate batch 0" in plain
    for entity in ENTITIES:  # the generator's messages print above the bar
        assert re.search(rf"{entity}: [\d,]+ lines in \d+ files", plain), plain


def test_task_entry_points_do_not_import_the_terminal_library() -> None:
    # Databricks runs these with the wheel: a bar library must not be needed to start them
    code = (
        "import sys, order_pipeline.jobs.bronze, order_pipeline.jobs.silver, "
        "order_pipeline.jobs.gold, order_pipeline.cli.runner, order_pipeline.cli.progress; "
        "print(sorted(m for m in sys.modules if m == 'rich' or m.startswith('rich.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_tables_are_plain_text_in_a_pipe_and_drawn_by_rich_in_a_terminal() -> None:
    columns = ["task", "status", "seconds"]
    rows = [("bronze_orders", "SUCCESS", "4.2"), ("gold", "FAILED", "12.0")]
    out = io.StringIO()
    print_table(columns, rows, out=out)
    assert out.getvalue().splitlines() == [
        "task           status   seconds",
        "-------------  -------  -------",
        "bronze_orders  SUCCESS  4.2    ",
        "gold           FAILED   12.0   ",
    ]
    console, drawn = terminal()
    print_table(columns, rows, console=console)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn.getvalue())
    assert "\x1b[1m" in drawn.getvalue()  # a bold header
    assert re.search(r"─{5,}", plain)  # rich's rule under the header
    body = [line.strip() for line in plain.splitlines() if line.strip()][-2:]
    assert [re.split(r"\s{2,}", line) for line in body] == [list(r) for r in rows]
    console, drawn = terminal()
    print_table(columns, [], console=console)
    assert "(no rows)" in drawn.getvalue()
