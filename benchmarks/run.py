"""The benchmark command of issue 5.

    python -m benchmarks.run --scale S [--data-root D] [--peers duckdb,naive[,sdp]] [--json out.json]

1. generates seeded landing data at scale S (batch 0), runs the pipeline's whole workflow
   cold in a fresh process (JVM start included; the process tree's peak RSS polled every
   0.2 s), lands batch 1 (~1% new or changed records) and runs the workflow again;
   per-task figures come from the pipeline's own ops_task_runs table;
2. runs each peer on the same landing data, each in a fresh process, cold and incremental;
3. measures stream-level figures: micro-batch overhead, MERGE write amplification and
   file-listing time against files already seen;

then prints the tables and writes everything to a JSON file (benchmarks/results/ by
default). State lives under --data-root (default .local/bench/sf<S>), wiped at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.common import (
    AS_OF,
    END_DATE,
    ENTITY_ORDER,
    REPO_ROOT,
    RESULTS_DIR,
    ROOT_MARKER,
    SEED,
    BenchPaths,
    landing_files,
    read_json,
    utc_now,
    write_json,
)
from benchmarks.measure import Measurement, run_measured, warm_page_cache

PEERS = ("duckdb", "naive", "sdp")
# The Declarative Pipelines peer predates the contract's parse issues and deletes (its bronze
# reads JSON with Spark's own reader, its gate has no tombstones): its counts no longer agree,
# so it runs only when asked for (--peers duckdb,naive,sdp). See benchmarks/README.md.
DEFAULT_PEERS = ("duckdb", "naive")
PEER_MODULES = {
    "duckdb": "benchmarks.duckdb_pipeline",
    "naive": "benchmarks.naive_spark",
    "sdp": "benchmarks.declarative_pipeline",
}
RUN_ID_LINE = re.compile(r"tasks from .*, run (\S+)\s*$", re.MULTILINE)
NOISE = (
    "WARNING: Using incubator modules",
    "NativeCodeLoader",
    "Using Spark's default log4j profile",
    'Setting default log level to "WARN"',
    "To adjust logging level use",
)
LABELS = ("cold", "incremental")


def say(text: str = "") -> None:
    print(text, flush=True)


def echo(line: str) -> None:
    if line.strip() and not any(n in line for n in NOISE):
        print(f"    | {line}", flush=True)


# -- setup ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scale",
        type=float,
        required=True,
        help="scale factor (1 = SF1: 10k customers, 100k orders)",
    )
    parser.add_argument(
        "--data-root", type=Path, help="state folder (default .local/bench/sf<scale>); wiped first"
    )
    parser.add_argument(
        "--peers",
        default=",".join(DEFAULT_PEERS),
        help=f"comma-separated subset of {','.join(PEERS)}, or none (default: %(default)s)",
    )
    parser.add_argument(
        "--json", type=Path, help="result file (default benchmarks/results/bench-sf<S>-<time>.json)"
    )
    parser.add_argument(
        "--listing-files", type=int, default=500, help="files for the listing probe (0: skip)"
    )
    parser.add_argument(
        "--overhead-runs", type=int, default=3, help="1-row micro-batch runs (0: skip)"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="do not echo the child processes' output"
    )
    args = parser.parse_args(argv)
    peers = (
        []
        if args.peers.strip().lower() in ("", "none")
        else [p.strip() for p in args.peers.split(",")]
    )
    unknown = set(peers) - set(PEERS)
    if unknown:
        parser.error(f"--peers: unknown {sorted(unknown)}; choose from {list(PEERS)}")
    args.peer_list = peers
    args.data_root = (
        args.data_root or REPO_ROOT / ".local" / "bench" / f"sf{args.scale:g}"
    ).resolve()
    return args


def prepare_root(root: Path) -> BenchPaths:
    """A fresh state folder; only a folder this benchmark created is ever wiped."""
    if root.exists() and any(root.iterdir()):
        if not (root / ROOT_MARKER).is_file():
            raise SystemExit(
                f"{root} exists and is not a benchmark folder (no {ROOT_MARKER}); choose another --data-root"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / ROOT_MARKER).write_text(
        "created by python -m benchmarks.run; wiped at the start of every run\n"
    )
    return BenchPaths(root)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ORDER_PIPELINE_DATA_ROOT"}
    env["ORDER_PIPELINE_PROFILE"] = "local"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def python(*arguments: str) -> list[str]:
    return [sys.executable, *arguments]


def measured(command: list[str], log: Path, quiet: bool) -> Measurement:
    return run_measured(command, log, env=child_env(), cwd=REPO_ROOT, echo=None if quiet else echo)


# -- steps ----------------------------------------------------------------------------------


def generate_batch(paths: BenchPaths, scale: float, batch: int, quiet: bool) -> dict[str, Any]:
    say(f"\n== generate batch {batch} at scale {scale:g} (seed {SEED}) ==")
    command = python(
        "-m", "order_pipeline.cli.main", "generate", "--data-root", str(paths.root), "--scale", str(scale),
        "--seed", str(SEED), "--batch", str(batch), "--end-date", END_DATE.isoformat(),
    )  # fmt: skip
    done = measured(command, paths.log(f"generate-b{batch}"), quiet)
    if done.returncode != 0:
        raise SystemExit(f"generate failed (exit {done.returncode}); see {done.log}")
    manifest = read_json(paths.landing / "_manifests" / f"s{SEED}-b{batch:04d}.json")
    lines = {e: manifest["counts"][e]["lines"] for e in ENTITY_ORDER}
    say(f"   {sum(lines.values()):,} lines in {done.seconds:.1f}s: {lines}")
    return {
        "batch": batch,
        "seconds": round(done.seconds, 3),
        "lines": lines,
        "total_lines": sum(lines.values()),
    }


def run_workflow(
    paths: BenchPaths, label: str, quiet: bool, listen: bool = True
) -> tuple[Measurement, str | None, list[dict[str, Any]]]:
    """``order-pipeline run`` in a fresh process; with ``listen``, through a child that
    starts Spark first to record every streaming progress event (a run with nothing new
    is measured as it is: it starts no Spark session at all)."""
    say(f"\n== order-pipeline: {label} run (fresh process: order-pipeline run) ==")
    warm_page_cache(paths.landing)
    events_log = paths.logs / f"pipeline-{label}-progress.jsonl"
    events_log.unlink(missing_ok=True)
    if listen:
        command = python(
            "-m", "benchmarks.workflow_child", "--data-root", str(paths.pipeline), "--as-of", AS_OF,
            "--progress-log", str(events_log),
        )  # fmt: skip
    else:
        command = python(
            "-m", "order_pipeline.cli.main", "run", "--data-root", str(paths.pipeline),
            "--as-of", AS_OF,
        )  # fmt: skip
    done = measured(command, paths.log(f"pipeline-{label}"), quiet)
    text = Path(done.log).read_text(errors="replace")
    match = RUN_ID_LINE.search(text)
    events = (
        [_json_line(line) for line in events_log.read_text().splitlines()]
        if events_log.is_file()
        else []
    )
    status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode}; see {done.log})"
    say(
        f"   {label}: {done.seconds:.1f}s wall, peak RSS {done.peak_rss_bytes / report.MIB:,.0f} MiB, {status}"
    )
    return done, match.group(1) if match else None, events


def _json_line(line: str) -> dict[str, Any]:
    return json.loads(line)


def run_peer(name: str, paths: BenchPaths, label: str, quiet: bool) -> dict[str, Any]:
    say(f"\n== peer {report.PEER_LABELS[name]}: {label} run (fresh process) ==")
    warm_page_cache(paths.landing)
    result_path = paths.result(f"{name}-{label}")
    result_path.unlink(missing_ok=True)
    state_option = "--data-root" if name == "naive" else "--state"
    command = python(
        "-m", PEER_MODULES[name], "--landing", str(paths.landing), state_option, str(paths.peer(name)),
        "--as-of", AS_OF, "--result", str(result_path),
    )  # fmt: skip
    done = measured(command, paths.log(f"{name}-{label}"), quiet)
    result = read_json(result_path) or {"status": "failed", "error": _tail(done.log)}
    if done.returncode != 0 and result.get("status") == "ok":
        result = {**result, "status": "failed", "error": _tail(done.log)}
    summary = {
        **result,
        "wall_seconds": round(done.seconds, 3),
        "cpu_seconds": round(done.cpu_seconds, 2),
        "load_average": done.load_average,
        "peak_rss_bytes": done.peak_rss_bytes,
        "process": done.summary(),
    }
    say(
        f"   {label}: {summary['status']} in {done.seconds:.1f}s, peak RSS {done.peak_rss_bytes / report.MIB:,.0f} MiB"
    )
    if summary["status"] != "ok":
        say(f"   reason: {report.first_line(summary.get('error'), 200)}")
    return summary


def _tail(log: str, lines: int = 15) -> str:
    return "\n".join(Path(log).read_text(errors="replace").splitlines()[-lines:])


def run_probe(paths: BenchPaths, args: argparse.Namespace) -> dict[str, Any]:
    say("\n== stream-level figures and the pipeline's records (fresh process) ==")
    out = paths.logs / "probe.json"
    command = python(
        "-m", "benchmarks.probe", "--data-root", str(paths.pipeline), "--scratch", str(paths.probe),
        "--out", str(out), "--overhead-runs", str(args.overhead_runs), "--listing-files", str(args.listing_files),
    )  # fmt: skip
    done = measured(command, paths.log("probe"), args.quiet)
    if done.returncode != 0:
        raise SystemExit(f"probe failed (exit {done.returncode}); see {done.log}")
    return read_json(out)


# -- the report -----------------------------------------------------------------------------


def pipeline_figures(
    probe: dict[str, Any],
    runs: dict[str, tuple[Measurement, str | None, list[dict[str, Any]]]],
    lines: dict[str, int],
) -> dict[str, Any]:
    task_runs = probe["pipeline"]["task_runs"]
    figures = {}
    for label, (done, run_id, events) in runs.items():
        tasks = report.task_figures(task_runs, run_id, done) if run_id else []
        figures[label] = report.workflow_figures(done, tasks, events, lines.get(label, 0))
        figures[label]["run_id"] = run_id
    cold, incr = figures["cold"], figures["incremental"]
    figures["incremental_to_cold"] = {
        "wall": report.ratio(incr["wall_seconds"], cold["wall_seconds"]),
        "cpu": report.ratio(incr["cpu_seconds"], cold["cpu_seconds"]),
        "task_seconds": report.ratio(incr["task_seconds"], cold["task_seconds"]),
        "silver_and_gold_task_seconds": report.ratio(
            _silver_gold_seconds(incr), _silver_gold_seconds(cold)
        ),
    }
    return figures


def _silver_gold_seconds(run: dict[str, Any]) -> float:
    return sum(t["seconds"] for t in run["tasks"] if not t["task"].startswith("bronze_"))


def stream_level(
    probe: dict[str, Any], pipeline: dict[str, Any], paths: BenchPaths
) -> dict[str, Any]:
    runs = {label: pipeline[label]["tasks"] for label in LABELS}
    no_new = pipeline.get("no_new_data", {}).get("tasks", [])
    return {
        "micro_batch_overhead": report.overhead_figures(probe["overhead"])
        if probe.get("overhead")
        else None,
        "incremental_streams": pipeline["incremental"]["streams"],
        "merge_amplification": report.merge_amplification(probe["pipeline"]["merges"], runs),
        "silver_files": probe["pipeline"]["silver_files"],
        "gold_tiny_change": probe.get("gold_tiny_change"),
        "file_listing": {
            "files_per_entity": {e: len(landing_files(paths.landing, e)) for e in ENTITY_ORDER},
            "pipeline_no_new_data": [t for t in no_new if t["task"].startswith("bronze_")],
            "probe": report.listing_figures(probe["listing"]) if probe.get("listing") else [],
        },
    }


def consistency(
    probe: dict[str, Any], peers: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Final silver and gold row counts, and gold sums, per system: the peers do the same
    logical work, so these must agree."""
    tables = [f"silver_{e}" for e in ENTITY_ORDER] + [
        "gold_order_details",
        "gold_product_sales_monthly",
        "gold_order_completion_status",
    ]
    systems = {"pipeline": {**probe["pipeline"]["counts"], **probe["pipeline"]["checks"]}}
    for name, peer in peers.items():
        final = peer.get("incremental") or {}
        if final.get("status") == "ok":
            systems[name] = {
                **final.get("counts", {}),
                **final.get("details", {}).get("checks", {}),
            }
    rows = [*tables, "gold_units", "gold_revenue"]
    return {row: {name: values.get(row) for name, values in systems.items()} for row in rows}


