"""``order-pipeline report --html FILE``: the dashboards' picture as one self-contained page.

The charts come from the very queries of the AI/BI dashboards (src/dashboards/*.lvdash.json):
each dataset's ``queryLines`` runs on the local session after ``USE`` of the schema the
bundle gives that dashboard (the pipeline schema, or the quarantine schema), as
resources/dashboards.yml does on Databricks, and the results are drawn here as inline SVG.
Beside them: the job graph of resources/jobs.yml as a lineage diagram, and the latest
quarantined rows with their reasons and their record, personal data masked as
``order-pipeline quarantine`` masks it (the file gets shared).

The page needs no server, no network and no script: inline CSS and SVG only, and a
Content-Security-Policy that forbids loading anything and running any script, so even a
mistake in escaping could not make quarantined text run. Every value is HTML-escaped:
quarantined raw text is whatever someone put in a landing file.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from order_pipeline.common.config import Entity
    from order_pipeline.common.io import Lakehouse
    from order_pipeline.transforms.personal import MaskKey

# bundle resource key -> which schema its dataset_schema names (resources/dashboards.yml)
DASHBOARDS = {"pipeline_health": "pipeline", "quarantine_review": "quarantine"}
QUARANTINE_ROWS = 50  # the latest quarantined rows the page lists
PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2",
           "#97bbf5", "#9c6b4e", "#9498a0")  # fmt: skip
LAYER_COLOURS = {"bronze": "#c8875a", "silver": "#9ea7b3", "gold": "#d8b13a"}


def dashboards_folder() -> Path:
    """src/dashboards: beside this package in a checkout and in the wheel alike."""
    return Path(__file__).resolve().parents[1] / "dashboards"


def dashboard_datasets(key: str, folder: Path | None = None) -> dict[str, str]:
    """name -> SQL of every dataset of one dashboard file, as the dashboard holds it."""
    path = (folder or dashboards_folder()) / f"{key}.lvdash.json"
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    return {d["name"]: "".join(d["queryLines"]) for d in dashboard["datasets"]}


@dataclass
class Dataset:
    """The rows of one dashboard dataset, or why there are none (a table not yet built)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


@dataclass
class ReportData:
    title: str
    generated_at: datetime
    datasets: dict[str, Dataset]  # "<dashboard>.<dataset>" -> rows
    tasks: dict[str, tuple[str, ...]]  # task key -> depends_on, in the file's order
    job_source: str
    quarantine: list[dict[str, Any]]  # latest rows, record masked


# ---------------------------------------------------------------------------------------
# Gathering (Spark)
# ---------------------------------------------------------------------------------------


def run_dashboard_queries(lake: Lakehouse, folder: Path | None = None) -> dict[str, Dataset]:
    """Every dataset of both dashboards, run in its dashboard's schema on ``lake.spark``."""
    from pyspark.errors import AnalysisException

    from order_pipeline.common.io import quote

    spark, profile = lake.spark, lake.profile
    schemas = {
        "pipeline": profile.schema,
        "quarantine": profile.quarantine_schema or profile.schema,
    }
    current = spark.catalog.currentDatabase()
    found: dict[str, Dataset] = {}
    try:
        for key, which in DASHBOARDS.items():
            spark.sql(f"USE {quote(schemas[which])}")
            for name, sql in dashboard_datasets(key, folder).items():
                try:
                    rows = [r.asDict() for r in spark.sql(sql).collect()]
                except AnalysisException as exc:  # e.g. no run yet: its tables do not exist
                    found[f"{key}.{name}"] = Dataset(error=str(exc).strip().splitlines()[0])
                else:
                    found[f"{key}.{name}"] = Dataset(rows)
    finally:
        spark.sql(f"USE {quote(current)}")
    return found


