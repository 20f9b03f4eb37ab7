"""What the benchmark's processes share: fixed inputs, the folder layout and result files."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from order_pipeline.common.config import dependency_order, load_entities

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

# Fixed inputs: the same scale always yields the same landing files and the same answers.
SEED = 42
END_DATE = date(2025, 6, 30)  # last day of batch 0; batch 1 covers the days after it
AS_OF = "2025-07-03T00:00:00+00:00"  # gold's as-of date, after batch 1's window
ENTITY_ORDER = tuple(dependency_order(load_entities()))  # conf/pipeline.yml, parents first

ROOT_MARKER = ".benchmark-root"  # only a folder with this marker is ever wiped

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchPaths:
    """One benchmark's folders: the shared landing data and a state folder per system."""

    root: Path

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def pipeline(self) -> Path:
        """The pipeline's --data-root (its landing is <data-root>/landing by profile)."""
        return self.root

    def peer(self, name: str) -> Path:
        return self.root / "peers" / name

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def probe(self) -> Path:
        return self.root / "probe"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def result(self, name: str) -> Path:
        return self.logs / f"{name}.json"


@dataclass
class ChildResult:
    """What a peer process reports about its own run (written as JSON for the parent)."""

    status: str = "ok"  # ok | not run | failed
    error: str | None = None
    rows_in: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=json_default, sort_keys=False))
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def write_child_result(path: Path, result: ChildResult) -> None:
    write_json(path, result.__dict__)


@contextmanager
def timed(stages: dict[str, float], name: str, progress: Progress = print) -> Iterator[None]:
    """Record the wall seconds of a block under ``name`` and print them."""
    import time

    started = time.perf_counter()
    try:
        yield
    finally:
        stages[name] = round(time.perf_counter() - started, 3)
        progress(f"  {name}: {stages[name]:.1f}s")


def error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def utc_now() -> datetime:
    return datetime.now(UTC)


def landing_files(landing: Path, entity: str) -> list[Path]:
    return sorted((landing / entity).glob("*.json"))


def peer_main(
    description: str,
    state_option: str,
    run: Callable[[Path, Path, str, ChildResult], None],
    argv: list[str] | None = None,
) -> int:
    """The command line every peer child shares: run it, always write its result file."""
    import argparse

    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--landing", required=True, type=Path)
    parser.add_argument(state_option, required=True, type=Path, help="the peer's own state folder")
    parser.add_argument("--as-of", required=True)
    parser.add_argument("--result", required=True, type=Path)
    args = parser.parse_args(argv)
    state = getattr(args, state_option.lstrip("-").replace("-", "_"))
    result = ChildResult()
    try:
        run(args.landing, state, args.as_of, result)
    except Exception as exc:
        result.status, result.error = "failed", error_text(exc)
    write_child_result(args.result, result)
    return 0 if result.status == "ok" else 1