def previous_peak(scale: float) -> tuple[float, int] | None:
    """Peak RSS of the newest saved SF1 result, for the SF10-vs-SF1 memory target."""
    for path in sorted(RESULTS_DIR.glob("bench-sf1*.json"), reverse=True):
        data = read_json(path)
        if data and data.get("scale") == 1.0 and scale != 1.0:
            return 1.0, max(data["pipeline"][label]["peak_rss_bytes"] for label in LABELS)
    return None


def targets(result: dict[str, Any]) -> list[dict[str, str]]:
    pipeline, peers, stream = result["pipeline"], result["peers"], result["stream"]
    at = f"(SF{result['scale']:g}; target is for SF10)"
    incr = pipeline["incremental_to_cold"]["wall"]
    cpu = pipeline["incremental_to_cold"]["cpu"]
    rows = [
        _target(
            "incremental ≤ 15% of cold",
            f"{report.fmt_percent(incr)} wall, {report.fmt_percent(cpu)} CPU",
            incr is not None and incr <= 0.15,
            at,
        )
    ]
    no_new = pipeline.get("no_new_data", {})
    wall = no_new.get("wall_seconds")
    skipped = sum(t.get("status") == "SKIPPED" for t in no_new.get("tasks", []))
    rows.append(
        _target(
            "no-new-data run of the whole workflow < 3 s",
            f"{wall:.2f} s, {skipped}/{len(no_new.get('tasks', []))} tasks skipped"
            if wall is not None
            else "n/a",
            wall is not None and wall < 3,
            f"(SF{result['scale']:g})",
            wall is None,
        )
    )
    for label, limit in (("cold", 3), ("incremental", 4)):
        duck = peers.get("duckdb", {}).get("pipeline_over_peer", {}).get(label)
        rows.append(
            _target(
                f"{label} ≤ {limit}x DuckDB's",
                report.fmt_ratio(duck, "x"),
                duck is not None and duck <= limit,
                at,
                duck is None,
            )
        )
    naive_cold = peers.get("naive", {}).get("pipeline_over_peer", {}).get("cold")
    rows.append(
        _target(
            "cold not slower than naive Spark",
            report.fmt_ratio(naive_cold, "x"),
            naive_cold is not None and naive_cold <= 1,
            at,
            naive_cold is None,
        )
    )
    naive = peers.get("naive", {}).get("pipeline_over_peer", {}).get("incremental")
    rows.append(
        _target(
            "incremental faster than naive Spark",
            report.fmt_ratio(naive, "x"),
            naive is not None and naive < 1,
            "",
            naive is None,
        )
    )
    sdp = peers.get("sdp", {}).get("pipeline_over_peer", {})
    sdp_figure = (
        "n/a"
        if sdp.get("cold") is None
        else f"{report.fmt_ratio(sdp.get('cold'), 'x')} / {report.fmt_ratio(sdp.get('incremental'), 'x')}"
    )
    sdp_met = (
        sdp.get("cold") is not None and sdp["cold"] <= 1 and (sdp.get("incremental") or 99) <= 1
    )
    rows.append(
        _target(
            "not slower than SDP (cold / incr)", sdp_figure, sdp_met, "", sdp.get("cold") is None
        )
    )
    peak = max(pipeline[label]["peak_rss_bytes"] for label in LABELS)
    rows.append(
        _target(
            "peak memory < 4 GiB", f"{peak / report.MIB / 1024:.2f} GiB", peak < 4 * 1024**3, at
        )
    )
    rows.append(_memory_growth_target(result["scale"], peak))
    overhead = stream.get("micro_batch_overhead") or {}
    worst = max(
        (overhead.get(t, {}).get("median_trigger_ms") or 0 for t in ("bronze", "silver")), default=0
    )
    figure = (
        ", ".join(
            f"{t} {(overhead.get(t, {}).get('median_trigger_ms') or 0) / 1000:.2f}s"
            for t in ("bronze", "silver")
        )
        if overhead
        else "-"
    )
    rows.append(
        _target("fixed overhead per micro-batch < 0.5 s", figure, worst < 500, "", not overhead)
    )
    silver = overhead.get("silver") or {}
    commits, wall = silver.get("median_commits_total"), silver.get("median_task_wall_seconds")
    rows.append(
        _target(
            "silver run of one few-row batch: ≤ 2 commits, < 1.5 s warm",
            f"{report.fmt_int(commits)} commits, {report.fmt_seconds(wall)} s",
            commits is not None and commits <= 2 and wall is not None and wall < 1.5,
            "",
            commits is None,
        )
    )
    tiny = stream.get("gold_tiny_change") or {}
    incremental, rebuild = tiny.get("incremental") or {}, tiny.get("rebuild") or {}
    rows.append(
        _target(
            f"gold for {tiny.get('orders_changed', 5)} changed orders: incremental, faster than a rebuild",
            f"{incremental.get('mode')} {report.fmt_seconds(incremental.get('wall_seconds'))} s vs "
            f"{report.fmt_seconds(rebuild.get('wall_seconds'))} s"
            if tiny
            else "n/a",
            incremental.get("mode") == "incremental"
            and (incremental.get("wall_seconds") or 1e9) < (rebuild.get("wall_seconds") or 0),
            at,
            not tiny,
        )
    )
    return rows


