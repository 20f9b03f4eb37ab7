"""Turn raw measurements into the benchmark's figures, and the figures into tables.

Pure functions over plain dicts: the JSON file holds everything the screen shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from statistics import median
from typing import Any

from benchmarks.common import ENTITY_ORDER
from benchmarks.measure import Measurement

MIB = 1024 * 1024
PEER_LABELS = {
    "pipeline": "order-pipeline",
    "duckdb": "DuckDB",
    "naive": "naive Spark",
    "sdp": "Declarative Pipelines",
}

# -- figures ------------------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def per_second(rows: int | None, seconds: float | None) -> float | None:
    return ratio(float(rows or 0), seconds) if rows is not None else None


def task_figures(
    task_runs: list[dict[str, Any]], run_id: str, measurement: Measurement
) -> list[dict[str, Any]]:
    """One row per task of one workflow run, from ops_task_runs, plus the peak RSS of the
    process tree while the task ran."""
    rows = []
    for record in task_runs:
        if record["run_id"] != run_id:
            continue
        peak = measurement.peak_between(record["started_epoch"], record["ended_epoch"])
        rows.append(
            {
                "task": record["task"],
                "status": record["status"],
                "rows_in": record["rows_in"],
                "rows_out": record["rows_out"],
                "seconds": round(record["seconds"], 3),
                "rows_per_second": per_second(record["rows_in"], record["seconds"]),
                "peak_rss_bytes": peak,
                "started_epoch": record["started_epoch"],
                "ended_epoch": record["ended_epoch"],
            }
        )
    return rows


def stream_figures(events: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stream: micro-batches, rows, and median triggerExecution and engine overhead
    (triggerExecution minus addBatch: planning, offsets, WAL and commit) in ms."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_name.setdefault(event["name"], []).append(event)
    figures = {}
    for name, batches in sorted(by_name.items()):
        trigger = [b["duration_ms"].get("triggerExecution", 0) for b in batches]
        engine = [
            b["duration_ms"].get("triggerExecution", 0) - b["duration_ms"].get("addBatch", 0)
            for b in batches
        ]
        listing = [b["duration_ms"].get("latestOffset", 0) for b in batches]
        figures[name] = {
            "micro_batches": len(batches),
            "rows": sum(b.get("num_input_rows") or 0 for b in batches),
            "median_trigger_ms": median(trigger),
            "median_engine_overhead_ms": median(engine),
            "median_latest_offset_ms": median(listing),
            "max_trigger_ms": max(trigger),
        }
    return figures


def workflow_figures(
    measurement: Measurement,
    tasks: list[dict[str, Any]],
    events: list[dict[str, Any]],
    landing_lines: int,
) -> dict[str, Any]:
    task_seconds = sum(t["seconds"] for t in tasks)
    covered = covered_seconds([(t["started_epoch"], t["ended_epoch"]) for t in tasks])
    first_start = min((t["started_epoch"] for t in tasks), default=measurement.started_at)
    startup = max(0.0, first_start - measurement.started_at)
    return {
        "process": measurement.summary(),
        "wall_seconds": round(measurement.seconds, 3),
        "cpu_seconds": round(measurement.cpu_seconds, 2),
        "load_average": measurement.load_average,
        "peak_rss_bytes": measurement.peak_rss_bytes,
        "landing_lines": landing_lines,
        "rows_per_second": per_second(landing_lines, measurement.seconds),
        "tasks": tasks,
        "task_seconds": round(task_seconds, 3),
        # tasks may overlap (the local runner's parallel_tasks): "outside" is the wall
        # time covered by no task at all, not wall minus the sum of task seconds
        "task_covered_seconds": round(covered, 3),
        "outside_task_seconds": round(measurement.seconds - covered, 3),
        "startup_seconds": round(startup, 3),
        "between_task_seconds": round(measurement.seconds - covered - startup, 3),
        "streams": stream_figures(events),
        "ok": measurement.returncode == 0 and all(t["status"] == "SUCCESS" for t in tasks),
    }


def covered_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def merge_amplification(
    merges: dict[str, list[dict[str, Any]]], runs: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """Rows copied per source row of the silver MERGEs of each run, per entity."""
    out: dict[str, dict[str, Any]] = {}
    for entity in ENTITY_ORDER:
        out[entity] = {}
        for label, tasks in runs.items():
            window = next((t for t in tasks if t["task"] == f"silver_{entity}"), None)
            if window is None:
                continue
            inside = [
                m["metrics"] for m in merges.get(entity, [])
                if window["started_epoch"] - 1 <= m["epoch"] <= window["ended_epoch"] + 1
            ]  # fmt: skip
            copied = sum(m.get("numTargetRowsCopied", 0) for m in inside)
            source = sum(m.get("numSourceRows", 0) for m in inside)
            out[entity][label] = {
                "merges": len(inside),
                "source_rows": source,
                "rows_copied": copied,
                "rows_updated": sum(m.get("numTargetRowsUpdated", 0) for m in inside),
                "rows_inserted": sum(m.get("numTargetRowsInserted", 0) for m in inside),
                "files_removed": sum(m.get("numTargetFilesRemoved", 0) for m in inside),
                "files_added": sum(m.get("numTargetFilesAdded", 0) for m in inside),
                "copied_per_source_row": ratio(copied, source),
            }
    return out


def overhead_figures(probe: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over the warm runs (the first pays for table creation and JIT warm-up)."""
    warm = probe[1:] or probe
    out: dict[str, Any] = {"runs": len(probe), "warm_runs": len(warm)}
    for task in ("bronze", "silver"):
        batches = [b for run in warm for b in run[task]["batches"] if b["num_input_rows"]]
        durations = [b["duration_ms"] for b in batches]
        out[task] = {
            "median_trigger_ms": median([d.get("triggerExecution", 0) for d in durations])
            if durations
            else None,
            "median_add_batch_ms": median([d.get("addBatch", 0) for d in durations])
            if durations
            else None,
            "median_engine_overhead_ms": (
                median([d.get("triggerExecution", 0) - d.get("addBatch", 0) for d in durations])
                if durations
                else None
            ),
            "median_task_wall_seconds": median([run[task]["wall_seconds"] for run in warm]),
        }
    commits = [run["silver"]["commits"] for run in warm if "commits" in run["silver"]]
    if commits:  # Delta commits of a silver run of one micro-batch, per table (median)
        tables = sorted({t for c in commits for t in c})
        per_table = {t: median([c.get(t, 0) for c in commits]) for t in tables}
        out["silver"]["median_commits"] = {t: n for t, n in per_table.items() if n}
        out["silver"]["median_commits_total"] = median([sum(c.values()) for c in commits])
    return out


