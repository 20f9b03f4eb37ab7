"""The one place a SparkSession is built.

Locally: a ``local[*]`` session with Delta Lake configured from jars that ``setup`` resolved
once from Maven Central (through Spark's own package resolution) into a cache folder; no
resolution happens at session start. On Databricks: the runtime's own session.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from pyspark.sql import SparkSession

from order_pipeline.common.config import Profile
from order_pipeline.common.platform import is_databricks

SPARK_LINE = "4.1"
SCALA = "2.13"
DELTA_VERSION = "4.1.0"
DELTA_PACKAGE = f"io.delta:delta-spark_{SPARK_LINE}_{SCALA}:{DELTA_VERSION}"
# Spark ships its own logging and UC client is only for Unity Catalog OSS servers; the
# jars Delta needs at run time are these two.
DELTA_JARS = (f"io.delta_delta-spark_{SPARK_LINE}_{SCALA}-{DELTA_VERSION}.jar",
              f"io.delta_delta-storage-{DELTA_VERSION}.jar")  # fmt: skip

SETUP_HINT = "run `make setup` (or `order-pipeline setup`) once to install them"


class SparkSetupError(RuntimeError):
    """Java or the Delta jars are missing; the message says what to run."""


def jar_cache_dir() -> Path:
    root = os.environ.get("ORDER_PIPELINE_JAR_CACHE") or Path.home() / ".cache" / "order-pipeline"
    return Path(root) / f"delta-{DELTA_VERSION}-spark-{SPARK_LINE}"


def cached_delta_jars() -> list[Path]:
    jars = [jar_cache_dir() / name for name in DELTA_JARS]
    missing = [str(j) for j in jars if not j.is_file()]
    if missing:
        raise SparkSetupError(f"Delta Lake jars not found ({', '.join(missing)}); {SETUP_HINT}.")
    return jars


def resolve_delta_jars(progress=print) -> list[Path]:
    """Resolve Delta's jars through Spark's package resolution once and cache them.

    Resolution runs in a child process: a JVM started with ``spark.jars.packages`` keeps
    that classpath for its whole life, and this process must build clean sessions later.
    """
    try:
        return cached_delta_jars()
    except SparkSetupError:
        pass
    check_java()
    progress(f"resolving {DELTA_PACKAGE} from Maven Central into {jar_cache_dir()} (once)...")
    done = subprocess.run([sys.executable, "-m", "order_pipeline.common.spark"], check=False)
    if done.returncode != 0:
        raise SparkSetupError(
            f"could not resolve {DELTA_PACKAGE} (exit {done.returncode}); is Maven Central "
            "reachable? The output above has Spark's resolution log."
        )
    return cached_delta_jars()


def _resolve_in_this_process() -> None:
    target = jar_cache_dir()
    ivy = target / "ivy"
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("order-pipeline-setup")
        .config("spark.jars.packages", DELTA_PACKAGE)
        .config("spark.jars.ivy", str(ivy))
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.stop()
    for name in DELTA_JARS:
        source = ivy / "jars" / name
        if not source.is_file():
            raise SparkSetupError(f"resolution finished but {source} is missing")
        shutil.copy2(source, target / name)
    (target / "resolved.json").write_text(json.dumps({"package": DELTA_PACKAGE}))
    shutil.rmtree(ivy, ignore_errors=True)


def check_java() -> None:
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise SparkSetupError(
            "Java 17 or 21 is needed for Spark 4.1 and was not found on PATH or in JAVA_HOME; "
            "install a JDK (e.g. `apt-get install openjdk-17-jre-headless`)."
        )


_session: SparkSession | None = None
_session_lock = threading.Lock()


def get_spark(profile: Profile, app_name: str = "order-pipeline") -> SparkSession:
    """Build (once per process) or return the session for this profile. Tasks the local
    runner starts in parallel threads ask at the same time: one builds, the others wait."""
    with _session_lock:
        return _get_or_build(profile, app_name)


def _get_or_build(profile: Profile, app_name: str) -> SparkSession:
    global _session
    if _session is not None and _session._jsc is not None:
        return _session
    if is_databricks():
        _session = SparkSession.builder.getOrCreate()
        _session.sql(f"USE CATALOG `{profile.catalog}`")
        _session.sql(f"CREATE SCHEMA IF NOT EXISTS `{profile.schema}`")
        _session.sql(f"USE SCHEMA `{profile.schema}`")
        return _session
    check_java()
    jars = cached_delta_jars()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    warehouse = Path(profile.warehouse_root or ".local/warehouse").resolve()
    builder = (
        SparkSession.builder.master(os.environ.get("ORDER_PIPELINE_MASTER", "local[*]"))
        .appName(app_name)
        .config("spark.jars", ",".join(str(j) for j in jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config(
            "spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog"
        )
        .config("spark.sql.warehouse.dir", str(warehouse))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC -Dderby.system.home=/tmp")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.streaming.stopTimeout", "60s")
        .config("spark.databricks.delta.schema.autoMerge.enabled", "false")
        # Delta 4.1's SQL parser drops named parameter markers on Spark 4.1
        # (delta-io/delta#7640); the legacy substitution binds them before parsing.
        .config("spark.sql.legacy.parameterSubstitution.constantsOnly", "true")
        .config("spark.log.structuredLogging.enabled", "false")
    )
    for key, value in profile.spark.items():
        builder = builder.config(key, value)
    _session = builder.getOrCreate()
    _session.sparkContext.setLogLevel(os.environ.get("ORDER_PIPELINE_SPARK_LOG", "ERROR"))
    # PySpark logs every SQL error as JSON before raising it; the raised error suffices.
    logging.getLogger("SQLQueryContextLogger").setLevel(logging.CRITICAL)
    return _session


def stop_spark() -> None:
    global _session
    if _session is not None:
        _session.stop()
        _session = None


if __name__ == "__main__":
    _resolve_in_this_process()
