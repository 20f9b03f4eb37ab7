"""Damaged state: a checkpoint with files missing, a lost stream id, a deleted table folder,
an unreadable landing folder. Each either resumes exactly once (what Spark recovers from) or
stops with a message naming what is damaged and the way out: never silent loss or doubling.

Every case starts from the same state: three files landed, bronze and silver run (one file, one
bronze commit, per micro-batch: batches 0, 1 and 2). It is built once per module and put back
at the same paths before each case (absolute paths are in the checkpoints), then the case
damages it, lands a fourth file and runs again; tables are compared with an uninterrupted run
of the same.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from builders import customer, land
from conftest import data_root_of, make_context
from pipeline_helpers import quiet

from order_pipeline.common.checkpoint import APP_ID_FILE, CheckpointDamaged
from order_pipeline.common.io import Lakehouse
from order_pipeline.common.landing import LandingUnreadable
from order_pipeline.jobs import bronze, silver
from order_pipeline.jobs.task import TaskContext

ROUNDS = [
    [customer("C0"), customer("C1", email="not-an-address")],
    [customer("C2"), customer("C0", city="Oslo", updated_at="2026-06-01T10:00:00Z")],
    [customer("C3")],
    [customer("C4"), customer("C5", email="also-not-an-address")],
]
WAY_OUT = {
    "bronze": "`order-pipeline run --task bronze_customers --full-refresh --yes`, then "
    "`order-pipeline run --task silver_customers --full-refresh --yes`",
    "silver": "`order-pipeline run --task silver_customers --full-refresh --yes`",
}


def land_round(ctx, number: int) -> None:
    landed = land(ctx.profile.landing_root, "customers", ROUNDS[number], f"round-{number}.json")
    os.utime(landed, (1_800_000_000 + number, 1_800_000_000 + number))  # the file source's order


def run_streams(spark, ctx) -> None:
    bronze.run(spark, ctx, progress=quiet)
    silver.run(spark, ctx, progress=quiet)


def one_file_per_batch(ctx):
    return replace(ctx, entity="customers", profile=replace(ctx.profile, max_files_per_trigger=1))


def checkpoint(ctx, stream: str) -> Path:
    return Path(ctx.profile.checkpoint_root) / f"{stream}_customers"


def snapshot(spark, ctx) -> dict[str, list[tuple]]:
    """Every table the two streams write, without what differs between two runs of the same
    input (times, run ids, the data root in file paths), as sorted lists: a doubled row shows."""
    schema = ctx.profile.schema
    quarantine = Lakehouse(spark, ctx.profile, register=False).quarantine("customers")
    quarantine = quarantine if "." in quarantine else f"{schema}.{quarantine}"

    def rows(query: str) -> list[tuple]:
        return sorted(tuple(r) for r in spark.sql(query).collect())

    base = "regexp_extract(_source_file, '[^/]*$', 0)"
    return {
        "bronze": rows(f"select customer_id, city, email, updated_at, {base}, _batch_id "
                       f"from {schema}.bronze_customers"),
        "silver": rows(f"select customer_id, city, email, updated_at, {base} "
                       f"from {schema}.silver_customers"),
        "quarantine": rows(f"select record.customer_id, reasons, status, batch_id, "
                           f"regexp_extract(source_file, '[^/]*$', 0) from {quarantine}"),
        "metrics": rows(f"select batch_id, rule, rows_checked, rows_failed from "
                        f"{schema}.ops_quality_metrics where entity = 'customers' "
                        f"and source = 'stream'"),  # the batches' rows (dataset checks: per run)
    }  # fmt: skip


@dataclass(frozen=True)
class ThreeBatches:
    """Rounds 0-2 run once into ``ctx``'s data root (kept in ``pristine``), and the tables
    of the uninterrupted run that lands round 3 on top of them."""

    ctx: TaskContext
    pristine: Path
    uninterrupted: dict[str, list[tuple]]

    def restore(self, spark) -> TaskContext:
        """The three batches' state back at its own paths, as a new process would find it."""
        root = data_root_of(self.ctx)
        shutil.rmtree(root)
        shutil.copytree(self.pristine, root, symlinks=True)
        spark._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()  # its snapshots are gone
        spark.catalog.clearCache()
        Lakehouse(spark, self.ctx.profile)  # registers a table a case dropped
        schema = self.ctx.profile.schema
        for table in spark.sql(f"SHOW TABLES IN {schema}").collect():
            spark.sql(f"REFRESH TABLE {schema}.{table.tableName}")
        return self.ctx


@pytest.fixture(scope="module")
def three_batches_run(spark, tmp_path_factory) -> ThreeBatches:
    ctx = one_file_per_batch(make_context(tmp_path_factory.mktemp("damaged")))
    for number in range(3):
        land_round(ctx, number)
    run_streams(spark, ctx)
    pristine = tmp_path_factory.mktemp("pristine") / "root"
    shutil.copytree(data_root_of(ctx), pristine, symlinks=True)
    land_round(ctx, 3)
    run_streams(spark, ctx)
    return ThreeBatches(ctx, pristine, snapshot(spark, ctx))


