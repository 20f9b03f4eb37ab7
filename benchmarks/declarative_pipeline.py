"""Peer: the same medallion pipeline declared with Spark Declarative Pipelines (Spark 4.1).

Writes a ``spark-pipeline.yml`` spec into the peer's state folder next to a copy of
benchmarks/sdp/transformations/, then runs ``spark-pipelines run --spec ...`` (the CLI in
the virtualenv's bin/) with the Delta jars and the local profile's Spark settings. A
second call is SDP's default incremental update (streaming tables resume from their
checkpoints, materialized views recompute). After the CLI, the same process reads the
final row counts and gold sums back from the tables (benchmarks/sdp/readback.py: Parquet
footers and the Delta log, no JVM) for the consistency table.

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

from benchmarks.common import ENTITY_ORDER, ChildResult, peer_main, timed
from benchmarks.sdp.readback import column_sums, row_count
from order_pipeline.common import contract
from order_pipeline.common.config import load_profile
from order_pipeline.common.spark import cached_delta_jars

DEFINITIONS = Path(__file__).resolve().parent / "sdp" / "transformations"
CONNECT_MODULES = ("grpc", "grpc_status", "google.rpc", "zstandard")
ERROR_MARKERS = ("Error", "Exception", "error:", "FAILED")
DATABASE = "default"  # exists in a new metastore; SDP does not create schemas
COUNTED = (
    *(f"{layer}_{name}" for layer in ("silver", "quarantine") for name in ENTITY_ORDER),
    *contract.GOLD_TABLES,
)


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


def server_settings(state: Path) -> dict[str, str]:
    """Settings of the Spark Connect server SDP starts: Delta and the local profile's
    settings, as get_spark would configure a classic session."""
    profile = load_profile("local", state)
    jars = [str(j) for j in cached_delta_jars()]
    return {
        "spark.jars": ",".join(jars),
        # The server loads catalog plugins from the driver's class path.
        "spark.driver.extraClassPath": os.pathsep.join(jars),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        # Datasets are Delta by default, not by a format= that SDP would re-apply to the
        # existing tables on every run (see medallion.py).
        "spark.sql.sources.default": "delta",
        "spark.sql.warehouse.dir": str((state / "warehouse").resolve()),
        "spark.sql.session.timeZone": "UTC",
        # SDP resumes from its tables' catalog entries: a catalog that outlives the server
        # process (Hive metastore on Derby, in the peer's state folder) makes the second
        # run an incremental update instead of a failed re-creation.
        "spark.sql.catalogImplementation": "hive",
        "spark.hadoop.javax.jdo.option.ConnectionURL": (
            f"jdbc:derby:;databaseName={(state / 'metastore_db').resolve()};create=true"
        ),
        "spark.driver.extraJavaOptions": (
            f"-Duser.timezone=UTC -Dderby.system.home={state.resolve()}"
        ),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        **profile.spark,
    }


def write_conf_dir(state: Path) -> Path:
    """A SPARK_CONF_DIR whose spark-defaults.conf holds the server's settings.

    Not ``--conf`` options of spark-pipelines: PySpark 4.1.1 hands them to the local
    Connect server in groups of ten (PYSPARK_REMOTE_INIT_CONF_<i>) and keeps only the last
    group (SparkSession._start_connect_server assigns instead of merging), so which
    settings arrive depends on how they hash. spark-defaults.conf is read by the
    spark-submit that launches the server's JVM, memory and class path included.
    """
    conf_dir = state / "spark-conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{key} {value}" for key, value in server_settings(state).items()]
    (conf_dir / "spark-defaults.conf").write_text("\n".join(lines) + "\n")
    return conf_dir


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


def table_path(state: Path, table: str) -> Path:
    """Where a table of the pipeline's database lives: "default" keeps its managed tables
    in the warehouse folder itself."""
    return state / "warehouse" / table


def bronze_rows(state: Path) -> int:
    """Rows in the bronze streaming tables (append-only), 0 before the first run."""
    tables = [table_path(state, f"bronze_{name}") for name in ENTITY_ORDER]
    return sum(row_count(t) for t in tables if t.is_dir())


def read_back(state: Path, result: ChildResult) -> None:
    """Final row counts and gold sums, the figures the other peers report."""
    result.counts = {t: row_count(table_path(state, t)) for t in COUNTED}
    sums = column_sums(table_path(state, contract.PRODUCT_SALES_MONTHLY), ["units", "revenue"])
    result.details["checks"] = {"gold_units": sums["units"], "gold_revenue": sums["revenue"]}


def run(landing: Path, state: Path, as_of: str, result: ChildResult) -> None:
    state.mkdir(parents=True, exist_ok=True)
    spec = write_project(state, landing, as_of)
    cli = Path(sys.executable).parent / "spark-pipelines"
    command = [str(cli), "run", "--spec", str(spec)]
    conf_dir = write_conf_dir(state)
    env = {
        **os.environ,
        "SPARK_CONF_DIR": str(conf_dir.resolve()),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
    }
    missing = missing_modules()
    result.details.update(
        command=command,
        spec=str(spec),
        spark_conf_dir=str(conf_dir),
        missing_python_modules=missing,
    )
    bronze_before = bronze_rows(state)
    with timed(result.stages, "spark_pipelines"):
        returncode, tail = run_cli(command, env)
    result.details["returncode"] = returncode
    if returncode == 0:
        # Part of the peer's measured wall time: reported as its own stage.
        with timed(result.stages, "read_back"):
            read_back(state, result)
            result.rows_in = bronze_rows(state) - bronze_before
        result.details["read_back_seconds"] = result.stages["read_back"]
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