def listing_figures(probe: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for level in probe:
        one = [b for b in level["one_new_file"]["batches"] if b["num_input_rows"]]
        rows.append(
            {
                "files_seen": level["files_seen"],
                "no_new_data_run_seconds": level["no_new_data"]["wall_seconds"],
                "one_new_file_run_seconds": level["one_new_file"]["wall_seconds"],
                "one_new_file_latest_offset_ms": one[0]["duration_ms"].get("latestOffset")
                if one
                else None,
                "one_new_file_trigger_ms": one[0]["duration_ms"].get("triggerExecution")
                if one
                else None,
            }
        )
    return rows


def peer_ratios(
    pipeline: dict[str, Any], peer: dict[str, Any], measure: str = "wall_seconds"
) -> dict[str, float | None]:
    """pipeline seconds ÷ peer seconds: above 1 the pipeline is slower than the peer."""
    return {
        label: ratio(pipeline[label][measure], peer[label][measure])
        if peer.get(label, {}).get("status") == "ok"
        else None
        for label in ("cold", "incremental")
    }


# -- formatting ---------------------------------------------------------------------------


def fmt_int(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def fmt_number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def fmt_seconds(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f}"


def fmt_mib(value: float | None) -> str:
    return "" if value is None else f"{value / MIB:,.0f}"


def fmt_ratio(value: float | None, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:,.2f}{suffix}"


def fmt_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None
) -> str:
    """A plain text table; numeric columns right-aligned."""
    right = right or [i > 0 for i in range(len(columns))]
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in rows)])


OUTSIDE_ROWS = {
    "startup_seconds": "(before the first task: JVM start, imports)",
    "between_task_seconds": "(between tasks: run records, Lakehouse setup)",
}


