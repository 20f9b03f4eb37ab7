"""The local engine's file system without a process per file answers as Hadoop's own.

common/java/NoForkLocalFileSystem.java replaces two calls of Hadoop's local file system
that start a process (chmod after each create, readlink in each rename). Delta's commit
protocol leans on both: a rename onto an existing commit file must fail, and a file must
get the permissions Hadoop would give it. Each case runs the same operation through the
session's file system and through a stock Hadoop RawLocalFileSystem and compares.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from py4j.protocol import Py4JJavaError

from order_pipeline.common import localfs
from order_pipeline.common.localfs import FILE_SYSTEM
from order_pipeline.common.spark import java_executable


@pytest.fixture(scope="module")
def hadoop(spark):
    jvm = spark._jvm
    conf = spark._jsc.hadoopConfiguration()
    return jvm, conf


def path(jvm, local: Path):
    return jvm.org.apache.hadoop.fs.Path(local.as_uri())


def stock_raw(jvm, conf):
    raw = jvm.org.apache.hadoop.fs.RawLocalFileSystem()
    raw.initialize(jvm.java.net.URI("file:///"), conf)
    return raw


def test_the_session_uses_it_for_both_hadoop_apis(hadoop):
    jvm, conf = hadoop
    uri = jvm.java.net.URI("file:///")
    assert jvm.org.apache.hadoop.fs.FileSystem.get(uri, conf).getClass().getName() == FILE_SYSTEM
    context = jvm.org.apache.hadoop.fs.FileContext.getFileContext(uri, conf)
    assert context.getDefaultFileSystem().getClass().getName() == f"{FILE_SYSTEM}$Fs"


def test_a_created_file_gets_the_mode_hadoop_gives_it(hadoop, tmp_path):
    jvm, conf = hadoop
    session_fs = jvm.org.apache.hadoop.fs.FileSystem.get(jvm.java.net.URI("file:///"), conf)
    modes = {}
    for name, fs in (("session", session_fs), ("stock", stock_raw(jvm, conf))):
        target = tmp_path / f"{name}.bin"
        stream = fs.create(path(jvm, target))
        stream.write(bytearray(b"x"))
        stream.close()
        modes[name] = stat.S_IMODE(os.stat(target).st_mode)
    assert modes["session"] == modes["stock"] != 0
    # and an explicit mode, as Delta's checkpoint and Spark's state files set one
    permission = jvm.org.apache.hadoop.fs.permission.FsPermission.createImmutable(0o640)
    session_fs.setPermission(path(jvm, tmp_path / "session.bin"), permission)
    assert stat.S_IMODE(os.stat(tmp_path / "session.bin").st_mode) == 0o640


def rename(jvm, conf, source: Path, target: Path) -> None:
    """FileContext.rename(source, target, Rename.NONE): what Delta's log store commits by."""
    context = jvm.org.apache.hadoop.fs.FileContext.getFileContext(
        jvm.java.net.URI("file:///"), conf
    )
    rename_enum = getattr(jvm, "org.apache.hadoop.fs.Options$Rename")
    options = java_array(jvm, rename_enum, [rename_enum.NONE])
    context.rename(path(jvm, source), path(jvm, target), options)


def java_array(jvm, java_class, items):
    array = jvm.java.lang.reflect.Array.newInstance(java_class._java_lang_class, len(items))
    for i, item in enumerate(items):
        array[i] = item
    return array


def test_a_rename_onto_an_existing_commit_file_fails_and_changes_nothing(hadoop, tmp_path):
    jvm, conf = hadoop
    source, target = tmp_path / ".00001.json.tmp", tmp_path / "00001.json"
    source.write_text("mine")
    target.write_text("theirs")
    with pytest.raises(Py4JJavaError, match="FileAlreadyExistsException"):
        rename(jvm, conf, source, target)
    assert (source.read_text(), target.read_text()) == ("mine", "theirs")
    target.unlink()
    rename(jvm, conf, source, target)
    assert not source.exists() and target.read_text() == "mine"
    with pytest.raises(Py4JJavaError, match="FileNotFoundException"):
        rename(jvm, conf, tmp_path / "missing", tmp_path / "anywhere")


def test_link_status_matches_hadoops_for_files_links_and_missing_paths(hadoop, tmp_path):
    jvm, conf = hadoop
    session_fs = jvm.org.apache.hadoop.fs.FileSystem.get(jvm.java.net.URI("file:///"), conf)
    raw = session_fs.getRawFileSystem()
    stock = stock_raw(jvm, conf)
    (tmp_path / "file").write_text("data")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    for name in ("file", "link"):
        mine, theirs = (fs.getFileLinkStatus(path(jvm, tmp_path / name)) for fs in (raw, stock))
        assert (mine.isSymlink(), mine.isFile(), mine.getLen()) == (
            theirs.isSymlink(),
            theirs.isFile(),
            theirs.getLen(),
        )
        if mine.isSymlink():
            assert mine.getSymlink().toString() == theirs.getSymlink().toString()
    with pytest.raises(Py4JJavaError, match="FileNotFoundException"):
        raw.getFileLinkStatus(path(jvm, tmp_path / "missing"))


def test_without_javac_the_session_keeps_hadoops_classes_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    notes: list[str] = []
    assert localfs.localfs_jar(tmp_path / "cache", java_executable(), notes.append) is None
    assert len(notes) == 1 and "no javac" in notes[0]
    assert localfs.localfs_settings(None) == {}
    assert not (tmp_path / "cache").exists()


def test_a_source_that_does_not_compile_is_reported_with_the_compilers_error(tmp_path, monkeypatch):
    monkeypatch.setattr(localfs, "_source", lambda: b"class Broken { int x = ; }")
    notes: list[str] = []
    assert localfs.localfs_jar(tmp_path / "cache", java_executable(), notes.append) is None
    assert "could not compile" in notes[0] and "Broken" in notes[0]
    assert not list((tmp_path / "cache").glob("*.jar"))
