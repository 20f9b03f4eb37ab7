"""A local table's id, properties, file count, row count and version read from its Delta log
in plain Python (common/delta_log.py) agree with what Spark's DESCRIBE DETAIL, HISTORY and a
count say, through every kind of commit the pipeline makes, checkpoints and deletion vectors
included, at the newest version and at each earlier one; where the log is not in a form it
reads, it says so (None) instead of guessing."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from order_pipeline.common import io
from order_pipeline.common.delta_log import (
    delta_log_version,
    earliest_instant,
    newest_timestamp,
    read_log_state,
)
from order_pipeline.common.io import Lakehouse


def assert_agrees(lake: Lakehouse, table: str) -> int:
    """The log's state agrees with Spark's; returns the table's rows."""
    state = read_log_state(Path(lake.table_path(table)))
    assert state is not None
    detail = lake.detail(table)
    history = lake.history(table, 1)[0]
    rows = lake.read(table).count()
    assert (state.table_id, state.properties, state.live_files, state.version, state.rows) == (
        detail["id"],
        dict(detail["properties"] or {}),
        detail["numFiles"],
        history["version"],
        rows,
    )
    assert lake.table_id(table) == detail["id"]
    assert lake.is_empty(table) == (detail["numFiles"] == 0)
    assert lake.version(table) == history["version"]
    assert lake.row_count(table) == rows
    return rows


def test_the_log_read_in_python_agrees_with_spark_through_every_kind_of_commit(spark, ctx):
    lake = Lakehouse(spark, ctx.profile)
    table = "log_state"
    lake.ensure(
        table,
        "id int, v string",
        properties={"delta.enableChangeDataFeed": "true", "delta.checkpointInterval": "3"},
    )
    assert_agrees(lake, table)  # created, empty
    steps = [
        "INSERT INTO log_state VALUES (1, 'a'), (2, 'b')",
        "INSERT INTO log_state VALUES (3, 'c')",
        "MERGE INTO log_state t USING (SELECT 2 AS id, 'B' AS v UNION ALL SELECT 4, 'd') s "
        "ON t.id = s.id WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *",
        "ALTER TABLE log_state SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')",
        "INSERT INTO log_state SELECT /*+ REPARTITION(1) */ * FROM VALUES (5, 'e'), (6, 'f'), "
        "(7, 'g') AS v(id, v)",
        "DELETE FROM log_state WHERE id = 1",
        "DELETE FROM log_state WHERE id = 6",  # a deletion vector on the file of 5, 6 and 7
        "UPDATE log_state SET v = 'x' WHERE id = 3",
        "OPTIMIZE log_state",
        "DELETE FROM log_state",
    ]
    rows = {}
    for statement in steps:
        spark.sql(statement)
        rows[lake.version(table)] = assert_agrees(lake, table)
    log = Path(lake.table_path(table)) / "_delta_log"
    assert any(n.endswith(".checkpoint.parquet") for n in os.listdir(log))  # read through one
    assert lake.is_empty(table)
    # each earlier version, before and after a checkpoint, as time travel counts it
    assert {v: lake.row_count(table, v) for v in rows} == {
        v: lake.read(table, v).count() for v in rows
    }
    assert list(rows.values()) == [2, 3, 4, 4, 7, 6, 5, 5, 5, 0]
    vectors = [
        json.loads(line)["add"].get("deletionVector")
        for commit in sorted(log.glob("*.json"))
        for line in commit.read_text().splitlines()
        if '"add"' in line
    ]
    assert any(v and v["cardinality"] == 1 for v in vectors)  # counted through one
    # each commit's inserted, updated and deleted rows, as its change feed lists them
    versions = range(1, lake.version(table) + 1)
    changes = dict(
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", 1)
        .table(table)
        .where("_change_type != 'update_preimage'")
        .groupBy("_commit_version")
        .count()
        .collect()
    )
    feed = [changes.get(v, 0) for v in versions]
    assert [lake.keys_changed(table, v - 1, v)[0] for v in versions] == feed
    assert lake.keys_changed(table, 0, versions[-1]) == feed
    assert lake.keys_changed(table, 3, 3) == []
    assert feed == [2, 1, 2, 0, 3, 1, 1, 1, 0, 5]  # inserts, MERGE, -, 3 rows, DELETE x2, ...
    with pytest.MonkeyPatch.context() as patch:  # the same from DESCRIBE HISTORY
        patch.setattr(io, "read_commit_infos", lambda *_: None)
        assert lake.keys_changed(table, 0, versions[-1]) == feed


