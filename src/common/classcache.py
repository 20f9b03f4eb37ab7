"""A class-data sharing archive of Spark's classes, so a local JVM starts warm.

A local Spark session loads some 26,000 classes (Spark, Scala, Hadoop, Delta's reader and
writer), and its JVM parses and verifies each one at every start: about 5 of the 18 s a
fresh JVM took for its first Delta table, insert, MERGE and reads with the test settings,
about 2 s with the default compilers (measured 2026-12-04). The JDK can map those classes
from an archive instead (AppCDS, JEP 350): ``order-pipeline setup`` runs a small Delta and
streaming workload once in a JVM started with ``-XX:ArchiveClassesAtExit`` and keeps the
archive beside the jars; a local session whose JVM matches it starts with
``-XX:SharedArchiveFile``.

The archive is only valid for the exact JVM build and class path it was dumped with, so
its name is a hash of both (the java binary, PySpark's jars and the session's extra class
path, each by path, size and modification time): a session that differs finds no archive
and starts as before, and a JVM that still refuses one (``-Xshare:auto``) only warns, on
stderr. A truncated or rewritten archive can crash a JVM instead, so a new archive goes live
only after a session that must map it (``-Xshare:on``) ran a query, and sessions use it only
while its seal (size and modification time, recorded then) matches. Classes that the
workload did not load are loaded as usual. Databricks never uses it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PREFIX = "spark-classes-"
SUFFIX = ".jsa"
KEEP = 3  # archives of other class paths kept (another checkout's venv, a JDK update)
WORK_PREFIX = "classes-"  # a build's work folder in the cache (a dump and a warehouse, ~130 MB)
# a work folder this much older than now was left by a build that was killed (a build takes a
# minute or two): the next build removes it; a younger one may be a concurrent setup's
STALE_WORK_SECONDS = 3600
ARCHIVE_FORMAT = "1"  # bump when what goes into an archive's name changes
EXTRA_JAVA_OPTIONS = "spark.driver.extraJavaOptions"
EXTRA_CLASS_PATH = "spark.driver.extraClassPath"
# JVM warnings (an archive it cannot map, say) to stderr: stdout may be a command's answer
JVM_LOG_TO_STDERR = "-Xlog:disable -Xlog:all=warning:stderr"


def _stat(path: Path) -> str:
    try:
        info = path.stat()
    except OSError:
        return f"{path}:missing"
    return f"{path}:{info.st_size}:{info.st_mtime_ns}"


def _spark_jars() -> list[Path]:
    import pyspark

    return sorted((Path(pyspark.__file__).parent / "jars").glob("*.jar"))


def _jvm_library(java: Path) -> Path:
    """libjvm.so of the JDK whose java this is (bin/java -> lib/server/libjvm.so)."""
    return java.resolve().parent.parent / "lib" / "server" / "libjvm.so"


def archive_path(cache: Path, java: Path, settings: dict[str, str]) -> Path:
    """Where the archive for this java and the class path of these session settings is."""
    extra = [p for p in settings.get(EXTRA_CLASS_PATH, "").split(os.pathsep) if p]
    parts = [ARCHIVE_FORMAT, _stat(java.resolve()), _stat(_jvm_library(java))]
    parts += ["extra:" + _stat(Path(p)) for p in extra]
    parts += [_stat(jar) for jar in _spark_jars()]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return cache / f"{PREFIX}{digest}{SUFFIX}"


def seal_path(archive: Path) -> Path:
    return archive.with_name(archive.name + ".ok")


def seal(archive: Path) -> None:
    """Record the archive's size and modification time once it has mapped: a JVM handed a
    truncated or rewritten archive can crash (SIGBUS), so a session only uses an archive its
    seal still describes."""
    info = archive.stat()
    staged = archive.with_name(f"{archive.name}.ok.{os.getpid()}")
    staged.write_text(f"{info.st_size} {info.st_mtime_ns}\n")
    os.replace(staged, seal_path(archive))


def sealed(archive: Path) -> bool:
    try:
        info = archive.stat()
        return seal_path(archive).read_text().split() == [str(info.st_size), str(info.st_mtime_ns)]
    except OSError:
        return False


def with_archive(
    settings: dict[str, str], archive: Path | None, share: str = "auto"
) -> dict[str, str]:
    """``settings`` whose driver JVM maps ``archive`` (when it exists and its seal matches).
    The options go before the driver's own Java options (the profile's included), so that
    those still win: a later ``-Xlog`` or ``-XX:SharedArchiveFile`` of theirs overrides these.
    ``share`` ``on``: a JVM that cannot map it fails instead of starting without it."""
    if archive is None or (share == "auto" and not sealed(archive)):
        return settings
    options = settings.get(EXTRA_JAVA_OPTIONS, "")
    flags = f"{JVM_LOG_TO_STDERR} -XX:SharedArchiveFile={archive} -Xshare:{share}"
    return {**settings, EXTRA_JAVA_OPTIONS: f"{flags} {options}".strip()}


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _child(step: str, work: Path, settings: dict[str, str]) -> subprocess.CompletedProcess:
    """This module as a process of its own (a JVM keeps its options for life), in ``work``,
    where a crashing JVM leaves its report and the session its warehouse."""
    settings = {**settings, "spark.sql.warehouse.dir": str(work / "warehouse")}
    arguments = [f"{k}={v}" for k, v in settings.items()]
    return subprocess.run(
        [sys.executable, "-m", "order_pipeline.common.classcache", step, str(work), *arguments],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )


def _cause(done: subprocess.CompletedProcess) -> str:
    # the dump's own notes (classes it skips) are many and say nothing of the cause
    lines = [line for line in (done.stderr + done.stdout).splitlines() if "][cds" not in line]
    return f"(exit {done.returncode}): {chr(10).join(lines)[-2000:]}"


def maps(archive: Path, settings: dict[str, str], work: Path) -> subprocess.CompletedProcess:
    """Start a session whose JVM must map ``archive`` (``-Xshare:on``: a class path that
    does not match, or a damaged archive, fails it) and run a query."""
    return _child("check", work, with_archive(settings, archive, share="on"))


def build_archive(
    cache: Path,
    java: Path,
    settings: dict[str, str],
    progress: Callable[[str], None] = print,
    warn: Callable[[str], None] = _to_stderr,
) -> Path | None:
    """Build the archive for these session settings (once: a sealed one is returned) by
    running :func:`_train` in a child process whose JVM dumps its classes at exit, then
    starting a session that must map it before it is put in place and sealed. None, after a
    note, when this JDK cannot (no base archive, say): sessions then start as before."""
    archive = archive_path(cache, java, settings)
    if sealed(archive):
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    remove_stale_work(cache)
    progress(f"archiving Spark's classes for faster JVM starts into {archive} (once)...")
    unusable = "\nlocal sessions start without the archive (slower, same results)"
    with tempfile.TemporaryDirectory(prefix=WORK_PREFIX, dir=cache) as tmp:
        work = Path(tmp)
        dumped = work / archive.name
        options = settings.get(EXTRA_JAVA_OPTIONS, "")
        child = {**settings, EXTRA_JAVA_OPTIONS:
                 f"{JVM_LOG_TO_STDERR} -XX:ArchiveClassesAtExit={dumped} {options}".strip()}  # fmt: skip
        done = _child("dump", work, child)
        if done.returncode != 0 or not dumped.is_file() or dumped.stat().st_size == 0:
            warn(f"note: the JVM could not archive Spark's classes {_cause(done)}{unusable}")
            return None
        if (check := maps(dumped, settings, work)).returncode != 0:
            warn(f"note: a JVM could not map the archive it just built {_cause(check)}{unusable}")
            return None
        os.replace(dumped, archive)  # whole or absent, even with two setups at once
        seal(archive)
    others = sorted(
        (a for a in cache.glob(f"{PREFIX}*{SUFFIX}") if a != archive),
        key=lambda a: a.stat().st_mtime,
        reverse=True,
    )
    for old in others[KEEP:]:
        old.unlink(missing_ok=True)
        seal_path(old).unlink(missing_ok=True)
    return archive


def remove_stale_work(cache: Path) -> None:
    """Remove the work folders of builds that were killed before they could clean up."""
    limit = time.time() - STALE_WORK_SECONDS
    for work in cache.glob(f"{WORK_PREFIX}*"):
        try:
            stale = work.is_dir() and work.stat().st_mtime < limit
        except OSError:  # removed meanwhile by its own build
            continue
        if stale:
            shutil.rmtree(work, ignore_errors=True)


def _train(spark, work: Path) -> None:
    """What every task does, small: a JSON-lines file stream into a Delta table through
    foreachBatch (parse, append, MERGE of the newest row per key), then reads, a window, an
    aggregate, a join, Delta's history and a MERGE with deletes outside a stream."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    landing = work / "landing"
    landing.mkdir()
    lines = [f'{{"id": {i % 7}, "seq": {i}, "name": "n{i}", "price": {i}.5}}' for i in range(40)]
    (landing / "part-1.json").write_text("\n".join(lines) + "\n")
    table = str(work / "table")
    schema = "id INT, seq INT, name STRING, price DECIMAL(10,2)"
    spark.sql(f"CREATE TABLE delta.`{table}` ({schema}) USING delta")

    def batch(df, batch_id: int) -> None:
        parsed = df.select(F.from_json("value", schema).alias("r")).select("r.*")
        newest = Window.partitionBy("id").orderBy(F.col("seq").desc())
        latest = parsed.withColumn("n", F.row_number().over(newest)).where("n = 1").drop("n")
        latest.write.format("delta").mode("append").save(str(work / "appended"))
        latest.createOrReplaceTempView("updates")
        df.sparkSession.sql(
            f"MERGE INTO delta.`{table}` t USING updates s ON t.id = s.id "
            "WHEN MATCHED AND s.seq > t.seq THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
        )

    query = (
        spark.readStream.format("text").load(str(landing))
        .writeStream.foreachBatch(batch)
        .option("checkpointLocation", str(work / "checkpoint"))
        .trigger(availableNow=True)
        .start()
    )  # fmt: skip
    query.awaitTermination()
    rows = spark.read.format("delta").load(table)
    rows.groupBy((F.col("id") % 2).alias("odd")).agg(F.sum("price"), F.max("seq")).collect()
    rows.join(spark.range(5), "id", "left_anti").count()
    spark.sql(f"DESCRIBE HISTORY delta.`{table}`").collect()
    spark.sql(
        f"MERGE INTO delta.`{table}` t USING (SELECT 1 AS id) s ON t.id = s.id "
        "WHEN MATCHED THEN DELETE"
    )
    spark.read.format("delta").load(str(work / "appended")).where("seq > 3").count()


def _session(settings: dict[str, str]):
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master("local[2]")
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _dump(work: Path, settings: dict[str, str]) -> None:
    from pyspark import SparkContext

    spark = _session(settings)
    jvm = SparkContext._gateway.proc  # type: ignore[union-attr]
    _train(spark, work)
    spark.stop()
    # the JVM writes the archive as it exits, which it does when its stdin closes
    jvm.stdin.close()
    jvm.wait(timeout=600)


def _check(settings: dict[str, str]) -> None:
    spark = _session(settings)
    assert spark.range(3).count() == 3
    spark.stop()


if __name__ == "__main__":
    try:
        step, work, settings = (
            sys.argv[1],
            Path(sys.argv[2]),
            dict(a.split("=", 1) for a in sys.argv[3:]),
        )
        _dump(work, settings) if step == "dump" else _check(settings)
    except Exception as exc:  # the last line of the note build_archive writes
        lines = str(exc).strip().splitlines() or [""]
        # a Py4JJavaError says the Java exception on its second line, after ": "
        summary = next((line[2:] for line in lines if line.startswith(": ")), lines[0])
        print(f"the workload failed: {type(exc).__name__}: {summary}", file=sys.stderr)
        sys.exit(1)
