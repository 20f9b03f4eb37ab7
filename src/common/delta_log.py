"""What a task needs to know about a local Delta table, read from its ``_delta_log`` in plain
Python: its version, id, properties, how many data files and how many rows it has.

``DESCRIBE DETAIL`` and ``DESCRIBE HISTORY`` each run Spark jobs (0.3-1.2 s here); a silver
task asked four of them before its stream started and gold four more. The log is the
table's own record of the same facts (the Delta protocol, PROTOCOL.md: a checkpoint holds
the live ``add`` actions and the newest ``metaData`` as of its version, each later commit
file the actions after it), so locally it is read directly, in milliseconds. The row count is
the protocol's too: each ``add`` records its file's rows in its statistics (``numRecords``)
and a deletion vector how many of them are deleted (``cardinality``); a file written without
statistics leaves the count unknown (None). Each commit also records what it did
(``commitInfo``: the operation and its metrics, as ``DESCRIBE HISTORY`` shows them), from
which ``keys_changed`` tells how many rows it inserted, updated or deleted. The files' column
statistics give a timestamp column's newest value (``newest_timestamp``), and the ``txn``
action of a commit the idempotent-write identity that wrote it, whose added files hold the
rows that identity appended (``read_rows_written_by``: a silver task's batch counts). The
live files themselves, less the rows their deletion vectors delete, hold the table's rows
(``read_live_rows``: the columns a task's dataset checks and deferred backlog aggregate, read
with Arrow in milliseconds where a Spark query costs 0.3-0.9 s warm and seconds cold).

Only the plain forms are read: one single-file classic checkpoint (or none) and JSON
commits. Anything else (a multi-part or V2 checkpoint, a missing commit, an unreadable
file) returns None and the caller asks Spark, which knows every form; so does a table that
is not a local folder (Unity Catalog on Databricks).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

_COMMIT_FILE = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT_FILE = re.compile(r"^(\d{20})\.checkpoint\.parquet$")


@dataclass(frozen=True)
class LogState:
    version: int
    table_id: str
    properties: dict[str, str]
    live_files: int
    rows: int | None  # None: a live file's add has no numRecords statistic
    # each live file's statistics as its add records them (JSON text; None: none recorded)
    stats: tuple[str | None, ...] = field(default=(), repr=False, compare=False)
    # each live file's path relative to the table folder (URL-encoded, as the log writes
    # it), None where partition values hold some of its columns; and its deletion vector
    # (the add's descriptor; None: every row of the file is live)
    paths: tuple[str | None, ...] = field(default=(), repr=False, compare=False)
    vectors: tuple[dict[str, Any] | None, ...] = field(default=(), repr=False, compare=False)


def delta_log_version(table_folder: Path) -> int | None:
    """The newest version of the Delta table in ``table_folder`` from its commit files
    (every commit writes ``_delta_log/<version, 20 digits>.json``; log clean-up removes old
    ones only); None when there is no table there."""
    try:
        names = os.listdir(table_folder / "_delta_log")
    except (FileNotFoundError, NotADirectoryError):
        return None
    versions = [int(m.group(1)) for n in names if (m := _COMMIT_FILE.match(n))]
    return max(versions) if versions else None


def read_log_state(table_folder: Path, version: int | None = None) -> LogState | None:
    """The table's state at ``version`` (default: its newest commit), or None when it cannot
    be read plainly."""
    log = table_folder / "_delta_log"
    try:
        names = os.listdir(log)
    except (FileNotFoundError, NotADirectoryError):
        return None
    commits = sorted(int(m.group(1)) for n in names if (m := _COMMIT_FILE.match(n)))
    last = commits[-1] if commits and version is None else version
    if last is None or last not in commits:
        return None
    checkpoints = [int(m.group(1)) for n in names if (m := _CHECKPOINT_FILE.match(n))]
    start = max((v for v in checkpoints if v <= last), default=None)
    try:
        # live file -> its live rows, statistics and plain path
        files: dict[tuple[str, str | None], _LiveFile] = {}
        metadata: dict[str, Any] | None = None
        if start is not None:
            metadata = _read_checkpoint(log / f"{start:020d}.checkpoint.parquet", files)
        first = 0 if start is None else start + 1
        present = set(commits)
        if any(v not in present for v in range(first, last + 1)):
            return None  # a commit is missing: only Spark can say what the table is
        for commit in range(first, last + 1):
            for line in (log / f"{commit:020d}.json").read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                action = json.loads(line)
                if "add" in action:
                    files[_file_key(action["add"])] = _live(action["add"])
                elif "remove" in action:
                    files.pop(_file_key(action["remove"]), None)
                elif "metaData" in action:
                    metadata = action["metaData"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if metadata is None or not metadata.get("id"):
        return None
    counts = [rows for rows, _, _, _ in files.values()]
    return LogState(
        version=last,
        table_id=str(metadata["id"]),
        properties={str(k): str(v) for k, v in (metadata.get("configuration") or {}).items()},
        live_files=len(files),
        rows=None if None in counts else sum(c for c in counts if c is not None),
        stats=tuple(stats for _, stats, _, _ in files.values()),
        paths=tuple(path for _, _, path, _ in files.values()),
        vectors=tuple(vector for _, _, _, vector in files.values()),
    )


def newest_timestamp(state: LogState, column: str) -> tuple[bool, datetime | None]:
    """The greatest value of the timestamp ``column`` over the live files, from their
    statistics (which keep milliseconds: the value is at most 1 ms below the exact one), and
    whether it is known so: not when a live file has no statistics, no bound for a column it
    holds values of, or bounds that may be wider than its live rows (``tightBounds`` false:
    a deletion vector hides some). (True, None): the column has no value at all."""
    newest: datetime | None = None
    for text in state.stats:
        stats = json.loads(text) if text else None
        if not stats or stats.get("tightBounds") is False or "numRecords" not in stats:
            return False, None
        high = (stats.get("maxValues") or {}).get(column)
        if high is None:
            if (stats.get("nullCount") or {}).get(column) == stats["numRecords"]:
                continue  # every row's value is null
            return False, None
        value = datetime.fromisoformat(str(high).replace("Z", "+00:00"))
        if value.tzinfo is None:
            return False, None
        newest = value if newest is None or value > newest else newest
    return True, newest


def read_commit_infos(
    table_folder: Path, after: int, up_to: int
) -> list[tuple[str, dict[str, str]]] | None:
    """The operation and operation metrics of each commit of the versions (after, up_to], from
    their ``commitInfo`` actions; None when a commit file is missing (log clean-up), cannot be
    read or has no ``commitInfo`` (writers need not write one)."""
    found = []
    log = table_folder / "_delta_log"
    try:
        for commit in range(after + 1, up_to + 1):
            lines = (log / f"{commit:020d}.json").read_text(encoding="utf-8").splitlines()
            infos = [json.loads(line)["commitInfo"] for line in lines if '"commitInfo"' in line]
            info = next((i for i in infos if isinstance(i, dict)), None)
            if info is None or "operation" not in info:
                return None
            metrics = info.get("operationMetrics") or {}
            found.append((str(info["operation"]), {str(k): str(v) for k, v in metrics.items()}))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return found


def read_rows_written_by(
    table_folder: Path, after: int | None, app_id: str, columns: list[str]
) -> list[dict[str, Any]] | None:
    """The ``columns`` of the rows that the commits after version ``after`` (None: every
    commit) added under the idempotent-write identity ``app_id`` (their ``txn`` action), read
    from their data files: the rows the table holds of them, as long as no commit since
    removed a file. None when that cannot be done plainly: a commit file missing or
    unreadable, a commit since that removes files (then they may be gone or rewritten), a file
    with partition values or a deletion vector, or a table with column mapping."""
    import pyarrow.parquet as pq

    log = table_folder / "_delta_log"
    state = read_log_state(table_folder)
    if state is None or state.properties.get("delta.columnMapping.mode", "none") != "none":
        return None
    rows: list[dict[str, Any]] = []
    try:
        for commit in range(0 if after is None else after + 1, state.version + 1):
            text = (log / f"{commit:020d}.json").read_text(encoding="utf-8")
            if app_id not in text and '"remove"' not in text:
                continue
            actions = [json.loads(line) for line in text.splitlines() if line.strip()]
            if any("remove" in a for a in actions):
                return None
            if not any((a.get("txn") or {}).get("appId") == app_id for a in actions):
                continue
            for action in actions:
                add = action.get("add")
                if add is None:
                    continue
                if add.get("partitionValues") or add.get("deletionVector"):
                    return None
                path = table_folder / unquote(add["path"])
                rows.extend(pq.read_table(path, columns=columns).to_pylist())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return rows


def read_live_rows(state: LogState, table_folder: Path, columns: list[str]) -> pa.Table | None:
    """The ``columns`` of every live row of the table at ``state``, read from the live data
    files its log lists, less the rows their deletion vectors delete (one Arrow table, files
    in no particular order). None when that cannot be done plainly: a table with column
    mapping, a live file with partition values, a file or deletion vector unreadable or in
    another form, a file without one of the columns (one written before the column was
    added): Spark knows how to fill each in."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if state.properties.get("delta.columnMapping.mode", "none") != "none" or None in state.paths:
        return None
    try:
        parts = []
        for path, vector in zip(state.paths, state.vectors, strict=True):
            assert path is not None
            part = pq.read_table(table_folder / unquote(path), columns=columns)
            if vector is not None:
                live = np.ones(part.num_rows, dtype=bool)
                live[deleted_rows(table_folder, vector)] = False
                part = part.filter(pa.array(live))
            parts.append(part)
        if not parts:
            return None  # no file to take the column types from: Spark knows the schema
        return pa.concat_tables(parts, promote_options="default")
    except (OSError, ValueError, KeyError, IndexError, pa.ArrowException):
        return None


