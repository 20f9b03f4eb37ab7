"""Readable tables and JSON Lines for the terminal."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pyspark.sql import DataFrame


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


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "asDict"):
        return value.asDict(recursive=True)
    return str(value)


def json_lines(df: DataFrame, limit: int | None = None) -> list[str]:
    rows = (df.limit(limit) if limit else df).collect()
    return [json.dumps(r.asDict(recursive=True), default=_json_default) for r in rows]
