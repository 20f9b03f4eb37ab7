"""Readable tables and JSON Lines for the terminal."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from order_pipeline.cli.progress import is_terminal


def cell(value: Any, width: int = 48) -> str:
    if value is None:
        text = ""
    elif isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(value, list):
        text = ", ".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], width: int = 48) -> str:
    cells = [[cell(v, width) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, rule, *body]) if body else f"{line}\n{rule}\n(no rows)"


def show(df: DataFrame, limit: int = 50, width: int = 48) -> str:
    rows = df.limit(limit).collect()
    return format_table(df.columns, [tuple(r) for r in rows], width)


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    width: int = 48,
    *,
    console: Any = None,
    out: TextIO | None = None,
) -> None:
    """A table for people at a terminal (rich: a ruled header, each column fitted to the
    screen); the plain padded text of ``format_table`` anywhere else, where logs and scripts
    read it line by line."""
    out = out or sys.stdout
    if console is None and not is_terminal(out):
        print(format_table(columns, rows, width), file=out)
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for name in columns:
        table.add_column(name, max_width=width, overflow="ellipsis")
    for row in rows:
        table.add_row(*(cell(v, width) for v in row))
    if not rows:
        table.caption = "(no rows)"
    (console or Console(file=out)).print(table)


def print_df(df: DataFrame, limit: int = 50, width: int = 48, **where: Any) -> None:
    rows = df.limit(limit).collect()
    print_table(df.columns, [tuple(r) for r in rows], width, **where)


# Timestamps as ISO 8601 in UTC without a zone suffix, as before (the session is UTC).
TO_JSON = {"timestampFormat": "yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]", "ignoreNullFields": "false"}


def json_lines(df: DataFrame, limit: int | None = None) -> list[str]:
    """One JSON object per row, rendered by Spark itself: any value a table can hold prints,
    a timestamp of year 57890 or a map as much as a string (Python could not hold the former)."""
    rows = df.limit(limit) if limit else df
    rendered = rows.select(F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]), TO_JSON))
    return [r[0] for r in rendered.collect()]
