"""The one place a SparkSession is built.

Locally: a ``local[*]`` session with Delta Lake configured from jars that ``setup`` resolved
once from Maven Central (through Spark's own package resolution) into a cache folder; no
resolution happens at session start. With ORDER_PIPELINE_SPARK_MODE=connect the same engine
runs as a local Spark Connect server and the job gets a Connect session, as on serverless.
On Databricks: the runtime's own session.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

from pyspark.sql import SparkSession

from order_pipeline.common.classcache import archive_path, build_archive, with_archive
from order_pipeline.common.config import Profile, load_profile
from order_pipeline.common.localfs import localfs_jar, localfs_settings
from order_pipeline.common.platform import is_databricks, is_spark_connect, local_spark_mode

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
    """The cached Delta jars; a jar cut short (a setup killed while it copied, a full disk)
    counts as missing, so setup resolves it again instead of a JVM failing on it later."""
    jars = [jar_cache_dir() / name for name in DELTA_JARS]
    missing = [str(j) for j in jars if not j.is_file()]
    if missing:
        raise SparkSetupError(f"Delta Lake jars not found ({', '.join(missing)}); {SETUP_HINT}.")
    broken = [str(j) for j in jars if not zipfile.is_zipfile(j)]
    if broken:
        raise SparkSetupError(f"Delta Lake jars incomplete ({', '.join(broken)}); {SETUP_HINT}.")
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
        staged = target / f".{name}.part"
        shutil.copy2(source, staged)
        os.replace(staged, target / name)  # whole or absent
    (target / "resolved.json").write_text(json.dumps({"package": DELTA_PACKAGE}))
    shutil.rmtree(ivy, ignore_errors=True)


def java_executable() -> Path | None:
    """The java that runs Spark: JAVA_HOME's, else the one on PATH (None: neither)."""
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
    return Path(java) if java else None


def local_filesystem_jar() -> Path | None:
    """The jar of the local file system without a process per file (common/localfs.py),
    built by that java's javac into the jar cache on first use."""
    return localfs_jar(jar_cache_dir(), java_executable())


def class_archive(progress=print) -> Path | None:
    """Build (once) the archive of Spark's classes for sessions of the local profile
    (common/classcache.py); None when this JDK cannot."""
    return build_archive(jar_cache_dir(), check_java(), class_archive_settings(), progress)


def class_archive_settings() -> dict[str, str]:
    """The local profile's session settings, which the archive is built with and for (its
    data root is a placeholder: the build's sessions keep their warehouse in their own work
    folder, common/classcache._child)."""
    profile = load_profile("local", data_root=jar_cache_dir())
    return local_settings(
        profile, "order-pipeline-classes", cached_delta_jars(), local_filesystem_jar()
    )


def check_java() -> Path:
    """The java that runs Spark; SparkSetupError when there is none."""
    java = java_executable()
    if java is None or not java.exists():
        raise SparkSetupError(
            "Java 17 or 21 is needed for Spark 4.1 and was not found on PATH or in JAVA_HOME; "
            "install a JDK (e.g. `apt-get install openjdk-17-jre-headless`)."
        )
    return java


_session: SparkSession | None = None
_session_lock = threading.Lock()


def get_spark(profile: Profile, app_name: str = "order-pipeline") -> SparkSession:
    """Build (once per process) or return the session for this profile. Tasks the local
    runner starts in parallel threads ask at the same time: one builds, the others wait."""
    with _session_lock:
        return _get_or_build(profile, app_name)


def running_spark() -> SparkSession | None:
    """This process's session if one was started and is still live; never starts one."""
    with _session_lock:
        return _session if _session is not None and _is_live(_session) else None


def _is_live(session: SparkSession) -> bool:
    if is_spark_connect(session):
        return not session.is_stopped
    return session._jsc is not None


def _get_or_build(profile: Profile, app_name: str) -> SparkSession:
    global _session
    if _session is not None and _is_live(_session):
        return _session
    if is_databricks():
        _session = SparkSession.builder.getOrCreate()
        use_databricks_schemas(_session, profile)
        return _session
    java = check_java()
    settings = local_settings(profile, app_name, cached_delta_jars(), local_filesystem_jar())
    settings = with_archive(settings, archive_path(jar_cache_dir(), java, settings))
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    master = os.environ.get("ORDER_PIPELINE_MASTER", "local[*]")
    if local_spark_mode() == "connect":
        _session = _start_local_connect(master, settings)
    else:
        builder = SparkSession.builder.master(master)
        for key, value in settings.items():
            builder = builder.config(key, value)
        _session = builder.getOrCreate()
        _session.sparkContext.setLogLevel(os.environ.get("ORDER_PIPELINE_SPARK_LOG", "ERROR"))
    # PySpark logs every SQL error as JSON before raising it; the raised error suffices.
    logging.getLogger("SQLQueryContextLogger").setLevel(logging.CRITICAL)
    return _session