@pytest.fixture(scope="module")
def uninterrupted(three_batches_run) -> dict[str, list[tuple]]:
    return three_batches_run.uninterrupted


@pytest.fixture
def restored(spark, three_batches_run) -> TaskContext:
    """The state after batches 0-2 of rounds 0-2, restored for this case."""
    return three_batches_run.restore(spark)


@pytest.fixture
def customers(ctx):
    return one_file_per_batch(ctx)


def remove(path: Path) -> None:
    """A checkpoint file and the checksum Spark keeps beside it."""
    path.unlink()
    (path.parent / f".{path.name}.crc").unlink(missing_ok=True)


# -- the checkpoint's logs -------------------------------------------------------------------
# one case per stream, the other file of each (the checks are the same code for both)
@pytest.mark.parametrize(
    "stream, batch", [("bronze", 2), ("silver", 1)], ids=["bronze-newest", "silver-middle"]
)
def test_a_lost_commit_file_reruns_the_batch_exactly_once(
    spark, restored, uninterrupted, stream, batch
) -> None:
    # Spark's own recovery: without commits/2 batch 2 runs again, and its writes are skipped
    # by their Delta txn identity; without commits/1, offsets/2 proves batch 1 ran
    remove(checkpoint(restored, stream) / "commits" / str(batch))
    land_round(restored, 3)
    run_streams(spark, restored)
    assert snapshot(spark, restored) == uninterrupted


@pytest.mark.parametrize(
    "stream, batch", [("bronze", 1), ("silver", 2)], ids=["bronze-middle", "silver-newest"]
)
def test_a_lost_offsets_file_stops_the_stream_naming_the_checkpoint_and_the_way_out(
    spark, restored, stream, batch
) -> None:
    before = snapshot(spark, restored)
    folder = checkpoint(restored, stream)
    remove(folder / "offsets" / str(batch))
    land_round(restored, 3)
    job = {"bronze": bronze, "silver": silver}[stream]
    with pytest.raises(CheckpointDamaged) as refused:
        job.run(spark, restored, progress=quiet)
    message = str(refused.value)
    assert message.startswith(f"checkpoint {folder}: offsets/{batch} is missing")
    assert WAY_OUT[stream] in message
    assert snapshot(spark, restored) == before  # nothing was written


@pytest.mark.parametrize("stream, lost", [("silver", "newest"), ("bronze", "all")])
def test_a_checkpoint_rolled_back_is_refused_not_silently_skipped(
    spark, restored, stream, lost
) -> None:
    # without offsets/2 and commits/2 (or any of them) Spark plans batch 2 again over the new
    # rows, and Delta skips it as written: round 3 would vanish without a word
    folder = checkpoint(restored, stream)
    for log in ("offsets", "commits"):
        for batch in [2] if lost == "newest" else [0, 1, 2]:
            remove(folder / log / str(batch))
    land_round(restored, 3)
    job = {"bronze": bronze, "silver": silver}[stream]
    with pytest.raises(
        CheckpointDamaged, match="the tables hold batch 2 of this stream"
    ) as refused:
        job.run(spark, restored, progress=quiet)
    assert str(refused.value).startswith(f"checkpoint {folder}: ")
    assert WAY_OUT[stream] in str(refused.value)


def test_a_deleted_bronze_checkpoint_is_refused_not_ingested_twice(spark, restored) -> None:
    shutil.rmtree(checkpoint(restored, "bronze"))
    with pytest.raises(CheckpointDamaged, match="the checkpoint is empty or gone, but its tables"):
        bronze.run(spark, restored, progress=quiet)
    assert [r.n for r in spark.sql("select count(*) as n from bronze_customers").collect()] == [5]


# -- the stream's id -------------------------------------------------------------------------
@pytest.mark.parametrize("stream", ["bronze", "silver"])
def test_a_lost_stream_id_is_recovered_from_the_delta_log_and_a_rerun_stays_exactly_once(
    spark, restored, uninterrupted, stream
) -> None:
    folder = checkpoint(restored, stream)
    app_id = (folder / APP_ID_FILE).read_text()
    remove(folder / APP_ID_FILE)
    remove(folder / "commits" / "2")  # so batch 2 runs again: under a new id it would double
    land_round(restored, 3)
    run_streams(spark, restored)
    assert (folder / APP_ID_FILE).read_text() == app_id
    assert snapshot(spark, restored) == uninterrupted


def test_a_lost_stream_id_that_the_logs_cannot_tell_is_refused(spark, customers) -> None:
    # after a full refresh of silver, ops_quality_metrics holds batch 0 of the old stream id
    # and of the new one: either could be the lost one
    land_round(customers, 0)
    run_streams(spark, customers)
    silver.run(spark, replace(customers, full_refresh=True), progress=quiet)
    folder = checkpoint(customers, "silver")
    remove(folder / APP_ID_FILE)
    with pytest.raises(CheckpointDamaged) as refused:
        silver.run(spark, customers, progress=quiet)
    assert str(refused.value).startswith(f"checkpoint {folder}: {APP_ID_FILE} is missing")
    assert "hold 2 identities" in str(refused.value)
    assert WAY_OUT["silver"] in str(refused.value)