def test_rows_of_files_without_statistics_are_counted_by_spark(spark, ctx):
    lake = Lakehouse(spark, ctx.profile)
    table = "log_no_stats"
    lake.ensure(table, "id int")
    spark.sql(f"INSERT INTO {table} VALUES (1), (2)")
    spark.conf.set("spark.databricks.delta.stats.collect", "false")
    try:
        spark.sql(f"INSERT INTO {table} VALUES (3)")
    finally:
        spark.conf.unset("spark.databricks.delta.stats.collect")
    state = read_log_state(Path(lake.table_path(table)))
    assert state is not None and state.rows is None
    assert lake.row_count(table) == 3


def test_a_log_it_cannot_read_plainly_is_left_to_spark(spark, ctx, tmp_path):
    lake = Lakehouse(spark, ctx.profile)
    table = "log_gap"
    lake.ensure(table, "id int")
    for i in range(3):
        spark.sql(f"INSERT INTO {table} VALUES ({i})")
    folder = Path(lake.table_path(table))
    (folder / "_delta_log" / f"{1:020d}.json").unlink()  # a gap: the state is not knowable
    assert read_log_state(folder) is None
    assert delta_log_version(folder) == 3
    assert read_log_state(tmp_path / "no_table") is None


@pytest.mark.parametrize("content", ["{not json", '{"add": {}}'])
def test_a_damaged_commit_file_is_left_to_spark(spark, ctx, content):
    lake = Lakehouse(spark, ctx.profile)
    table = "log_damaged"
    lake.ensure(table, "id int")
    folder = Path(lake.table_path(table))
    (folder / "_delta_log" / f"{1:020d}.json").write_text(content)
    assert read_log_state(folder) is None


def test_the_rows_an_identity_wrote_are_read_from_its_commits_files(spark, ctx):
    """The rows a stream's idempotent-write identity appended after a version, read from
    the files its commits added, are the rows it appended there: not another writer's,
    not an earlier one's, and not twice when a write of it is replayed (Delta skips it)."""
    lake = Lakehouse(spark, ctx.profile)
    table = "log_written_by"
    lake.ensure(table, "run string, batch int, note string", properties={"delta.checkpointInterval": "2"})  # fmt: skip
    columns = ["run", "batch", "note"]

    def append(rows, txn=None):
        lake.append(spark.createDataFrame(rows, "run string, batch int, note string"), table, txn)

    append([("r0", 0, "before")], io.Txn("stream-a", 0))
    before = lake.log_version(table)
    append([("r1", 1, "héllo, wörld"), ("r1", 1, None)], io.Txn("stream-a", 1))
    append([("r1", 7, "another stream")], io.Txn("stream-b", 1))
    append([("r1", 9, "no identity")])
    append([("r1", 1, "replayed")], io.Txn("stream-a", 1))  # skipped: already committed
    append([("r1", 2, "x" * 5000)], io.Txn("stream-a", 2))
    assert any(n.endswith(".checkpoint.parquet") for n in os.listdir(Path(lake.table_path(table)) / "_delta_log"))  # fmt: skip
    found = lake.rows_written_by(table, before, "stream-a", columns)
    assert found is not None
    expected = [("r1", 1, "héllo, wörld"), ("r1", 1, None), ("r1", 2, "x" * 5000)]
    assert sorted((r["run"], r["batch"], r["note"] or "") for r in found) == sorted(
        (run, batch, note or "") for run, batch, note in expected
    )
    assert len(lake.rows_written_by(table, None, "stream-a", columns) or []) == 4
    assert lake.rows_written_by(table, lake.log_version(table), "stream-a", columns) == []
    # a commit since that removes files (any writer's): what the identity wrote may be gone
    spark.sql(f"UPDATE {table} SET note = 'changed' WHERE batch = 2")
    append([("r1", 3, "after the update")], io.Txn("stream-a", 3))
    assert lake.rows_written_by(table, before, "stream-a", columns) is None
    after_update = lake.log_version(table)
    append([("r1", 4, "later")], io.Txn("stream-a", 4))
    assert lake.rows_written_by(table, after_update, "stream-a", columns) == [
        {"run": "r1", "batch": 4, "note": "later"}
    ]


