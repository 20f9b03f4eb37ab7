"""The archive of Spark's classes (common/classcache.py): named by exactly what makes it
valid, used only when it exists, mapped by a real session, and a JVM that cannot dump one
leaves nothing behind but a note."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from order_pipeline.common import classcache
from order_pipeline.common.classcache import EXTRA_CLASS_PATH, EXTRA_JAVA_OPTIONS
from order_pipeline.common.config import conf_dir
from order_pipeline.common.spark import class_archive_settings, jar_cache_dir, java_executable

JAVA = java_executable()
pytestmark = pytest.mark.skipif(JAVA is None, reason="needs Java")


def test_the_archive_is_named_by_the_jvm_and_the_class_path(tmp_path):
    jar = tmp_path / "extra.jar"
    jar.write_bytes(b"jar")
    settings = {EXTRA_CLASS_PATH: str(jar), EXTRA_JAVA_OPTIONS: "-Xmx1g"}
    name = classcache.archive_path(tmp_path, JAVA, settings)
    assert name == classcache.archive_path(tmp_path, JAVA, {**settings, "spark.x": "1"})
    assert name.parent == tmp_path and name.name.startswith("spark-classes-")
    # what the JVM checks an archive against changes its name: the class path's jars (by
    # path, size, modification time) and the java that runs it
    assert name != classcache.archive_path(tmp_path, JAVA, {})
    os.utime(jar, ns=(jar.stat().st_atime_ns, jar.stat().st_mtime_ns + 10**9))
    assert name != classcache.archive_path(tmp_path, JAVA, settings)
    other_java = tmp_path / "jdk" / "bin" / "java"
    other_java.parent.mkdir(parents=True)
    other_java.write_text("")
    assert name != classcache.archive_path(tmp_path, other_java, settings)


def test_a_session_gets_the_archive_only_while_its_seal_matches_and_its_own_options_win(
    tmp_path,
):
    settings = {EXTRA_JAVA_OPTIONS: "-XX:TieredStopAtLevel=1 -Xlog:gc:file=gc.log", "k": "v"}
    archive = tmp_path / "spark-classes-x.jsa"
    assert classcache.with_archive(settings, archive) == settings
    assert classcache.with_archive(settings, None) == settings
    archive.write_bytes(b"archive")
    assert classcache.with_archive(settings, archive) == settings  # never mapped: no seal
    classcache.seal(archive)
    options = classcache.with_archive(settings, archive)[EXTRA_JAVA_OPTIONS]
    assert f"-XX:SharedArchiveFile={archive}" in options
    # the profile's options come last: a later -Xlog or archive of theirs overrides ours
    assert options.endswith(settings[EXTRA_JAVA_OPTIONS])
    assert options.index("-Xlog:disable") < options.index("-Xlog:gc")
    assert classcache.with_archive({}, archive)[EXTRA_JAVA_OPTIONS].startswith("-Xlog:disable")
    # rewritten or truncated after it was sealed: a JVM could crash on it, so it is not used
    archive.write_bytes(b"archiv")
    assert classcache.with_archive(settings, archive) == settings


def test_a_jvm_that_cannot_dump_leaves_a_note_and_no_archive(tmp_path):
    # a JVM that does not start (its heap far too small): the workload fails, so the build
    notes: list[str] = []
    settings = {"spark.driver.memory": "1k"}
    assert classcache.build_archive(tmp_path, JAVA, settings, lambda _: None, notes.append) is None
    assert len(notes) == 1 and "could not archive" in notes[0] and "heap" in notes[0]
    assert "the workload failed" in notes[0]
    assert "][cds" not in notes[0]
    assert not list(tmp_path.rglob("*.jsa")) and not list(tmp_path.glob("classes-*"))


def test_a_build_removes_what_a_killed_build_left_and_not_a_running_one(tmp_path):
    # a setup killed while it built leaves its work folder (a dump and a warehouse, ~130 MB
    # on 2026-12-05); the next build removes it, but not a folder a concurrent setup is using
    left = tmp_path / "classes-killed"
    (left / "warehouse").mkdir(parents=True)
    (left / "warehouse" / "part.parquet").write_bytes(b"x" * 1024)
    hours_ago = left.stat().st_mtime - 2 * 3600
    os.utime(left, (hours_ago, hours_ago))
    running = tmp_path / "classes-running"
    running.mkdir()
    unrelated = tmp_path / "classes-notes.txt"  # a file of that name is not a build's folder
    unrelated.write_text("kept")
    os.utime(unrelated, (hours_ago, hours_ago))
    settings = {"spark.driver.memory": "1k"}  # the build itself fails fast
    classcache.build_archive(tmp_path, JAVA, settings, lambda _: None, lambda _: None)
    assert not left.exists() and running.is_dir() and unrelated.read_text() == "kept"


def test_a_delta_jar_cut_short_counts_as_missing_so_setup_resolves_it_again(tmp_path, monkeypatch):
    from order_pipeline.common.spark import DELTA_JARS, SparkSetupError, cached_delta_jars

    monkeypatch.setenv("ORDER_PIPELINE_JAR_CACHE", str(tmp_path))
    cache = jar_cache_dir()
    cache.mkdir(parents=True)
    for name in DELTA_JARS:  # whole jars: small, but zip archives to the last byte
        with zipfile.ZipFile(cache / name, "w") as jar:
            jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n" * 50)
    assert cached_delta_jars() == [cache / name for name in DELTA_JARS]
    cut = cache / DELTA_JARS[0]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a copy killed half way
    with pytest.raises(SparkSetupError, match="incomplete") as raised:
        cached_delta_jars()
    assert str(cut) in str(raised.value) and "make setup" in str(raised.value)


def base_archive_exists() -> bool:
    assert JAVA is not None
    return (classcache._jvm_library(JAVA).parent / "classes.jsa").is_file()


def setup_archive(settings: dict[str, str]) -> Path:
    """The archive `make setup` built for this checkout's class path, in the jar cache."""
    assert JAVA is not None
    archive = classcache.archive_path(jar_cache_dir(), JAVA, settings)
    assert classcache.sealed(archive), (
        f"no archive {archive} for this checkout's class path: `make setup` builds it (another "
        f"checkout's setup evicts it once {classcache.KEEP} other class paths have one); "
        "`make test` runs setup first"
    )
    return archive