# -- tables deleted under a checkpoint ---------------------------------------------------------
@pytest.mark.parametrize(
    "table, stream",
    [("quarantine_customers", "silver"), ("bronze_customers", "bronze")],
)  # fmt: skip
def test_a_deleted_table_folder_stops_its_stream_and_the_way_out_rebuilds_it(
    spark, restored, uninterrupted, table, stream
) -> None:
    # the folder removed, and the table forgotten by this session as a new process would
    Lakehouse(spark, restored.profile).drop(table)
    land_round(restored, 3)
    if stream == "silver":
        bronze.run(spark, restored, progress=quiet)
    job = {"bronze": bronze, "silver": silver}[stream]
    with pytest.raises(CheckpointDamaged) as refused:
        job.run(spark, restored, progress=quiet)
    message = str(refused.value)
    assert message.startswith(f"checkpoint {checkpoint(restored, stream)}: the stream has run")
    assert f"{table} is not the table it wrote" in message
    assert WAY_OUT[stream] in message
    if stream == "bronze":
        # the silver stream that read the old bronze stops too, once bronze is rebuilt
        bronze.run(spark, replace(restored, full_refresh=True), progress=quiet)
        with pytest.raises(CheckpointDamaged, match="the stream read bronze_customers as Delta"):
            silver.run(spark, restored, progress=quiet)
    # the way out, the full refreshes the message names, gives what an uninterrupted run gives
    silver.run(spark, replace(restored, full_refresh=True), progress=quiet)
    rebuilt = snapshot(spark, restored)
    assert rebuilt["silver"] == uninterrupted["silver"]
    assert [r[:3] for r in rebuilt["quarantine"]] == [r[:3] for r in uninterrupted["quarantine"]]


# -- the landing folder ------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["dangling link", "a file"])
def test_a_landing_folder_that_is_not_one_stops_bronze_naming_it(spark, customers, damage) -> None:
    folder = Path(customers.profile.landing_root) / "customers"
    folder.parent.mkdir(parents=True, exist_ok=True)
    if damage == "a file":
        folder.write_text("not a folder")
        expected = "is a file, not a folder"
    else:
        folder.symlink_to(folder.parent / "gone")
        expected = f"is a symbolic link to {folder.parent / 'gone'}, which does not exist"
    with pytest.raises(LandingUnreadable) as refused:
        bronze.run(spark, customers, progress=quiet)
    assert str(refused.value).startswith(
        f"landing folder {folder} {expected}. Nothing was ingested"
    )


# Tests run as root, whom permission bits do not stop: the listing runs in a child process
# that gives up root for nobody (uid 65534) after importing, as a pipeline run by a service
# user meets a folder it may not read. The walk is plain Python: no Spark needed.
UNREADABLE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from order_pipeline.common.landing import LandingUnreadable, index_landing
    os.setgid(65534)
    os.setuid(65534)
    root = Path(sys.argv[1])
    try:
        index = index_landing(root / "landing" / "customers", root / "staging")
        print(json.dumps({"linked": index.linked,
                          "skipped": [[s.file, s.reason] for s in index.skipped]}))
    except LandingUnreadable as exc:
        print(json.dumps({"error": str(exc)}))
    """
)


def list_as_nobody(root: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", UNREADABLE_SCRIPT, str(root)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")
def test_an_unreadable_landing_folder_stops_bronze_and_an_unreadable_sub_folder_is_reported() -> (
    None
):
    root = Path(tempfile.mkdtemp(prefix="unreadable-landing-"))
    try:
        root.chmod(0o755)
        landing = root / "landing" / "customers"
        (landing / "locked").mkdir(parents=True)
        (landing / "locked" / "c2.json").write_text(json.dumps(customer("C2")) + "\n")
        (landing / "c1.json").write_text(json.dumps(customer("C1")) + "\n")
        (root / "landing").chmod(0o755)
        landing.chmod(0o755)
        (root / "staging").mkdir(mode=0o777)
        (root / "staging").chmod(0o777)
        (landing / "locked").chmod(0)
        assert list_as_nobody(root) == {
            "linked": ["c1.json"],
            "skipped": [["locked", "unreadable folder: Permission denied: nothing in it was read"]],
        }
        landing.chmod(0)
        (error,) = list_as_nobody(root).values()
        assert error.startswith(
            f"landing folder {landing} cannot be listed: Permission denied. Nothing was ingested. "
            "Way out: make it a folder the pipeline's user (nobody, uid 65534) can list and read"
        )
    finally:
        for folder in (root / "landing" / "customers", root / "landing" / "customers" / "locked"):
            if folder.exists():
                folder.chmod(0o755)
        shutil.rmtree(root)