def masked_records(
    lake: Lakehouse, entities: dict[str, Entity], wanted: Sequence[dict[str, Any]], mask: MaskKey
) -> dict[str, str]:
    """quarantine_id -> the record as ``order-pipeline quarantine`` shows it (personal data
    masked with ``mask``), for the rows listed."""
    from pyspark.sql import functions as F

    from order_pipeline.cli.report import shown_record

    ids: dict[str, list[str]] = defaultdict(list)
    for row in wanted:
        ids[row["entity"]].append(row["quarantine_id"])
    records: dict[str, str] = {}
    for entity, keys in ids.items():
        if entity not in entities:  # the dashboard names an entity conf/ does not: say so
            records.update(dict.fromkeys(keys, f"(entity {entity} is not in conf/pipeline.yml)"))
            continue
        rows = (
            lake.read(lake.quarantine(entity))
            .where(F.col("quarantine_id").isin(keys))
            .select("quarantine_id", shown_record(entities[entity], mask).alias("record"))
            .collect()
        )
        records.update({r.quarantine_id: r.record for r in rows})
    return records


def collect_report(
    lake: Lakehouse, entities: dict[str, Entity], *, rows: int = QUARANTINE_ROWS
) -> ReportData:
    """Everything the page shows. Personal data is always masked: a report file is shared
    (``order-pipeline quarantine --show-personal-data`` shows it to whoever runs it)."""
    from order_pipeline.cli.runner import load_job_graph
    from order_pipeline.transforms.personal import MaskKey

    datasets = run_dashboard_queries(lake)
    graph = load_job_graph()
    latest = datasets["quarantine_review.latest_quarantined"].rows[:rows]
    records = masked_records(lake, entities, latest, MaskKey.random())
    quarantine = [
        {
            **row,
            "record": records.get(row["quarantine_id"]),
            "file": (row["source_file"] or "").rsplit("/", 1)[-1],
        }
        for row in latest
    ]
    return ReportData(
        title=f"order-pipeline: {lake.profile.schema}",
        generated_at=datetime.now(UTC),
        datasets=datasets,
        tasks={key: task.depends_on for key, task in graph.tasks.items()},
        job_source=graph.source.relative_to(graph.source.parents[1]).as_posix(),
        quarantine=quarantine,
    )


def write_report(
    lake: Lakehouse, entities: dict[str, Entity], path: Path, *, rows: int = QUARANTINE_ROWS
) -> Path:
    """Write the page to ``path``; its absolute path."""
    data = collect_report(lake, entities, rows=rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(data), encoding="utf-8")
    return path.resolve()


# ---------------------------------------------------------------------------------------
# Drawing (pure Python: rows in, markup out)
# ---------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """Text for HTML and SVG, element content and attribute values alike."""
    return html.escape(fmt(value), quote=True)


def num(value: Any) -> float | None:
    """A query's number as a float (Spark gives decimals for the dashboards' divisions)."""
    return None if value is None else float(value)


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value)


def colours(names: Iterable[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(dict.fromkeys(names))}


def legend(colour_of: dict[str, str]) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{c}"></i>{esc(n)}</span>'
        for n, c in colour_of.items()
    )
    return f'<div class="legend">{items}</div>'


def figure(
    chart_id: str, title: str, svg: str, marks: int, note: str = "", extra: str = "", footnote=""
) -> str:
    """A chart with its ``marks`` drawn, or ``note`` (why it is empty) in its place."""
    body = svg if marks else f'<p class="empty">{esc(note or "no rows")}</p>'
    caption = f"<figcaption>{esc(title)}</figcaption>"
    foot = f'<p class="note">{esc(footnote)}</p>' if footnote else ""
    return (
        f'<figure class="chart" id="chart-{esc(chart_id)}" data-chart="{esc(chart_id)}" '
        f'data-marks="{marks}">{caption}{body}{extra}{foot}</figure>'
    )


