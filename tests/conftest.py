"""One local Spark session for the whole test run, small-data settings, and a fresh
lakehouse (own schema, own folders) per test that needs one."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

os.environ.setdefault("ORDER_PIPELINE_MASTER", "local[2]")
os.environ["TZ"] = "UTC"  # collected timestamps are naive: read them as UTC
time.tzset()

# A worker's session lives for the whole run (20-odd minutes) and plans thousands of small
# queries: there C2's compiled Catalyst pays back its compilation. With C2 (both workers, two
# cores): test_silver.py + test_damaged_state.py in 331 s against 419 s with C1 alone.
WORKER_JAVA_OPTIONS = "-Duser.timezone=UTC -XX:+UseSerialGC"

TEST_SPARK_SETTINGS = {
    "spark.sql.shuffle.partitions": "1",
    "spark.default.parallelism": "2",
    "spark.databricks.delta.snapshotPartitions": "1",
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "32",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",  # VACUUM's listing job
    "spark.ui.enabled": "false",
    "spark.sql.adaptive.enabled": "false",
    "spark.databricks.delta.stalenessLimit": "0",
    "spark.sql.streaming.minBatchesToRetain": "10",
    "spark.driver.memory": "2g",
    # Rows are few and plans many: compiling generated code for each plan costs more than
    # interpreting it (a loop of small appends, MERGEs and reads took 25% less JVM CPU time).
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    # A test's child process (a killed task, a second runner) lives for tens of seconds: the
    # C1 compiler alone and a serial GC suit it on two cores (test_exactly_once.py, whose
    # children are killed tasks: 276 s against 305 s with C2 in the children). The session
    # of a test worker gets WORKER_JAVA_OPTIONS. C1 alone reserves a 48 MiB code cache, which
    # a child living longer than ~30 s fills ("CodeCache is full. Compiler has been disabled":
    # the rest of its run interpreted): the serverless module's graph runs on Connect, 88 and
    # 94 s with it, 81 and 76 s with the full tiered reservation (240 MiB, reserved not used).
    "spark.driver.extraJavaOptions": (
        f"{WORKER_JAVA_OPTIONS} -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m"
    ),
}


# Dataset checks a test conf keeps (tests/conftest.py test_conf): reconciliation costs a batch
# nothing it does not count anyway, and at severity fail it guards every crash and replay test;
# the others (freshness, volume, unique keys, gold references: ~2 s of reads and one append per
# silver or gold task) are judged in the modules that use the repository's conf unchanged
# (`pytestmark = pytest.mark.usefixtures("repository_conf")`).
TEST_DATASET_CHECKS = {"reconciliation"}
REPOSITORY_CONF = (
    None if os.environ.get("ORDER_PIPELINE_CONF") else Path(__file__).parents[1] / "conf"
)


def trimmed_conf(source: Path, target: Path) -> Path:
    """A copy of ``source`` whose quality files keep only TEST_DATASET_CHECKS; everything
    above their ``dataset_checks:`` list (the last key of each) keeps its text, so tests that
    edit a copy by text find what the repository's file has."""
    import shutil

    import yaml

    shutil.copytree(source, target)
    for rules in sorted((target / "quality").glob("*.yml")):
        text = rules.read_text(encoding="utf-8")
        checks = yaml.safe_load(text).get("dataset_checks") or []
        kept = [c for c in checks if c.get("kind") in TEST_DATASET_CHECKS]
        head = text[: text.index("\ndataset_checks:") + 1]
        rules.write_text(head + yaml.safe_dump({"dataset_checks": kept}, sort_keys=False))
    return target


@pytest.fixture(scope="session", autouse=True)
def test_conf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """Every test reads a trimmed copy of conf/ (TEST_DATASET_CHECKS) unless its module asks
    for ``repository_conf``; a run with ORDER_PIPELINE_CONF set keeps that conf throughout."""
    if REPOSITORY_CONF is None:
        yield None
        return
    conf = trimmed_conf(REPOSITORY_CONF, tmp_path_factory.mktemp("test-conf") / "conf")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORDER_PIPELINE_CONF", str(conf))
        yield conf


@pytest.fixture(scope="module")
def repository_conf(test_conf) -> Iterator[None]:
    """The module's tests read conf/ as the repository has it (every dataset check)."""
    with pytest.MonkeyPatch.context() as patch:
        if REPOSITORY_CONF is not None:
            patch.setenv("ORDER_PIPELINE_CONF", str(REPOSITORY_CONF))
        yield


def make_context(root: Path, **overrides):
    from order_pipeline.common.config import GoldSettings, load_entities, load_profile
    from order_pipeline.jobs.task import TaskContext

    schema = f"t_{uuid.uuid4().hex[:10]}"
    profile = load_profile("local", root, {"schema": schema})
    # gold builds incrementally however large the change, so tests reach that path
    profile = replace(
        profile,
        spark={**profile.spark, **TEST_SPARK_SETTINGS},
        gold=GoldSettings(max_incremental_share=1.0),
    )
    return TaskContext(
        profile=profile,
        entities=load_entities(),
        run_id=f"test-{uuid.uuid4().hex[:6]}",
        **overrides,
    )


def data_root_of(ctx) -> Path:
    """The local data root a test context's profile was loaded with."""
    return Path(ctx.profile.warehouse_root).parent


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from order_pipeline.common.classcache import EXTRA_JAVA_OPTIONS
    from order_pipeline.common.spark import get_spark, stop_spark

    ctx = make_context(tmp_path_factory.mktemp("spark"))
    java = {EXTRA_JAVA_OPTIONS: WORKER_JAVA_OPTIONS}
    profile = replace(ctx.profile, spark={**ctx.profile.spark, **java})
    session = get_spark(profile, app_name="order-pipeline-tests")
    yield session
    stop_spark()


@pytest.fixture
def ctx(spark, tmp_path: Path):
    """A task context on a fresh schema and data root; tests replace() entity etc."""
    return make_context(tmp_path)