def release_arrow_memory() -> None:
    """Give the memory Arrow's allocator freed back to the system once a task's reads are
    done: kept for reuse, it would sit beside the JVM's heap for the rest of the run (about
    100 MiB after the unique-key check of SF1's 300,000 line items)."""
    import sys

    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()


# Deletion vectors (PROTOCOL.md, "Deletion Vector Format"): the 64-bit row indexes a file's
# vector deletes, serialized as a RoaringBitmapArray in the portable format, stored in a file
# beside the data (``u``: its name from a Z85-encoded UUID; ``p``: an absolute path) at an
# offset, framed by its size and a CRC-32, or inline in the log (``i``, Z85-encoded).
_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_VALUES = {c: i for i, c in enumerate(_Z85)}
_PORTABLE_MAGIC = 1681511377
_ROARING_COOKIE, _ROARING_COOKIE_RUNS = 12346, 12347


def _z85(text: str) -> bytes:
    if len(text) % 5:
        raise ValueError(f"a Z85 text of {len(text)} characters")
    out = bytearray()
    for start in range(0, len(text), 5):
        number = 0
        for char in text[start : start + 5]:
            number = number * 85 + _Z85_VALUES[char]
        out += number.to_bytes(4, "big")
    return bytes(out)


def deleted_rows(table_folder: Path, vector: dict[str, Any]) -> np.ndarray:
    """The row indexes (in its file) a deletion vector deletes; ValueError when it cannot be
    read as the protocol says (size, checksum, magic number or cardinality do not match)."""
    import zlib
    from uuid import UUID

    kind, where, size = vector["storageType"], str(vector["pathOrInlineDv"]), vector["sizeInBytes"]
    if kind == "i":
        data = _z85(where)[: int(size)]
    else:
        if kind == "u":
            uuid = UUID(bytes=_z85(where[-20:]))
            path = table_folder / where[:-20] / f"deletion_vector_{uuid}.bin"
        elif kind == "p":
            path = Path(unquote(urlparse(where).path))
        else:
            raise ValueError(f"deletion vector storage type {kind!r}")
        with open(path, "rb") as file:
            file.seek(int(vector.get("offset") or 0))
            stored = int.from_bytes(file.read(4), "big")
            data = file.read(int(size))
            checksum = int.from_bytes(file.read(4), "big")
        if stored != int(size) or len(data) != stored or zlib.crc32(data) != checksum:
            raise ValueError(f"deletion vector in {path}: size or checksum does not match")
    rows = _roaring_array(data)
    if len(rows) != int(vector["cardinality"]):
        raise ValueError("deletion vector: its rows do not match its cardinality")
    return rows