def hbar_chart(
    chart_id: str, title: str, bars: Sequence[tuple[str, str, float]], unit: str, note: str = ""
) -> str:
    """Horizontal bars, one per category, stacked by series: (category, series, value)."""
    bars = [(a, b, num(v)) for a, b, v in bars]
    categories = list(dict.fromkeys(c for c, _, _ in bars))
    series = colours(s for _, s, _ in bars)
    totals: dict[str, float] = defaultdict(float)
    for c, _, v in bars:
        totals[c] += v or 0
    top = nice_max(max(totals.values(), default=0))
    label_w, plot_w, row_h = 210, 380, 22
    height = row_h * len(categories) + 30
    parts = [_axis_x(label_w, plot_w, len(categories) * row_h, top, unit)]
    marks = 0
    for i, category in enumerate(categories):
        y = i * row_h + 4
        parts.append(
            f'<text class="label" x="{label_w - 6}" y="{y + 13}" text-anchor="end">'
            f"{esc(_clip(category, 32))}<title>{esc(category)}</title></text>"
        )
        x = float(label_w)
        for c, s, v in bars:
            if c != category or v is None:
                continue
            w = plot_w * v / top
            parts.append(
                f'<rect class="mark" x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}" height="{row_h - 6}" '
                f'fill="{series[s]}"><title>{esc(category)} · {esc(s)}: {esc(v)} {esc(unit)}</title></rect>'
            )
            x += w
            marks += 1
        parts.append(
            f'<text class="value" x="{x + 4:.1f}" y="{y + 13}">{esc(totals[category])}</text>'
        )
    svg = _svg(label_w + plot_w + 60, height, parts)
    extra = legend(series) if len(series) > 1 else ""
    return figure(chart_id, title, svg, marks, note, extra)


def grouped_bar_chart(
    chart_id: str, title: str, bars: Sequence[tuple[str, str, float]], unit: str, note: str = ""
) -> str:
    """Vertical bars side by side per group: (group, series, value); groups left to right."""
    bars = [(a, b, num(v)) for a, b, v in bars]
    groups = list(dict.fromkeys(g for g, _, _ in bars))
    series = colours(s for _, s, _ in bars)
    values = {(g, s): v for g, s, v in bars}
    top = nice_max(max((v or 0 for v in values.values()), default=0))
    left, plot_h, bar_w, gap = 60, 200, 34, 24
    group_w = bar_w * len(series) + gap
    width = left + group_w * max(len(groups), 1) + 20
    parts = [_axis_y(left, group_w * len(groups), plot_h, top, unit)]
    marks = 0
    for gi, group in enumerate(groups):
        x0 = left + gi * group_w + gap / 2
        for si, s in enumerate(series):
            v = values.get((group, s))
            if v is None:
                continue
            h = plot_h * v / top
            parts.append(
                f'<rect class="mark" x="{x0 + si * bar_w:.1f}" y="{10 + plot_h - h:.1f}" '
                f'width="{bar_w - 2}" height="{max(h, 0.5):.1f}" fill="{series[s]}">'
                f"<title>{esc(group)} · {esc(s)}: {esc(v)} {esc(unit)}</title></rect>"
            )
            parts.append(
                f'<text class="tick" x="{x0 + si * bar_w + bar_w / 2 - 1:.1f}" '
                f'y="{10 + plot_h - h - 3:.1f}" text-anchor="middle">{esc(v)}</text>'
            )
            marks += 1
        parts.append(
            f'<text class="label" x="{x0 + bar_w * len(series) / 2:.1f}" y="{plot_h + 26}" '
            f'text-anchor="middle">{esc(group)}</text>'
        )
    svg = _svg(width, plot_h + 36, parts)
    return figure(chart_id, title, svg, marks, note, legend(series))