@pytest.mark.skipif(
    JAVA is None or not base_archive_exists(),
    reason="this JDK has no default class archive to build on (setup then builds none)",
)
def test_a_local_session_maps_delta_and_spark_classes_from_the_archive_setup_built(tmp_path):
    # the archive `make setup` built (`order-pipeline setup`): a fresh process's session
    # loads its Delta and Spark classes from it, with the profile's own JVM options kept
    setup_archive(class_archive_settings())
    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    log = tmp_path / "classes.log"
    local = yaml.safe_load((conf / "local.yml").read_text())
    local["spark"] = {**local["spark"], EXTRA_JAVA_OPTIONS:
                      f"-Duser.timezone=UTC -Xlog:class+load=info:file={log}"}  # fmt: skip
    (conf / "local.yml").write_text(yaml.safe_dump(local))
    child = (
        "import sys\n"
        "from order_pipeline.common.config import load_profile\n"
        "from order_pipeline.common.spark import get_spark\n"
        "spark = get_spark(load_profile('local', data_root=sys.argv[1]))\n"
        'spark.sql(f"CREATE TABLE delta.`{sys.argv[1]}/t` (a INT) USING delta")\n'
        "spark.stop()\n"
    )
    env = {**os.environ, "ORDER_PIPELINE_CONF": str(conf)}
    done = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = log.read_text().splitlines()
    archived = [line for line in lines if "source: shared objects file (top)" in line]
    assert len(archived) > 10_000, f"{len(archived)} of {len(lines)} classes from the archive"
    assert any(" org.apache.spark.sql.delta.DeltaLog " in line for line in archived)
    assert any(" org.apache.spark.SparkContext " in line for line in archived)
    assert "Unable to use shared archive" not in done.stderr + done.stdout


@pytest.mark.skipif(
    JAVA is None or not base_archive_exists(),
    reason="this JDK has no default class archive to build on (setup then builds none)",
)
def test_a_damaged_archive_fails_the_check_that_puts_an_archive_in_place(tmp_path):
    # a truncated archive crashes a JVM that maps it (SIGBUS): build_archive starts a session
    # that must map a new archive (-Xshare:on) before it goes live; on a truncated copy of
    # the real one that session fails, and its crash report stays in the work folder
    settings = class_archive_settings()
    archive = setup_archive(settings)
    damaged = tmp_path / archive.name
    with archive.open("rb") as whole, damaged.open("wb") as part:
        part.write(whole.read(archive.stat().st_size // 4))
    work = tmp_path / "work"
    work.mkdir()
    assert classcache.maps(damaged, settings, work).returncode != 0
    assert classcache.with_archive(settings, damaged) == settings  # never sealed
    # nor does a class path other than the one it was dumped with pass (a JVM would start
    # without it, and the archive would be dead weight)
    other = tmp_path / "other.jar"
    with zipfile.ZipFile(other, "w") as jar:
        jar.writestr("README", "another jar first on the class path")
    moved = {**settings, EXTRA_CLASS_PATH: f"{other}{os.pathsep}{settings[EXTRA_CLASS_PATH]}"}
    assert classcache.maps(archive, moved, work).returncode != 0
    assert classcache.maps(archive, settings, work).returncode == 0