def _memory_growth_target(scale: float, peak: int) -> dict[str, str]:
    base = previous_peak(scale)
    if base is None:
        return _target(
            "peak memory ≤ SF1 + 25%", "needs an SF1 result in benchmarks/results", False, "", True
        )
    growth = peak / base[1] - 1
    return _target("peak memory ≤ SF1 + 25%", f"{growth:+.0%} vs SF1", growth <= 0.25, "")


def _target(name: str, figure: str, met: bool, note: str, unknown: bool = False) -> dict[str, str]:
    status = "not measured" if unknown else ("met" if met else "NOT met")
    return {"target": name, "figure": figure, "status": f"{status} {note}".strip()}


def machine_info() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal")
        ),
        "",
    )
    java = subprocess.run(
        ["java", "-version"], capture_output=True, text=True, check=False
    ).stderr.splitlines()
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "java": java[0] if java else "",
        "load_average_at_start": os.getloadavg(),
        "versions": {
            p: _version(p) for p in ("pyspark", "delta-spark", "duckdb", "pyarrow", "psutil")
        },
        "git": _git(),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=REPO_ROOT, check=False
        )
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def print_report(result: dict[str, Any]) -> None:
    pipeline = result["pipeline"]
    say(
        f"\n== order-pipeline at scale {result['scale']:g} (seed {SEED}): cold, then incremental with batch 1 =="
    )
    say(report.task_table(pipeline["cold"], pipeline["incremental"]))
    ratios = pipeline["incremental_to_cold"]
    say(
        f"incremental/cold: wall {report.fmt_percent(ratios['wall'])}, CPU {report.fmt_percent(ratios['cpu'])}, "
        f"task seconds {report.fmt_percent(ratios['task_seconds'])}, "
        f"silver+gold task seconds {report.fmt_percent(ratios['silver_and_gold_task_seconds'])}"
    )
    cold, incr = pipeline["cold"], pipeline["incremental"]
    say(
        f"process tree CPU seconds: cold {cold['cpu_seconds']:.1f}, incremental {incr['cpu_seconds']:.1f}; "
        f"machine load average (1 min) at start: cold {cold['load_average'][0]:.1f}, incremental "
        f"{incr['load_average'][0]:.1f} (on a shared machine, CPU seconds are the steadier figure)"
    )
    say(
        "\n== peers: same landing data, same machine, fresh process each (pipeline÷peer > 1: pipeline slower) =="
    )
    say(report.peer_table(pipeline, result["peers"]))
    say("\n== stream-level figures ==")
    say(report.stream_table(result["stream"]))
    say("\n== consistency: final row counts and gold sums per system ==")
    rows = [
        [table, *(report.fmt_number(v) for v in counts.values())]
        for table, counts in result["consistency"].items()
    ]
    systems = list(next(iter(result["consistency"].values())).keys())
    say(report.table(["table", *systems], rows))
    say("\n== targets ==")
    say(report.targets_table(result["targets"]))
    machine = result["machine"]
    say(
        f"\nmachine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['memory']}, load average at start {machine['load_average_at_start']}"
    )