def line_chart(
    chart_id: str,
    title: str,
    points: Sequence[tuple[str, str, float]],
    unit: str,
    note: str = "",
    percent: bool = False,
    footnote: str = "",
) -> str:
    """One line per series over the runs: (run label, series, value); runs in the order
    given (oldest first), evenly spaced."""
    points = [(a, b, num(v)) for a, b, v in points]
    runs = list(dict.fromkeys(r for r, _, _ in points))
    series = colours(s for _, s, _ in points)
    top = nice_max(max((v or 0 for _, _, v in points), default=0))
    left, plot_w, plot_h = 60, max(120 * len(runs), 360), 200
    step = plot_w / max(len(runs), 1)
    parts = [_axis_y(left, plot_w, plot_h, top, unit, percent)]

    def xy(run: str, value: float) -> tuple[float, float]:
        return left + step * (runs.index(run) + 0.5), 10 + plot_h - plot_h * (value or 0) / top

    marks = 0
    for s, colour in series.items():
        line = [(r, v) for r, t, v in points if t == s]
        if len(line) > 1:
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(r, v) for r, v in line))
            parts.append(
                f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        for r, v in line:
            x, y = xy(r, v)
            shown = f"{v:.2%}" if percent else f"{esc(v)} {esc(unit)}"
            parts.append(
                f'<circle class="mark" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}">'
                f"<title>{esc(s)} · run {esc(r)}: {esc(shown)}</title></circle>"
            )
            marks += 1
    for r in runs:
        x, _ = xy(r, 0)
        parts.append(
            f'<text class="label" x="{x:.1f}" y="{plot_h + 26}" text-anchor="middle">{esc(r)}</text>'
        )
    svg = _svg(left + plot_w + 20, plot_h + 36, parts)
    return figure(chart_id, title, svg, marks, note, legend(series), footnote)


def _axis_y(left: int, width: float, height: int, top: float, unit: str, percent=False) -> str:
    lines = []
    for i in range(5):
        value = top * i / 4
        y = 10 + height - height * i / 4
        label = (
            f"{value:.{0 if top >= 0.04 else 2}%}"
            if percent
            else fmt(value if value % 1 else int(value))
        )
        lines.append(
            f'<line class="grid" x1="{left}" x2="{left + width:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(label)}</text>'
        )
    lines.append(
        # along the axis, left of the tick labels: above them it would meet the top tick
        f'<text class="tick" transform="rotate(-90)" x="{-(10 + height / 2):.1f}" y="10" '
        f'text-anchor="middle">{esc("share" if percent else unit)}</text>'
    )
    return "".join(lines)


def _axis_x(left: int, width: int, height: int, top: float, unit: str) -> str:
    lines = []
    for i in range(5):
        value = top * i / 4
        x = left + width * i / 4
        lines.append(
            f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height + 4}"/>'
            f'<text class="tick" x="{x:.1f}" y="{height + 18}" text-anchor="middle">'
            f"{esc(fmt(value if value % 1 else int(value)))}</text>"
        )
    lines.append(
        f'<text class="tick" x="{left + width}" y="{height + 30}" text-anchor="end">{esc(unit)}</text>'
    )
    return "".join(lines)


def _svg(width: float, height: float, parts: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height + 12:.0f}" '
        f'viewBox="0 0 {width:.0f} {height + 12:.0f}" role="img">{"".join(parts)}</svg>'
    )


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# -- the lineage diagram ------------------------------------------------------------------