def test_the_newest_timestamp_is_read_from_file_statistics_where_they_tell_it(spark, ctx):
    """The newest value of a timestamp column from the live files' statistics is Spark's
    maximum to the millisecond (never above it), through files of nulls only and a file
    removed by an overwrite of its rows; where a deletion vector may hide the newest row or
    the column has no statistics, they do not tell it, and it is read from the files."""
    lake = Lakehouse(spark, ctx.profile)
    table = "log_newest"
    lake.ensure(table, "id int, at timestamp", properties={"delta.enableDeletionVectors": "true"})
    assert lake.newest_timestamp(table, "at") == (True, None)  # no file, no value

    def agrees() -> None:
        exact = spark.table(table).agg(F.max("at")).first()[0]
        known, value = lake.newest_timestamp(table, "at")
        assert known
        if exact is None:
            assert value is None
            return
        exact = exact.replace(tzinfo=UTC) if exact.tzinfo is None else exact.astimezone(UTC)
        assert value == exact.replace(microsecond=exact.microsecond // 1000 * 1000)

    spark.sql(f"INSERT INTO {table} VALUES (0, NULL)")
    agrees()
    spark.sql(f"INSERT INTO {table} VALUES (1, TIMESTAMP'2026-12-05 10:00:00.123456'), (2, NULL)")
    agrees()
    spark.sql(f"INSERT INTO {table} VALUES (3, TIMESTAMP'2026-12-05 09:00:00.999999')")
    agrees()
    spark.sql(f"INSERT OVERWRITE {table} SELECT * FROM {table} WHERE id <> 1")  # files replaced
    agrees()
    spark.sql(f"DELETE FROM {table} WHERE id = 3")  # a deletion vector on the file of 0, 2, 3
    folder = Path(lake.table_path(table))
    assert newest_timestamp(read_log_state(folder), "at") == (False, None)  # bounds not tight
    assert lake.newest_timestamp(table, "at") == (True, None)  # read from the file: all null
    spark.sql(
        f"INSERT INTO {table} SELECT /*+ REPARTITION(1) */ * FROM VALUES (4, "
        "TIMESTAMP'2026-12-05 08:00:00.000001'), (5, TIMESTAMP'2026-12-05 11:00:00') AS v(id, at)"
    )
    spark.sql(f"DELETE FROM {table} WHERE id = 5")  # its file's bounds now end at 11:00
    assert lake.newest_timestamp(table, "at") == (True, datetime(2026, 12, 5, 8, 0, 0, 1, UTC))

    bare = "log_newest_no_stats"
    lake.ensure(bare, "id int, at timestamp", properties={"delta.dataSkippingStatsColumns": "id"})
    spark.sql(f"INSERT INTO {bare} VALUES (1, TIMESTAMP'2026-12-05 10:00:00.5')")
    state = read_log_state(Path(lake.table_path(bare)))
    assert newest_timestamp(state, "at") == (False, None)  # no statistics of the column
    assert lake.newest_timestamp(bare, "at") == (True, datetime(2026, 12, 5, 10, 0, 0, 500000, UTC))


def test_the_live_rows_are_read_from_the_files_the_log_lists(spark, ctx):
    """The columns of a table's live rows read with Arrow from the files its log lists are
    Spark's rows, through appends, a MERGE that rewrites files, a checkpoint and a deletion
    vector; None where Spark must fill something in: a column added after some files were
    written, partition values."""
    lake = Lakehouse(spark, ctx.profile)
    table = "log_live"
    lake.ensure(table, "id int, v string, at timestamp", properties={"delta.checkpointInterval": "2"})  # fmt: skip

    def agrees(columns: list[str]) -> None:
        local = lake.read_live(table, columns)
        assert local is not None
        expected = [tuple(r) for r in spark.table(table).select(*columns).collect()]
        key = lambda row: tuple("" if v is None else str(v) for v in row)  # noqa: E731
        assert sorted(map(tuple, (r.values() for r in local.to_pylist())), key=key) == sorted(
            expected, key=key
        )

    assert lake.read_live(table, ["id"]) is None  # no file yet: Spark knows the types
    spark.sql(f"INSERT INTO {table} VALUES (1, 'a', TIMESTAMP'2026-12-05 10:00:00'), (2, NULL, NULL)")  # fmt: skip
    spark.sql(f"INSERT INTO {table} VALUES (3, 'ünïcode, \"quoted\"', TIMESTAMP'2026-12-05 11:00:00')")  # fmt: skip
    agrees(["id", "v"])
    spark.sql(f"INSERT INTO {table} VALUES (7, 'g', TIMESTAMP'2026-12-04 23:59:59.654321')")
    exact = spark.table(table).agg(F.unix_micros(F.min("at"))).first()[0]
    earliest = earliest_instant(lake.read_live(table, ["at"]).column("at"))
    assert earliest == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=exact)
    assert earliest.isoformat() == "2026-12-04T23:59:59.654321+00:00"  # the session is UTC
    spark.sql(
        f"MERGE INTO {table} t USING (SELECT 2 AS id, 'B' AS v, TIMESTAMP'2026-12-06' AS at) s "
        "ON t.id = s.id WHEN MATCHED THEN UPDATE SET *"
    )
    spark.sql(f"DELETE FROM {table} WHERE id = 1")
    log = Path(lake.table_path(table)) / "_delta_log"
    assert any(n.endswith(".checkpoint.parquet") for n in os.listdir(log))
    agrees(["id", "v"])
    assert sorted(lake.read_live(table, ["id"]).column("id").to_pylist()) == [2, 3, 7]
    with pytest.MonkeyPatch.context() as patch:  # more rows than a task reads with Arrow
        patch.setattr(io, "LOCAL_READ_MAX_ROWS", 2)
        assert lake.read_live(table, ["id"]) is None
        patch.setattr(io, "LOCAL_READ_MAX_ROWS", 3)
        assert lake.read_live(table, ["id"]) is not None
    spark.sql(f"ALTER TABLE {table} ADD COLUMNS (extra string)")
    spark.sql(f"INSERT INTO {table} VALUES (4, 'd', NULL, 'new')")
    assert lake.read_live(table, ["id", "extra"]) is None  # older files have no such column
    agrees(["id", "v"])
    spark.sql(f"ALTER TABLE {table} SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    spark.sql(f"INSERT INTO {table} SELECT /*+ REPARTITION(1) */ * FROM VALUES (5, 'e', NULL, NULL), (6, 'f', NULL, NULL) AS t(id, v, at, extra)")  # fmt: skip
    spark.sql(f"DELETE FROM {table} WHERE id = 5")  # a deletion vector hides it in its file
    agrees(["id", "v"])

    parted = "log_live_partitioned"
    spark.sql(f"CREATE TABLE {parted} (id int, day string) USING delta PARTITIONED BY (day)")
    spark.sql(f"INSERT INTO {parted} VALUES (1, '2026-12-05')")
    assert lake.read_live(parted, ["id"]) is None


def test_deletion_vectors_of_every_container_kind_are_read_as_spark_reads_them(spark, ctx):
    """Rows deleted by deletion vectors in files of 1,000 and 200,000 rows: a few (an array
    container), every seventh (bitmap containers, four of them with their offsets), a long
    range (what Roaring may store as runs), then more in a file that has a vector already:
    the live rows read from the files are Spark's, and the vectors' framing is checked
    (size, CRC-32, cardinality)."""
    import numpy as np

    from order_pipeline.common.delta_log import deleted_rows

    lake = Lakehouse(spark, ctx.profile)
    table = "log_vectors"
    lake.ensure(table, "id bigint, part int", properties={"delta.enableDeletionVectors": "true"})
    for part, rows in ((1, 1000), (2, 200_000), (3, 100_000)):
        spark.range(rows).selectExpr("id", f"{part} AS part").repartition(1).write.format(
            "delta"
        ).mode("append").saveAsTable(table)
    spark.sql(f"DELETE FROM {table} WHERE part = 1 AND id IN (0, 7, 999)")
    spark.sql(f"DELETE FROM {table} WHERE part = 2 AND id % 7 = 0")
    spark.sql(f"DELETE FROM {table} WHERE part = 3 AND id BETWEEN 10 AND 70000")
    spark.sql(f"DELETE FROM {table} WHERE part = 3 AND id % 1000 = 1")

    def ids(rows) -> list[tuple[int, int]]:
        return sorted(zip(rows["part"], rows["id"], strict=True))

    local = lake.read_live(table, ["id", "part"])
    assert local is not None
    expected = spark.table(table).select("id", "part").toPandas()
    assert ids(local.to_pydict()) == ids(expected.to_dict("list"))
    assert local.num_rows == 997 + (200_000 - 28_572) + (100_000 - 69_991 - 31)
    state = read_log_state(Path(lake.table_path(table)))
    vectors = [v for v in state.vectors if v is not None]
    assert sorted(v["cardinality"] for v in vectors) == [3, 28_572, 69_991 + 31]  # 1, 70001, ...
    for vector in vectors:
        assert len(np.unique(deleted_rows(Path(lake.table_path(table)), vector))) == int(
            vector["cardinality"]
        )
    broken = dict(vectors[0], sizeInBytes=int(vectors[0]["sizeInBytes"]) - 1)
    with pytest.raises(ValueError, match="size or checksum"):
        deleted_rows(Path(lake.table_path(table)), broken)