def task_table(cold: dict[str, Any], incremental: dict[str, Any]) -> str:
    incr_by_task = {t["task"]: t for t in incremental["tasks"]}
    rows = []
    for task in cold["tasks"]:
        other = incr_by_task.get(task["task"], {})
        rows.append(
            [
                task["task"],
                fmt_int(task["rows_in"]), fmt_seconds(task["seconds"]), fmt_int(task["rows_per_second"]), fmt_mib(task["peak_rss_bytes"]),
                fmt_int(other.get("rows_in")), fmt_seconds(other.get("seconds")), fmt_int(other.get("rows_per_second")), fmt_mib(other.get("peak_rss_bytes")),
                fmt_percent(ratio(other.get("seconds"), task["seconds"])),
            ]
        )  # fmt: skip
    for key, label in OUTSIDE_ROWS.items():
        rows.append(
            [label, "", fmt_seconds(cold[key]), "", "", "", fmt_seconds(incremental[key]), "", "",
             fmt_percent(ratio(incremental[key], cold[key]))]
        )  # fmt: skip
    rows.append(
        ["workflow, fresh process (wall)", fmt_int(cold["landing_lines"]), fmt_seconds(cold["wall_seconds"]),
         fmt_int(cold["rows_per_second"]), fmt_mib(cold["peak_rss_bytes"]),
         fmt_int(incremental["landing_lines"]), fmt_seconds(incremental["wall_seconds"]),
         fmt_int(incremental["rows_per_second"]), fmt_mib(incremental["peak_rss_bytes"]),
         fmt_percent(ratio(incremental["wall_seconds"], cold["wall_seconds"]))]
    )  # fmt: skip
    columns = [
        "task",
        "cold rows in",
        "s",
        "rows/s",
        "peak MiB",
        "incr rows in",
        "s",
        "rows/s",
        "peak MiB",
        "incr/cold",
    ]
    return table(columns, rows)


def system_row(
    label: str,
    cold: dict[str, Any],
    incr: dict[str, Any],
    wall: dict[str, Any],
    cpu: dict[str, Any],
) -> list[str]:
    return [
        label,
        fmt_seconds(cold["wall_seconds"]),
        fmt_seconds(incr.get("wall_seconds")),
        fmt_percent(ratio(incr.get("wall_seconds"), cold["wall_seconds"])),
        f"{fmt_seconds(cold.get('cpu_seconds'))}/{fmt_seconds(incr.get('cpu_seconds'))}",
        f"{fmt_mib(cold['peak_rss_bytes'])}/{fmt_mib(incr.get('peak_rss_bytes'))}",
        f"{fmt_ratio(wall.get('cold'), 'x')} / {fmt_ratio(wall.get('incremental'), 'x')}",
        f"{fmt_ratio(cpu.get('cold'), 'x')} / {fmt_ratio(cpu.get('incremental'), 'x')}",
        incr.get("status", "ok"),
    ]


def peer_table(pipeline: dict[str, Any], peers: dict[str, dict[str, Any]]) -> str:
    same = {"cold": 1.0, "incremental": 1.0}
    rows = [system_row("order-pipeline", pipeline["cold"], pipeline["incremental"], same, same)]
    for name, peer in peers.items():
        cold = peer.get("cold", {})
        if cold.get("status") != "ok":
            status = f"{cold.get('status', 'not run')}: {first_line(cold.get('error'))}"
            rows.append([PEER_LABELS[name], *[""] * 7, status])
            continue
        rows.append(
            system_row(
                PEER_LABELS[name],
                cold,
                peer.get("incremental", {}),
                peer["pipeline_over_peer"],
                peer["pipeline_over_peer_cpu"],
            )
        )
    columns = [
        "system",
        "cold s",
        "incr s",
        "incr/cold",
        "CPU s cold/incr",
        "peak MiB cold/incr",
        "pipeline÷peer wall cold/incr",
        "CPU cold/incr",
        "status",
    ]
    return table(columns, rows, right=[False, *[True] * 7, False])


def first_line(text: str | None, width: int = 110) -> str:
    if not text:
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    # the most specific line is usually the last error line
    chosen = next(
        (line for line in reversed(lines) if "PACKAGE_NOT_INSTALLED" in line or "Error" in line),
        lines[-1],
    )
    return chosen if len(chosen) <= width else chosen[: width - 1] + "…"