def depths(tasks: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Each task's longest chain of dependencies (0 for a task that needs none)."""
    found: dict[str, int] = {}

    def depth(key: str, seen: tuple[str, ...] = ()) -> int:
        if key in seen:
            raise ValueError(f"dependency cycle through {' -> '.join((*seen, key))}")
        if key not in found:
            found[key] = 1 + max((depth(d, (*seen, key)) for d in tasks[key]), default=-1)
        return found[key]

    for key in tasks:
        depth(key)
    return found


def lineage_svg(tasks: dict[str, tuple[str, ...]]) -> str:
    """Tasks as boxes in columns by dependency depth, depends_on as arrows."""
    level = depths(tasks)
    columns: dict[int, list[str]] = defaultdict(list)
    for key in tasks:  # the file's order within a column (jobs.yml lists them by entity)
        columns[level[key]].append(key)
    box_w, box_h, col_gap, row_gap, pad = 150, 34, 60, 16, 10
    place = {
        key: (pad + d * (box_w + col_gap), pad + i * (box_h + row_gap))
        for d, keys in columns.items()
        for i, key in enumerate(keys)
    }
    width = pad * 2 + (max(columns) + 1) * (box_w + col_gap) - col_gap
    height = pad * 2 + max(len(k) for k in columns.values()) * (box_h + row_gap) - row_gap
    parts = [
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#555"/>'
        "</marker></defs>"
    ]
    for key, needs in tasks.items():
        x2, y2 = place[key]
        for dep in needs:
            x1, y1 = place[dep]
            sx, sy, ex, ey = x1 + box_w, y1 + box_h / 2, x2, y2 + box_h / 2
            mid = (sx + ex) / 2
            parts.append(
                f'<path class="edge" data-from="{esc(dep)}" data-to="{esc(key)}" '
                f'd="M{sx},{sy} C{mid},{sy} {mid},{ey} {ex - 2},{ey}" marker-end="url(#arrow)"/>'
            )
    for key, (x, y) in place.items():
        layer = key.split("_", 1)[0]
        parts.append(
            f'<g class="task" data-task="{esc(key)}"><rect x="{x}" y="{y}" width="{box_w}" '
            f'height="{box_h}" rx="6" fill="{LAYER_COLOURS.get(layer, "#b9c4d0")}"/>'
            f'<text x="{x + box_w / 2}" y="{y + box_h / 2 + 5}" text-anchor="middle">'
            f"{esc(key)}</text></g>"
        )
    return _svg(width, height, parts)


# -- the page ------------------------------------------------------------------------------


def run_label(value: Any) -> str:
    return value.strftime("%m-%d %H:%M") if isinstance(value, datetime) else fmt(value)


def by_run(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["run_started_at"] is None, r["run_started_at"] or 0))


def charts(data: ReportData) -> list[str]:
    ds = data.datasets

    def rows(name: str) -> list[dict[str, Any]]:
        return ds[name].rows if name in ds else []

    def why(name: str) -> str:
        """Why a dataset has no rows, where its query failed (empty otherwise)."""
        if name not in ds:
            return f"dataset {name} is not in the dashboard files"
        return f"query failed: {ds[name].error}" if ds[name].error else ""

    out = []
    # quarantine rate per rule over runs (pipeline_health.quarantine_rate)
    rate = by_run(rows("pipeline_health.quarantine_rate"))
    hit = {r["entity_rule"] for r in rate if r["rows_quarantined"]}
    quiet_rules = len({r["entity_rule"] for r in rate} - hit)
    out.append(
        line_chart(
            "quarantine-rate",
            "Quarantine rate per rule over runs",
            [
                (run_label(r["run_started_at"]), r["entity_rule"], r["quarantine_rate"] or 0.0)
                for r in rate
                if r["entity_rule"] in hit
            ],
            "share of landed rows",
            note=why("pipeline_health.quarantine_rate") or "no rule quarantined a row",
            percent=True,
            footnote=f"{quiet_rules} rules quarantined nothing: not drawn" if quiet_rules else "",
        )
    )
    totals: dict[str, float] = defaultdict(float)
    for r in rate:
        totals[r["entity_rule"]] += r["rows_quarantined"] or 0
    out.append(
        hbar_chart(
            "quarantined-per-rule",
            "Rows quarantined per rule, all runs",
            [(k, "rows", v) for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v],
            "rows",
            note=why("pipeline_health.quarantine_rate"),
        )
    )
    # rows per layer per run (pipeline_health.rows_per_run), summed over entities
    stages = sorted(rows("pipeline_health.rows_per_run"), key=lambda r: r["stage_order"])
    per_stage: dict[tuple[str, str], float] = defaultdict(float)
    for r in by_run(stages):
        per_stage[(run_label(r["run_started_at"]), r["stage"])] += r["row_count"] or 0
    run_order = [run_label(r["run_started_at"]) for r in by_run(stages)]
    out.append(
        grouped_bar_chart(
            "rows-per-stage",
            "Rows per layer and stage, per run",
            sorted(
                ((g, s, v) for (g, s), v in per_stage.items()), key=lambda t: run_order.index(t[0])
            ),
            "rows",
            note=why("pipeline_health.rows_per_run"),
        )
    )
    # task durations (pipeline_health.task_durations)
    durations = by_run(rows("pipeline_health.task_durations"))
    out.append(
        line_chart(
            "task-seconds",
            "Task durations over runs",
            [(run_label(r["run_started_at"]), r["task"], r["seconds"] or 0.0) for r in durations],
            "seconds",
            note=why("pipeline_health.task_durations"),
        )
    )
    latest_run = durations[-1]["run_id"] if durations else None
    out.append(
        hbar_chart(
            "latest-run-tasks",
            f"Tasks of the latest run{f' ({latest_run})' if latest_run else ''}",
            [
                (r["task"], r["status"], r["seconds"] or 0.0)
                for r in sorted(durations, key=lambda r: r["started_at"])
                if r["run_id"] == latest_run
            ],
            "seconds",
            note=why("pipeline_health.task_durations"),
        )
    )
    # deferred backlog and age (pipeline_health.deferred_backlog)
    backlog = rows("pipeline_health.deferred_backlog")
    out.append(
        hbar_chart(
            "deferred-backlog",
            "Deferred rows waiting for their parent, per entity",
            [
                (
                    f"{r['entity']} (oldest {fmt(r['oldest_age_hours'])} h)"
                    if r["oldest_age_hours"] is not None
                    else r["entity"],
                    "rows",
                    r["deferred_rows"],
                )
                for r in backlog
                if r["deferred_rows"]
            ],
            "rows",
            note=why("pipeline_health.deferred_backlog") or "no row is waiting",
        )
    )
    # freshness (pipeline_health.freshness)
    fresh = rows("pipeline_health.freshness")
    out.append(
        hbar_chart(
            "freshness",
            "Hours since each entity last landed in bronze",
            [
                (r["entity"], "hours", r["hours_since_ingested"])
                for r in fresh
                if r["hours_since_ingested"] is not None
            ],
            "hours",
            note=why("pipeline_health.freshness"),
        )
    )
    # rows per reason (quarantine_review.quarantine_by_reason)
    reasons = rows("quarantine_review.quarantine_by_reason")
    per_reason: dict[tuple[str, str], float] = defaultdict(float)
    for r in reasons:
        per_reason[(r["reason"], r["status"])] += r["row_count"]
    order = defaultdict(float)
    for (reason, _), v in per_reason.items():
        order[reason] += v
    out.append(
        hbar_chart(
            "rows-per-reason",
            "Quarantined rows per reason and status",
            sorted(((k, s, v) for (k, s), v in per_reason.items()), key=lambda t: -order[t[0]]),
            "rows",
            note=why("quarantine_review.quarantine_by_reason"),
        )
    )
    return out