def use_databricks_schemas(spark: SparkSession, profile: Profile) -> None:
    """Point the job's session at the profile's catalog and schema. The bundle creates the
    schemas (with their grants); a missing one is created here so that a run outside the
    bundle works too, and fails with Unity Catalog's own error where that is not allowed."""
    spark.sql(f"USE CATALOG `{profile.catalog}`")
    for schema in dict.fromkeys(s for s in (profile.schema, profile.quarantine_schema) if s):
        if not spark.catalog.databaseExists(f"{profile.catalog}.{schema}"):
            spark.sql(f"CREATE SCHEMA IF NOT EXISTS `{schema}`")
    spark.sql(f"USE SCHEMA `{profile.schema}`")


def local_settings(
    profile: Profile, app_name: str, jars: list[Path], localfs: Path | None = None
) -> dict[str, str]:
    """Every setting of the local engine: Delta, the warehouse, UTC, quiet logs, the local
    file system without a process per file (``localfs``: its jar, when built), and the
    profile's own ``spark`` settings (which win).

    Delta's jars (and the file system's) go on the driver's class path, not ``spark.jars``:
    a local engine's executors run in the driver's JVM, so no executor copies them at start,
    and the class archive (common/classcache.py) can hold their classes too."""
    warehouse = Path(profile.warehouse_root or ".local/warehouse").resolve()
    class_path = [*jars, *([localfs] if localfs is not None else [])]
    settings = {
        "spark.app.name": app_name,
        "spark.driver.extraClassPath": os.pathsep.join(str(j) for j in class_path),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.warehouse.dir": str(warehouse),
        "spark.sql.session.timeZone": "UTC",
        # The throughput collector: on two cores an SF10 cold run took 377.5 s with it and
        # 436.7 s with the JDK's default G1 (same files, one run each, 2026-12-04), with the
        # same peak memory; at SF1 the two were level (121.8-142.0 s against 140.6-140.8 s).
        "spark.driver.extraJavaOptions": (
            "-Duser.timezone=UTC -Dderby.system.home=/tmp -XX:+UseParallelGC"
        ),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.streaming.stopTimeout": "60s",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.log.structuredLogging.enabled": "false",
        "spark.log.level": os.environ.get("ORDER_PIPELINE_SPARK_LOG", "ERROR"),
        **localfs_settings(localfs),
    }
    settings.update(profile.spark)
    return settings


def _start_local_connect(master: str, settings: dict[str, str]) -> SparkSession:
    """A local Spark Connect server with Delta, and a Connect session to it: the engine as
    serverless jobs see it. The server's settings are fixed when its JVM starts (like a
    serverless cluster's), so they go to spark-submit through PYSPARK_SUBMIT_ARGS, not to
    the session (``builder.config`` of a Connect session takes runtime SQL settings only).
    Its foreachBatch functions run in Python workers started with PYSPARK_PYTHON.

    PySpark's own ``builder.remote("local")`` always connects to port 15002, so two local
    servers (two test workers, a test run beside a demo) would meet there: the server binds
    an ephemeral port instead, read back from its JVM, as PySpark's own tests do."""
    from pyspark.sql import SparkSession as ClassicSession
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    server = {**settings, "spark.connect.grpc.binding.port": "0"}
    args = [arg for key, value in server.items() for arg in ("--conf", f"{key}={value}")]
    previous = os.environ.get("PYSPARK_SUBMIT_ARGS")
    os.environ["PYSPARK_SUBMIT_ARGS"] = shlex.join([*args, "pyspark-shell"])
    try:
        # marks the server as local: stopping the Connect session stops it too
        os.environ["SPARK_LOCAL_REMOTE"] = "1"
        ConnectSession._start_connect_server(master, {})
    finally:
        if previous is None:
            os.environ.pop("PYSPARK_SUBMIT_ARGS", None)
        else:
            os.environ["PYSPARK_SUBMIT_ARGS"] = previous
    server_session = ClassicSession._instantiatedSession
    assert server_session is not None, "the local Spark Connect server did not start"
    jvm = server_session._jvm
    service = getattr(jvm, "org.apache.spark.sql.connect.service.SparkConnectService$")
    port = getattr(service, "MODULE$").localPort()
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    return ConnectSession.builder.remote(f"sc://localhost:{port}").getOrCreate()


def stop_spark() -> None:
    global _session
    if _session is not None:
        _session.stop()
        _session = None


if __name__ == "__main__":
    _resolve_in_this_process()