def stream_table(report: dict[str, Any]) -> str:
    lines = []
    overhead = report.get("micro_batch_overhead")
    if overhead:
        lines.append(
            f"Fixed overhead per micro-batch (1-row increment, median of {overhead['warm_runs']} warm runs):"
        )
        for task in ("bronze", "silver"):
            figures = overhead[task]
            lines.append(
                f"  {task:<7} triggerExecution {fmt_int(figures['median_trigger_ms'])} ms "
                f"(engine outside foreachBatch {fmt_int(figures['median_engine_overhead_ms'])} ms, "
                f"foreachBatch {fmt_int(figures['median_add_batch_ms'])} ms); whole task {fmt_seconds(figures['median_task_wall_seconds'])} s"
            )
        commits = overhead["silver"].get("median_commits")
        if commits is not None:
            lines.append(
                f"  Delta commits of a 1-batch silver run (its run's ops rows aside, one commit per table for all tasks): {fmt_int(overhead['silver']['median_commits_total'])} "
                f"({', '.join(f'{t} {fmt_int(n)}' for t, n in commits.items())})"
            )
    gold_tiny = report.get("gold_tiny_change")
    if gold_tiny:
        incremental, rebuild = gold_tiny["incremental"], gold_tiny["rebuild"]
        lines.append(
            f"Gold for {gold_tiny['orders_changed']} changed orders: {incremental['mode']} "
            f"{fmt_seconds(incremental['wall_seconds'])} s ({fmt_int(incremental['affected_orders'])} "
            f"affected orders), full rebuild {fmt_seconds(rebuild['wall_seconds'])} s"
        )
    streams = report.get("incremental_streams") or {}
    if streams:
        lines.append("Pipeline streams in the incremental run (from their progress events):")
        rows = [
            [name, fmt_int(f["micro_batches"]), fmt_int(f["rows"]), fmt_int(f["median_trigger_ms"]),
             fmt_int(f["median_engine_overhead_ms"]), fmt_int(f["median_latest_offset_ms"])]
            for name, f in streams.items()
        ]  # fmt: skip
        lines.append(
            indent(
                table(
                    [
                        "stream",
                        "batches",
                        "rows",
                        "median trigger ms",
                        "engine ms",
                        "latestOffset ms",
                    ],
                    rows,
                )
            )
        )
    merges = report.get("merge_amplification") or {}
    if merges:
        lines.append(
            "MERGE write amplification of silver (numTargetRowsCopied / numSourceRows, Delta history):"
        )
        rows = []
        for entity, runs in merges.items():
            cells = [f"silver_{entity}"]
            for label in ("cold", "incremental"):
                m = runs.get(label)
                cells += (
                    ["", "", ""]
                    if not m
                    else [
                        fmt_int(m["source_rows"]),
                        fmt_int(m["rows_copied"]),
                        fmt_ratio(m["copied_per_source_row"]),
                    ]
                )
            rows.append(cells)
        columns = [
            "table",
            "cold source rows",
            "copied",
            "per row",
            "incr source rows",
            "copied",
            "per row",
        ]
        lines.append(indent(table(columns, rows)))
    listing = report.get("file_listing") or {}
    if listing.get("pipeline_no_new_data"):
        lines.append("File listing against files already seen:")
        rows = [
            [
                t["task"],
                fmt_int(listing["files_per_entity"].get(t["task"].removeprefix("bronze_"))),
                fmt_seconds(t["seconds"]),
            ]
            for t in listing["pipeline_no_new_data"]
        ]
        lines.append(
            indent(table(["no-new-data run of the pipeline", "files landed", "task s"], rows))
        )
    if listing.get("probe"):
        rows = [
            [fmt_int(p["files_seen"]), fmt_seconds(p["no_new_data_run_seconds"]), fmt_seconds(p["one_new_file_run_seconds"]),
             fmt_int(p["one_new_file_latest_offset_ms"]), fmt_int(p["one_new_file_trigger_ms"])]
            for p in listing["probe"]
        ]  # fmt: skip
        columns = [
            "files seen",
            "no-new-data bronze run s",
            "1 new file run s",
            "latestOffset ms",
            "trigger ms",
        ]
        lines.append(indent(table(columns, rows)))
    return "\n".join(lines)


def targets_table(targets: list[dict[str, Any]]) -> str:
    rows = [[t["target"], t["figure"], t["status"]] for t in targets]
    return table(
        ["target (issues 5 and 12)", "figure here", "status"], rows, right=[False, True, False]
    )


def indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())
