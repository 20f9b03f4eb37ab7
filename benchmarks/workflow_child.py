"""Child process: run the pipeline's whole workflow (``order-pipeline run``) and record
every streaming progress event of its streams.

The session comes from the project's own factory before the workflow starts (the tasks
then reuse it, as they would anyway), so a StreamingQueryListener can be attached: each
micro-batch's ``durationMs`` (triggerExecution, addBatch, latestOffset, ...) is written as
one JSON line to ``--progress-log``.
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path
from typing import Any

from benchmarks.listener import ProgressListener
from order_pipeline.cli import main as cli
from order_pipeline.common.config import load_profile
from order_pipeline.common.platform import profile_name
from order_pipeline.common.spark import get_spark


class JsonLinesSink:
    """Appends the essentials of each progress event to a JSON Lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def __call__(self, progress: dict[str, Any]) -> None:
        record = {
            "name": progress.get("name"),
            "run_id": progress.get("runId"),
            "batch_id": progress.get("batchId"),
            "timestamp": progress.get("timestamp"),
            "num_input_rows": progress.get("numInputRows"),
            "duration_ms": progress.get("durationMs", {}),
        }
        with self.lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--as-of", required=True)
    parser.add_argument("--progress-log", required=True, type=Path)
    args = parser.parse_args(argv)
    profile = load_profile(profile_name(), args.data_root)
    spark = get_spark(profile)
    listener = ProgressListener(JsonLinesSink(args.progress_log))
    spark.streams.addListener(listener)
    # No grace period after the run: the last stream ends before the gold task, so its
    # events have long been delivered, and a wait would count in the measured wall time.
    status = cli.main(["run", "--data-root", args.data_root, "--as-of", args.as_of])
    spark.streams.removeListener(listener)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