def _roaring_array(data: bytes) -> np.ndarray:
    """A RoaringBitmapArray in the portable format: a magic number, the count of 32-bit
    bitmaps, then each with the high 32 bits of its values."""
    import numpy as np

    if int.from_bytes(data[:4], "little") != _PORTABLE_MAGIC:
        raise ValueError("deletion vector: not the portable RoaringBitmapArray format")
    count, position = int.from_bytes(data[4:12], "little"), 12
    parts = [np.zeros(0, dtype=np.int64)]
    for _ in range(count):
        high = int.from_bytes(data[position : position + 4], "little")
        values, position = _roaring_bitmap(data, position + 4)
        parts.append((high << 32) + values.astype(np.int64))
    return np.concatenate(parts)


def _roaring_bitmap(data: bytes, position: int) -> tuple[np.ndarray, int]:
    """One 32-bit Roaring bitmap in its portable serialization (RoaringFormatSpec) at
    ``position``: its values and the position after it."""
    import numpy as np

    cookie = int.from_bytes(data[position : position + 4], "little")
    position += 4
    if cookie & 0xFFFF == _ROARING_COOKIE_RUNS:
        containers = (cookie >> 16) + 1
        runs = data[position : position + (containers + 7) // 8]
        position += (containers + 7) // 8
    elif cookie == _ROARING_COOKIE:
        containers = int.from_bytes(data[position : position + 4], "little")
        runs, position = b"", position + 4
    else:
        raise ValueError("deletion vector: not a portable Roaring bitmap")
    header = np.frombuffer(data, dtype="<u2", count=2 * containers, offset=position)
    position += 4 * containers
    if not runs or containers >= 4:  # an offset per container, not needed read in order
        position += 4 * containers
    values = [np.zeros(0, dtype=np.int64)]
    for index in range(containers):
        base, cardinality = int(header[2 * index]) << 16, int(header[2 * index + 1]) + 1
        if runs and runs[index // 8] >> (index % 8) & 1:
            count = int.from_bytes(data[position : position + 2], "little")
            pairs = np.frombuffer(data, dtype="<u2", count=2 * count, offset=position + 2)
            position += 2 + 4 * count
            chunk = np.concatenate(
                [np.zeros(0, dtype=np.int64)]
                # as Python ints: a run ending at 65535 overflows 16-bit arithmetic
                + [
                    np.arange(int(s), int(s) + int(n) + 1, dtype=np.int64)
                    for s, n in pairs.reshape(-1, 2)
                ]
            )
        elif cardinality <= 4096:
            chunk = np.frombuffer(data, dtype="<u2", count=cardinality, offset=position)
            position += 2 * cardinality
        else:
            bits = np.frombuffer(data, dtype=np.uint8, count=8192, offset=position)
            chunk = np.flatnonzero(np.unpackbits(bits, bitorder="little"))
            position += 8192
        values.append(base + chunk.astype(np.int64))
    return np.concatenate(values), position


def earliest_instant(column: pa.ChunkedArray) -> datetime | None:
    """The earliest value of a timestamp column read from a table's files, to the
    microsecond, as an instant in UTC (Spark writes instants: without a zone in the file,
    the values are UTC); None when it holds no value."""
    return _instant(column, "min")


def latest_instant(column: pa.ChunkedArray) -> datetime | None:
    """The latest value, as ``earliest_instant``."""
    return _instant(column, "max")


def _instant(column: pa.ChunkedArray, which: str) -> datetime | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    micros = pc.cast(column, pa.timestamp("us", tz=column.type.tz), safe=False)
    value = pc.min(micros) if which == "min" else pc.max(micros)
    if not value.is_valid:
        return None
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value.value)


# the metrics of each operation that count the rows it inserted, updated or deleted
_CHANGED_ROW_METRICS = {
    "MERGE": ("numTargetRowsInserted", "numTargetRowsUpdated", "numTargetRowsDeleted"),
    "UPDATE": ("numUpdatedRows",),
    "DELETE": ("numDeletedRows",),
    "WRITE": ("numOutputRows",),
    "STREAMING UPDATE": ("numOutputRows",),
    "CREATE TABLE AS SELECT": ("numOutputRows",),
    "REPLACE TABLE AS SELECT": ("numOutputRows",),
    "CREATE OR REPLACE TABLE AS SELECT": ("numOutputRows",),
}


def keys_changed(operation: str, metrics: dict[str, str] | None) -> int:
    """How many rows a commit inserted, updated or deleted, by its operation metrics: in a
    table with one row per key, that many keys changed (at least). 0 for an operation that
    changes no row (OPTIMIZE, a property change) and for metrics it does not name (a
    DELETE of whole files may not count its rows): a lower bound, never more."""
    metrics = metrics or {}
    total = 0
    for name in _CHANGED_ROW_METRICS.get(operation, ()):
        value = str(metrics.get(name) or 0)
        total += int(value) if value.isdigit() else 0
    return total


def _file_key(action: dict[str, Any]) -> tuple[str, str | None]:
    """A data file's identity: its path and, with deletion vectors, the vector's id."""
    vector = action.get("deletionVector")
    if not vector:
        return action["path"], None
    return action["path"], (
        f"{vector['storageType']}{vector['pathOrInlineDv']}@{vector.get('offset', '')}"
    )


# a live file: its live rows, statistics, path (None: partitioned) and deletion vector
_LiveFile = tuple[int | None, str | None, str | None, dict[str, Any] | None]


def _live(add: dict[str, Any]) -> _LiveFile:
    path = None if add.get("partitionValues") else str(add["path"])
    vector = add.get("deletionVector")
    return _live_rows(add), add.get("stats"), path, dict(vector) if vector else None


def _live_rows(add: dict[str, Any]) -> int | None:
    """The rows of an added file that are not deleted by its deletion vector."""
    stats = json.loads(add["stats"]) if add.get("stats") else {}
    records = stats.get("numRecords")
    if records is None:
        return None
    vector = add.get("deletionVector") or {}
    return int(records) - int(vector.get("cardinality") or 0)


def _read_checkpoint(
    path: Path, files: dict[tuple[str, str | None], _LiveFile]
) -> dict[str, Any] | None:
    """Add the checkpoint's live files (and their live rows) to ``files``; return its
    ``metaData``."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    if "sidecar" in schema.names or "checkpointMetadata" in schema.names:
        raise ValueError(f"{path} is a V2 checkpoint")
    table = pq.read_table(path, columns=["add", "metaData"])
    metadata = None
    for add, meta in zip(
        table.column("add").to_pylist(), table.column("metaData").to_pylist(), strict=True
    ):
        if add is not None:
            files[_file_key(add)] = _live(add)
        elif meta is not None:
            meta = dict(meta)
            configuration = meta.get("configuration")
            if isinstance(configuration, list):  # a Parquet map reads as key/value pairs
                meta["configuration"] = dict(configuration)
            metadata = meta
    return metadata
