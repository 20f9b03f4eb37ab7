"""Without Spark: which landed lines an erasure takes, how a landed file is rewritten (other
bytes exact, atomically, links and index following), and landing retention."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import pytest

from order_pipeline.common.config import ConfigError, load_profile
from order_pipeline.common.landing import (
    INDEX,
    follow_rewrite,
    index_landing,
    retire_ingested,
    rewrite_without,
)
from order_pipeline.transforms.erasure import line_belongs

NEEDLES = ["zq@example.org", "+44 7700 900123", "Zebulon"]


@pytest.mark.parametrize(
    ("line", "belongs"),
    [
        (b'{"customer_id": "C1", "email": "zq@example.org"}', True),
        (b'{"customer_id":"C1","email":"not-an-email"}\r\n', True),
        (b'\xef\xbb\xbf{"customer_id": "C1"}', True),  # a byte order mark
        # someone else's record with an equal value is not the person's
        (b'{"customer_id": "C10", "email": "zq@example.org"}', False),
        (b'{"customer_id": "C2", "first_name": "Zebulon"}', False),
        # a repeated key field: either names the person
        (b'{"customer_id": "C2", "customer_id": "C1"}', True),
        # cut short: the key is still readable (and decides), or no key at all (needles decide)
        (b'{"customer_id": "C1", "email": "zq@exa', True),
        (b'{"customer_id" : "C2", "email": "zq@example.org", "ph', False),
        (b"call me back on +44 7700 900123", True),
        (b"call me back on +44 7700 900999", False),
        (b"\xff\xfe Zebulon \xff", True),  # not UTF-8, no key, a needle
        (b"   \n", False),
        (b'{"customer_id": "C\\u0031"}', True),  # an escaped key is the same key
    ],
)
def test_a_line_belongs_to_the_key_it_names_or_without_a_key_to_a_value_of_the_person(
    line: bytes, belongs: bool
) -> None:
    assert line_belongs(line, "customer_id", "C1", NEEDLES) is belongs


def drop_c1(line: bytes) -> bool:
    return line_belongs(line, "customer_id", "C1", NEEDLES)


def test_rewrite_keeps_every_other_byte_and_the_modification_time(tmp_path: Path) -> None:
    path = tmp_path / "part.json"
    kept = [b'{"customer_id": "C2"}\r\n', b"not json at all\n", b'{"customer_id": "C3"}']
    path.write_bytes(kept[0] + b'{"customer_id": "C1"}\n' + kept[1] + b"Zebulon\n" + kept[2])
    os.utime(path, ns=(1_000_000_000, 1_700_000_000_000_000_000))
    done = rewrite_without(path, drop_c1)
    assert done is not None and (done.lines_removed, done.removed_whole) == (2, False)
    assert path.read_bytes() == b"".join(kept)
    assert path.stat().st_mtime_ns == 1_700_000_000_000_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["part.json"]  # no staged file left
    assert rewrite_without(path, drop_c1) is None  # nothing more to take: untouched


def test_rewrite_of_gzip_and_of_a_file_left_empty(tmp_path: Path) -> None:
    gz = tmp_path / "a.json.gz"
    gz.write_bytes(gzip.compress(b'{"customer_id": "C1"}\n{"customer_id": "C2"}\n'))
    rewrite_without(gz, drop_c1)
    assert gzip.decompress(gz.read_bytes()) == b'{"customer_id": "C2"}\n'
    only = tmp_path / "b.json"
    only.write_bytes(b'{"customer_id": "C1"}\n\n')
    done = rewrite_without(only, drop_c1)
    assert done is not None and done.removed_whole and not only.exists()


def test_the_streams_link_and_index_follow_the_rewrite(tmp_path: Path) -> None:
    landing, staging = tmp_path / "landing" / "customers", tmp_path / "staging"
    landing.mkdir(parents=True)
    path = landing / "x.json"
    path.write_bytes(b'{"customer_id": "C1"}\n{"customer_id": "C2"}\n')
    index_landing(landing, staging)
    (link,) = [p for p in staging.iterdir() if p.name != INDEX]
    assert link.read_bytes() == path.read_bytes()
    follow_rewrite(landing, staging, rewrite_without(path, drop_c1))
    # the link no longer keeps the old content alive, and the index knows the new size
    assert link.read_bytes() == b'{"customer_id": "C2"}\n'
    assert link.stat().st_ino == path.stat().st_ino
    again = index_landing(landing, staging)
    assert again.linked == [] and again.skipped == []  # not "changed after ingestion"
    only = landing / "y.json"
    only.write_bytes(b'{"customer_id": "C1"}\n')
    index_landing(landing, staging)
    follow_rewrite(landing, staging, rewrite_without(only, drop_c1))
    assert sorted(p.name for p in staging.iterdir()) == ["000000000001.json", INDEX]


@pytest.mark.parametrize("mode", ["archive", "delete"])
def test_retention_moves_or_removes_ingested_files_past_their_age(
    tmp_path: Path, mode: str
) -> None:
    landing, staging, archive = tmp_path / "in", tmp_path / "staging", tmp_path / "archive"
    (landing / "sub").mkdir(parents=True)
    old, young = landing / "sub" / "old.json", landing / "young.json"
    old.write_text('{"customer_id": "C1"}\n')
    young.write_text('{"customer_id": "C2"}\n')
    index_landing(landing, staging)
    not_ingested = landing / "later.json"
    not_ingested.write_text("{}\n")
    now = time.time()
    os.utime(old, (now - 40 * 86400, now - 40 * 86400))
    os.utime(not_ingested, (now - 40 * 86400, now - 40 * 86400))
    retired = retire_ingested(landing, staging, mode, 30 * 86400, archive, now)
    assert retired == ["sub/old.json"]
    assert not old.exists() and young.exists() and not_ingested.exists()
    assert (archive / "sub" / "old.json").exists() is (mode == "archive")
    links = sorted(p.name for p in staging.iterdir() if p.name != INDEX)
    assert links == [
        "000000000001.json"
    ]  # young.json stays; the retired file's link is gone with it
    assert retire_ingested(landing, staging, "off", 0, archive, now) == []


def write_profile(conf: Path, landing: dict) -> None:
    import shutil

    from order_pipeline.common.config import conf_dir

    shutil.copytree(conf_dir(), conf)
    text = (conf / "databricks.yml").read_text()
    start = text.index("landing:\n")
    end = text.index("quality:\n")
    block = "landing:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in landing.items())
    (conf / "databricks.yml").write_text(text[:start] + block + text[end:])


def test_retention_settings_are_checked_on_load(tmp_path: Path, monkeypatch) -> None:
    default = load_profile("local", tmp_path)
    assert default.landing.retention == "off"  # nothing moves unless asked
    conf = tmp_path / "conf"
    write_profile(conf, {"retention": "delete", "retention_after": "7 days"})
    monkeypatch.setenv("ORDER_PIPELINE_CONF", str(conf))
    with pytest.raises(ConfigError, match=r"landing\.retention_after"):
        load_profile("databricks", tmp_path)
    conf2 = tmp_path / "conf2"
    write_profile(conf2, {"retention": "archive", "archive_root": ""})
    monkeypatch.setenv("ORDER_PIPELINE_CONF", str(conf2))
    with pytest.raises(ConfigError, match=r"landing\.archive_root"):
        load_profile("databricks", tmp_path)
    conf3 = tmp_path / "conf3"
    write_profile(conf3, {"retention": "archive", "retention_after": "14 days",
                          "archive_root": "/Volumes/main/s/landing/_archive"})  # fmt: skip
    monkeypatch.setenv("ORDER_PIPELINE_CONF", str(conf3))
    landing = load_profile("databricks", tmp_path).landing
    assert (landing.retention, landing.retention_after_seconds) == ("archive", 14 * 86400)
