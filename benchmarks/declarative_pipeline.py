"""Peer: the same medallion pipeline declared with Spark Declarative Pipelines (Spark 4.1).

Writes a ``spark-pipeline.yml`` spec into the peer's state folder next to a copy of
benchmarks/sdp/transformations/, then runs ``spark-pipelines run --spec ...`` (the CLI in
the virtualenv's bin/) with the Delta jars and the local profile's Spark settings. A
second call is SDP's default incremental update (streaming tables resume from their
checkpoints, materialized views recompute).

SDP only runs over Spark Connect: its Python client needs the ``pyspark[pipelines]``
extras (grpcio, grpcio-status, googleapis-common-protos, zstandard). When the CLI cannot
run, the result says "not run" with the CLI's own error text instead of a figure.

    python -m benchmarks.declarative_pipeline --landing L --state DIR --as-of TS --result R.json
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyspark
import yaml

from benchmarks.common import ChildResult, peer_main
from order_pipeline.common.config import load_profile
from order_pipeline.common.spark import cached_delta_jars

DEFINITIONS = Path(__file__).resolve().parent / "sdp" / "transformations"
CONNECT_MODULES = ("grpc", "grpc_status", "google.rpc", "zstandard")
ERROR_MARKERS = ("Error", "Exception", "error:", "FAILED")
DATABASE = "sdp"


def missing_modules() -> list[str]:
    missing = []
    for name in CONNECT_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def write_project(state: Path, landing: Path, as_of: str) -> Path:
    """The spec and a copy of the definitions; the spec's glob is relative to its folder."""
    project = state / "project"
    shutil.rmtree(project / "transformations", ignore_errors=True)
    shutil.copytree(
        DEFINITIONS, project / "transformations", ignore=shutil.ignore_patterns("__pycache__")
    )
    spec = {
        "name": "order_pipeline_sdp",
        "storage": (state / "storage").resolve().as_uri(),
        "database": DATABASE,
        "configuration": {
            "spark.order_pipeline.bench.landing": str(landing.resolve()),
            "spark.order_pipeline.bench.as_of": as_of,
        },
        "libraries": [{"glob": {"include": "transformations/**"}}],
    }
    path = project / "spark-pipeline.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def submit_arguments(state: Path) -> list[str]:
    """spark-submit options for the Spark Connect server SDP starts: Delta and the local
    profile's settings, as get_spark would configure a classic session."""
    profile = load_profile("local", state)
    confs = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.warehouse.dir": str((state / "warehouse").resolve()),
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC -Dderby.system.home=/tmp",
        "spark.ui.enabled": "false",
        **{k: v for k, v in profile.spark.items() if k != "spark.driver.memory"},
    }
    arguments = ["--jars", ",".join(str(j) for j in cached_delta_jars())]
    if memory := profile.spark.get("spark.driver.memory"):
        arguments += ["--driver-memory", memory]
    for key, value in confs.items():
        arguments += ["--conf", f"{key}={value}"]
    return arguments


def run_cli(command: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """Run the CLI, echoing its output, and keep the tail for the error text."""
    tail: list[str] = []
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert child.stdout is not None
    for line in child.stdout:
        print(line, end="", flush=True)
        tail = [*tail[-199:], line.rstrip("\n")]
    return child.wait(), tail


def error_lines(tail: list[str]) -> str:
    marked = [
        line.strip()
        for line in tail
        if any(m in line for m in ERROR_MARKERS) and "Traceback" not in line
    ]
    return "\n".join(marked[-5:] or tail[-5:])


def run(landing: Path, state: Path, as_of: str, result: ChildResult) -> None:
    state.mkdir(parents=True, exist_ok=True)
    spec = write_project(state, landing, as_of)
    cli = Path(sys.executable).parent / "spark-pipelines"
    command = [str(cli), *submit_arguments(state), "run", "--spec", str(spec)]
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
    }
    missing = missing_modules()
    result.details.update(command=command, spec=str(spec), missing_python_modules=missing)
    returncode, tail = run_cli(command, env)
    result.details["returncode"] = returncode
    if returncode == 0:
        return
    result.error = error_lines(tail)
    # Missing Spark Connect client modules mean SDP cannot run here at all: "not run";
    # otherwise the pipeline ran and failed.
    result.status = "not run" if missing else "failed"
    if missing:
        result.error += f"\n(missing Python modules for Spark Connect: {', '.join(missing)})"


def main(argv: list[str] | None = None) -> int:
    return peer_main(__doc__ or "", "--state", run, argv)


if __name__ == "__main__":
    sys.exit(main())
