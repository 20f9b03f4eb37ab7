"""Hadoop's local file system without a child process per file, for the local engine.

Without Hadoop's native library (on neither PyPI nor Maven Central), Hadoop's local file
system runs ``chmod`` after creating each file and ``readlink`` twice per rename: a Delta
commit started some 24 processes and a demo run 1,447 (Java Flight Recorder, 2026-12-03),
each a few milliseconds of a busy JVM. ``java/NoForkLocalFileSystem.java`` does the same
through java.nio (Hadoop's own code still handles symbolic links and special bits). It is
compiled once, by the JDK's ``javac`` against PySpark's Hadoop jars, into the jar cache;
the local session puts it on the driver's class path. Without ``javac`` the session keeps
Hadoop's own classes: slower, the same files and results. Databricks never uses it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

FILE_SYSTEM = "org.orderpipeline.localfs.NoForkLocalFileSystem"
SOURCE_NAME = "NoForkLocalFileSystem.java"


def _source() -> bytes:
    return files("order_pipeline.common").joinpath("java", SOURCE_NAME).read_bytes()


def _javac(java: Path | None) -> Path | None:
    """The javac beside ``java`` (the JDK that runs Spark), else the one on PATH."""
    if java is not None and (javac := java.resolve().parent / "javac").is_file():
        return javac
    found = shutil.which("javac")
    return Path(found) if found else None


def _hadoop_classpath() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "jars" / "*")


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)  # stdout may be a command's JSON answer


def localfs_jar(
    cache: Path, java: Path | None, warn: Callable[[str], None] = _to_stderr
) -> Path | None:
    """The compiled file system's jar in ``cache`` (built on first use, named by the
    source's hash so an edited source is rebuilt); None, after a warning, when it cannot
    be built here."""
    source = _source()
    jar = cache / f"no-fork-localfs-{hashlib.sha256(source).hexdigest()[:12]}.jar"
    if jar.is_file():
        return jar
    javac = _javac(java)
    if javac is None:
        warn(
            "note: no javac (a JDK's compiler) found: the local engine keeps Hadoop's own "
            "file system, which starts a process per file it writes (slower, same results)"
        )
        return None
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="localfs-", dir=cache) as tmp:
        work = Path(tmp)
        (work / SOURCE_NAME).write_bytes(source)
        classes = work / "classes"
        command = [str(javac), "--release", "17", "-nowarn", "-cp", _hadoop_classpath()]
        done = subprocess.run(
            [*command, "-d", str(classes), str(work / SOURCE_NAME)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            warn(
                f"note: {javac} could not compile {SOURCE_NAME} (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-2000:]}\nthe local engine keeps "
                "Hadoop's own file system (slower, same results)"
            )
            return None
        built = work / jar.name
        with zipfile.ZipFile(built, "w") as archive:
            for path in sorted(classes.rglob("*.class")):
                archive.write(path, path.relative_to(classes).as_posix())
        os.replace(built, jar)  # whole or absent, even with two processes building at once
    for old in cache.glob("no-fork-localfs-*.jar"):  # built from an earlier source
        if old != jar:
            old.unlink(missing_ok=True)
    return jar


def localfs_settings(jar: Path | None) -> dict[str, str]:
    """The session settings that make ``file:`` paths use the jar's file system, for both
    of Hadoop's APIs (FileSystem; FileContext, which Delta's log store and Spark's
    streaming checkpoints rename through). The jar itself goes on the driver's class path
    (common/spark.local_settings)."""
    if jar is None:
        return {}
    return {
        "spark.hadoop.fs.file.impl": FILE_SYSTEM,
        "spark.hadoop.fs.AbstractFileSystem.file.impl": f"{FILE_SYSTEM}$Fs",
    }