@dataclass
class Measured:
    """Everything the measured processes produced, before it becomes figures."""

    data: list[dict[str, Any]]
    runs: dict[str, tuple[Measurement, str | None, list[dict[str, Any]]]]
    peers: dict[str, dict[str, Any]]
    probe: dict[str, Any]


def measure_everything(args: argparse.Namespace, paths: BenchPaths) -> Measured:
    """Cold runs on batch 0, incremental runs after batch 1, a no-new-data run, the probe;
    a progress bar over these steps in a terminal, a line per step otherwise."""
    from order_pipeline.cli.progress import progress

    with progress("benchmark", 6 + 2 * len(args.peer_list)) as shown:

        def step(label: str, measure: Callable[..., Any], *arguments: Any, **options: Any) -> Any:
            shown.doing(label)
            value = measure(*arguments, **options)
            shown.advance(label)
            return value

        data = [step("generate batch 0", generate_batch, paths, args.scale, 0, args.quiet)]
        runs = {"cold": step("pipeline cold", run_workflow, paths, "cold", args.quiet)}
        peers = {
            name: {"cold": step(f"{name} cold", run_peer, name, paths, "cold", args.quiet)}
            for name in args.peer_list
        }
        data.append(step("generate batch 1", generate_batch, paths, args.scale, 1, args.quiet))
        runs["incremental"] = step(
            "pipeline incremental", run_workflow, paths, "incremental", args.quiet
        )
        for name, peer in peers.items():
            if peer["cold"]["status"] == "ok":
                peer["incremental"] = step(
                    f"{name} incremental", run_peer, name, paths, "incremental", args.quiet
                )
            else:  # a peer that could not run cold is not tried again
                peer["incremental"] = {k: peer["cold"].get(k) for k in ("status", "error")}
                shown.advance(f"{name} incremental: not tried, it failed cold")
        runs["no_new_data"] = step(
            "pipeline, no new data", run_workflow, paths, "no_new_data", args.quiet, listen=False
        )
        probe = step("stream-level probe", run_probe, paths, args)
    return Measured(data, runs, peers, probe)


