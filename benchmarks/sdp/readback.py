"""Reading back the tables SDP wrote, without a JVM: the data files of a Parquet table, or
the live ones of a Delta table from its transaction log; row counts from the Parquet
footers, sums with pyarrow.

The Declarative Pipelines peer's wall time includes this read-back, and a classic Spark
session would add a JVM start to it. The Delta reader handles what SDP writes here
(classic checkpoints, appends) and refuses anything else (deletion vectors in use, column
mapping, V2 or catalog-managed commits) rather than miscount.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow.compute as pc
import pyarrow.parquet as pq

# Reader features whose data the checks below cover: deletion vectors are refused when a
# live file carries one, not merely for being enabled (the local profile enables them).
READABLE_FEATURES = {"deletionVectors", "timestampNtz", "vacuumProtocolCheck"}
COMMIT = re.compile(r"^(\d{20})\.json$")
CLASSIC_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(\.\d{10}\.\d{10})?\.parquet$")


class UnsupportedTable(RuntimeError):
    """The table uses a Delta feature this reader does not implement."""


def _checkpoint(log: Path) -> tuple[int, list[dict[str, Any]]]:
    """The newest checkpoint's version and its actions; (-1, []) without one."""
    marker = log / "_last_checkpoint"
    if not marker.is_file():
        return -1, []
    version = json.loads(marker.read_text())["version"]
    parts = [p for p in log.glob(f"{version:020d}.checkpoint*") if CLASSIC_CHECKPOINT.match(p.name)]
    if not parts:
        raise UnsupportedTable(f"{log}: checkpoint {version} is not a classic checkpoint")
    actions = []
    for part in sorted(parts):
        rows = pq.read_table(part, columns=["add", "protocol", "metaData"]).to_pylist()
        actions += [{k: v for k, v in row.items() if v is not None} for row in rows]
    return version, actions


def _check_protocol(table: Path, protocol: dict[str, Any], metadata: dict[str, Any]) -> None:
    features = set(protocol.get("readerFeatures") or [])
    if protocol.get("minReaderVersion", 1) > 3 or features - READABLE_FEATURES:
        raise UnsupportedTable(f"{table}: reader features {sorted(features)}")
    configuration = dict(metadata.get("configuration") or {})  # a checkpoint's: pairs
    mapping = configuration.get("delta.columnMapping.mode", "none")
    if mapping != "none":
        raise UnsupportedTable(f"{table}: column mapping {mapping}")


def _data_path(table: Path, path: str) -> Path:
    parsed = urlparse(path)
    return Path(unquote(parsed.path)) if parsed.scheme else table / unquote(path)


def _file_id(action: dict[str, Any]) -> tuple[str, str | None]:
    """A data file's identity in the log: its path and deletion vector (a DELETE with
    deletion vectors removes and re-adds the same path in one commit)."""
    dv = action.get("deletionVector")
    dv_id = f"{dv['storageType']}{dv['pathOrInlineDv']}@{dv.get('offset')}" if dv else None
    return action["path"], dv_id


def live_files(table: Path) -> list[Path]:
    """The data files of the table's latest version: checkpoint, then every commit after."""
    log = table / "_delta_log"
    version, actions = _checkpoint(log)
    commits = sorted(p for p in log.iterdir() if COMMIT.match(p.name))
    if not commits and version < 0:
        raise UnsupportedTable(f"{table}: no Delta log")
    for commit in commits:
        if int(commit.name[:20]) > version:
            actions += [json.loads(line) for line in commit.read_text().splitlines() if line]
    files: dict[tuple[str, str | None], dict[str, Any]] = {}
    protocol: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    for action in actions:
        if "add" in action:
            files[_file_id(action["add"])] = action["add"]
        elif "remove" in action:
            files.pop(_file_id(action["remove"]), None)
        protocol = action.get("protocol", protocol)
        metadata = action.get("metaData", metadata)
    _check_protocol(table, protocol, metadata)
    if any(a.get("deletionVector") for a in files.values()):
        raise UnsupportedTable(f"{table}: live files with deletion vectors")
    return sorted(_data_path(table, path) for path, _ in files)


def data_files(table: Path) -> list[Path]:
    """A Delta table's live files, or every data file of a Parquet table's folder (names
    starting with "_" or "." are metadata: _SUCCESS, checksums)."""
    if (table / "_delta_log").is_dir():
        return live_files(table)
    if not table.is_dir():
        raise FileNotFoundError(f"{table}: no such table folder")
    return sorted(p for p in table.iterdir() if p.is_file() and p.name[0] not in "_.")


def row_count(table: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in data_files(table))


def column_sums(table: Path, columns: list[str]) -> dict[str, float]:
    """Sum of each column over the live files, as float (0 for an empty table)."""
    files = data_files(table)
    if not files:
        return dict.fromkeys(columns, 0.0)
    data = pq.read_table([str(f) for f in files], columns=columns)
    return {c: float(pc.sum(data.column(c)).as_py() or 0) for c in columns}