def counters(data: ReportData) -> str:
    ds = data.datasets

    def first(name: str) -> dict[str, Any]:
        found = ds.get(name)
        return found.rows[0] if found and found.rows else {}

    latest = first("pipeline_health.latest_run")
    open_rows = first("quarantine_review.open_quarantine")
    backlog = ds.get("pipeline_health.deferred_backlog", Dataset()).rows
    ages = [r["oldest_age_hours"] for r in backlog if r["oldest_age_hours"] is not None]
    items = [
        ("latest-run", "latest run", latest.get("run_id")),
        ("hours-since-run", "hours since the latest run ended", latest.get("hours_since_run_ended")),
        ("run-minutes", "minutes the latest run took", latest.get("wall_minutes")),
        ("failed-tasks", "failed tasks in the latest run", latest.get("failed_tasks")),
        ("deferred-rows", "rows waiting for their parent",
         sum(r["deferred_rows"] for r in backlog) if backlog else None),
        ("deferred-age", "hours the oldest deferred row has waited", max(ages, default=None)),
        ("open-quarantine", "open quarantined rows", open_rows.get("open_rows")),
        ("open-age", "days the oldest open row has waited", open_rows.get("oldest_open_age_days")),
    ]  # fmt: skip
    cells = "".join(
        f'<div class="counter" data-counter="{key}"><b>{esc(value) or "-"}</b>'
        f"<span>{esc(label)}</span></div>"
        for key, label, value in items
    )
    return f'<div class="counters">{cells}</div>'