def assemble(result: dict[str, Any], measured: Measured, paths: BenchPaths) -> None:
    lines = {
        "cold": measured.data[0]["total_lines"],
        "incremental": measured.data[1]["total_lines"],
    }
    result["data"] = measured.data
    result["pipeline"] = pipeline_figures(measured.probe, measured.runs, lines)
    for peer in measured.peers.values():
        if peer["cold"]["status"] == "ok":
            peer["incremental_to_cold"] = report.ratio(
                peer["incremental"].get("wall_seconds"), peer["cold"]["wall_seconds"]
            )
            peer["pipeline_over_peer"] = report.peer_ratios(result["pipeline"], peer)
            peer["pipeline_over_peer_cpu"] = report.peer_ratios(
                result["pipeline"], peer, "cpu_seconds"
            )
    result["peers"] = measured.peers
    result["stream"] = stream_level(measured.probe, result["pipeline"], paths)
    result["consistency"] = consistency(measured.probe, measured.peers)
    result["targets"] = targets(result)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    peers = ", ".join(args.peer_list) or "none"
    say(f"benchmark at scale {args.scale:g}, state under {args.data_root}, peers: {peers}")
    result: dict[str, Any] = {
        "benchmark": "order-pipeline issue 5",
        "scale": args.scale,
        "seed": SEED,
        "end_date": END_DATE,
        "as_of": AS_OF,
        "started_at": utc_now(),
        "machine": machine_info(),
    }
    paths = prepare_root(args.data_root)
    assemble(result, measure_everything(args, paths), paths)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["seconds"] = round(time.monotonic() - started, 1)
    out = args.json or RESULTS_DIR / f"bench-sf{args.scale:g}-{datetime.now():%Y%m%dT%H%M%S}.json"
    write_json(out, result)
    print_report(result)
    say(f"\nbenchmark finished in {result['seconds']:.0f}s; JSON: {out}")
    return 0 if all(result["pipeline"][label]["ok"] for label in LABELS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