def table(columns: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]], table_id: str) -> str:
    head = "".join(f"<th>{esc(title)}</th>" for _, title in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="{esc(c)}">{esc(r.get(c))}</td>' for c, _ in columns) + "</tr>"
        for r in rows
    )
    if not rows:
        body = f'<tr><td colspan="{len(columns)}" class="empty">no rows</td></tr>'
    return (
        f'<table id="{esc(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#f5f6f8}
header{background:#1d2430;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:2px 0 0;color:#b9c4d0;font-size:12px}
main{padding:16px 24px;max-width:1500px}h2{font-size:16px;margin:22px 0 8px}
.counters{display:flex;flex-wrap:wrap;gap:10px}
.counter{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:8px 14px;min-width:150px}
.counter b{display:block;font-size:20px}.counter span{font-size:12px;color:#5b6573}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:14px}
figure.chart{background:#fff;border:1px solid #dde1e6;border-radius:8px;margin:0;padding:10px 12px;overflow-x:auto}
figcaption{font-weight:600;margin-bottom:6px}figure.chart svg{max-width:100%;height:auto}svg text{font-size:11px;fill:#2b3340}
svg .tick{fill:#6b7480;font-size:10px}svg .grid{stroke:#e6e9ed}
.legend{display:flex;flex-wrap:wrap;gap:4px 12px;font-size:11px;max-width:640px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
.note,.empty{color:#6b7480;font-size:12px;margin:4px 0 0}
.lineage{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:10px;overflow-x:auto}
.lineage .edge{fill:none;stroke:#555;stroke-width:1.4}.lineage text{font-size:12px;fill:#111}
table{border-collapse:collapse;background:#fff;font-size:12px;width:100%}
th,td{border:1px solid #dde1e6;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#eef0f3}td.record{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all;max-width:560px}
td.reasons{color:#b3261e}
"""

QUARANTINE_COLUMNS = [
    ("quarantined_at", "quarantined at"),
    ("entity", "entity"),
    ("reasons", "reasons"),
    ("status", "status"),
    ("record", "record"),
    ("file", "source file"),
    ("run_id", "run"),
    ("batch_id", "batch"),
]
FRESHNESS_COLUMNS = [
    ("entity", "entity"),
    ("silver_rows", "silver rows"),
    ("newest_updated_at", "newest updated_at"),
    ("newest_ingested_at", "newest landing in bronze"),
    ("hours_since_ingested", "hours since"),
]


def render(data: ReportData) -> str:
    """The whole page."""
    fresh = data.datasets.get("pipeline_health.freshness", Dataset()).rows
    shown = len(data.quarantine)
    latest = data.datasets.get("quarantine_review.latest_quarantined", Dataset())
    total = len(latest.rows)
    failed = f'<p class="note">query failed: {esc(latest.error)}</p>' if latest.error else ""
    masking = (
        "personal fields (conf/pipeline.yml <code>personal</code>) masked as <code>***</code> and "
        "a keyed hash drawn for this page only, as <code>order-pipeline quarantine</code> shows them"
    )
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(data.title)}</title><style>{STYLE}</style></head>
<body><header><h1>{esc(data.title)}</h1>
<p>generated {esc(data.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC"))} from the queries of
src/dashboards/pipeline_health.lvdash.json and quarantine_review.lvdash.json</p></header>
<main>
{counters(data)}
<h2>Pipeline health</h2>
<div class="charts">{"".join(charts(data))}</div>
<h2>Freshness</h2>
{table(FRESHNESS_COLUMNS, fresh, "freshness-table")}
<h2>Job graph</h2>
<div class="lineage" id="lineage" data-tasks="{len(data.tasks)}">{lineage_svg(data.tasks)}</div>
<p class="note">{esc(data.job_source)}: tasks in columns by how many tasks they wait for</p>
<h2>Latest quarantined rows</h2>
<p class="note">the latest {shown} of {total} rows the dashboard lists; {masking}</p>
{failed}{table(QUARANTINE_COLUMNS, data.quarantine, "quarantine-table")}
</main></body></html>
"""
