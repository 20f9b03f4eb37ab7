"""Bronze: land every line of ``<landing>/<entity>/`` in ``bronze_<entity>``, exactly once.

Each line is parsed by the data contract (transforms/parse.py): malformed lines are kept
with their raw text in ``_corrupt_record``, what parsing found in ``_parse_issues`` (with the
line in ``_raw_line``), fields outside the contract in ``_rescued_data``; silver decides what
to do with them. Each micro-batch is appended with Delta's idempotent-write identity, so a
batch replayed after a crash (written, but not yet committed to the checkpoint) is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from order_pipeline.common.config import Profile
from order_pipeline.common.contract import (
    BATCH_ID,
    INGESTED_AT,
    RUN_ID,
    bronze_checkpoint,
    bronze_ddl,
    bronze_schema,
    bronze_table,
    bronze_task,
    personal_properties,
    silver_task,
)
from order_pipeline.common.inputs import (
    Consumed,
    Inputs,
    Versions,
    checkpoint_due,
    listing_fingerprint,
)
from order_pipeline.common.io import Lakehouse, Txn, rows_written
from order_pipeline.jobs.task import (
    TaskContext,
    TaskResult,
    context_from_args,
    full_refresh_way_out,
    run_entry_point,
    task_parser,
)
from order_pipeline.transforms.parse import parse_lines


def with_ingest_metadata(batch_id: int, run_id: str) -> Callable[[DataFrame], DataFrame]:
    def transform(df: DataFrame) -> DataFrame:
        return df.withColumns(
            {
                INGESTED_AT: F.current_timestamp(),
                BATCH_ID: F.lit(batch_id).cast("bigint"),
                RUN_ID: F.lit(run_id),
            }
        )

    return transform


@dataclass(frozen=True)
class BronzeBatch:
    """The ``foreachBatch`` function of a bronze stream; plain settings only, so that it
    pickles for Spark Connect, where it runs in another Python process."""

    profile: Profile
    table: str
    columns: tuple[str, ...]
    run_id: str
    app_id: str

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        rows = batch.transform(with_ingest_metadata(batch_id, self.run_id)).select(*self.columns)
        lake = Lakehouse.for_batch(batch, self.profile)
        lake.append(rows, self.table, Txn(self.app_id, batch_id))


class BronzeOutdated(RuntimeError):
    """The bronze table predates the columns this version writes."""


def inputs(ctx: TaskContext, versions: Versions, previous: Consumed | None) -> Inputs:
    """The landing folder's listing, and the settings that decide what of it is read; due
    while the bronze table is missing or its stream has a batch in flight."""
    entity, profile = ctx.entity_spec(), ctx.profile
    checkpoint = Path(profile.checkpoint_root) / bronze_checkpoint(entity.name)
    due = None
    if versions(bronze_table(entity.name)) is None:
        due = f"{bronze_table(entity.name)} does not exist"
    else:
        due = checkpoint_due(checkpoint, ran_before=previous is not None)
    landing = Path(profile.landing_root) / entity.name
    try:
        listing = listing_fingerprint(landing)
    except OSError as exc:  # the task runs and its stream says what is wrong
        listing, due = None, due or f"{landing} could not be listed ({exc})"
    values = {
        "landing": listing,
        "landing_settings": asdict(profile.landing),
        "contract": entity.ddl(),
    }
    return Inputs(values, due)


def run(
    spark: SparkSession, ctx: TaskContext, progress: Callable[[str], None] = print
) -> TaskResult:
    entity = ctx.entity_spec()
    lake = Lakehouse(spark, ctx.profile)
    table = bronze_table(entity.name)
    checkpoint = bronze_checkpoint(entity.name)
    if ctx.full_refresh:
        lake.drop(table)
        lake.reset_checkpoint(checkpoint)
    ddl = bronze_ddl(entity)  # personal fields stay out of the log's statistics (contract.py)
    lake.ensure(table, ddl, properties=personal_properties(entity, ddl))
    missing = set(bronze_schema(entity).fieldNames()) - set(lake.read(table).columns)
    if missing:
        raise BronzeOutdated(
            f"{table} lacks {', '.join(sorted(missing))}: it was made by an older version of the "
            "pipeline. Rebuild from landing once: `order-pipeline run --full-refresh --yes`."
        )
    before = lake.version(table)
    app_id = lake.open_checkpoint(
        checkpoint,
        own=(table,),
        shared=(),
        way_out=full_refresh_way_out(bronze_task(entity.name), silver_task(entity.name)),
        progress=progress,
    )
    batch = BronzeBatch(
        profile=ctx.profile,
        table=table,
        columns=tuple(bronze_schema(entity).fieldNames()),
        run_id=ctx.run_id,
        app_id=app_id,
    )
    source = lake.landing_stream(entity, checkpoint)
    for skipped in source.skipped:
        progress(f"  {table}: not ingested: {skipped.file}: {skipped.reason}")
    records = source.stream.transform(parse_lines(entity))
    lake.run_stream(records, checkpoint, batch, table, progress)
    retired = lake.retire_landed(entity, checkpoint)  # every indexed file is in bronze now
    if retired:
        progress(
            f"  {table}: {len(retired)} landed files past retention: {ctx.profile.landing.retention}"
        )
    # counted from the table's commits, not from the batches' Python state or the query's
    # bounded progress history
    commits = [c for c in lake.history(table) if c["version"] > before]
    rows = sum(rows_written(c) for c in commits)
    details: dict[str, object] = {"batches": len(commits)}
    if source.new_files is not None:
        details["new_files"] = source.new_files
    if retired:
        details["retired"] = {ctx.profile.landing.retention: retired}
    if source.skipped:
        details["not_ingested"] = [{"file": s.file, "reason": s.reason} for s in source.skipped]
    return TaskResult(rows_in=rows, rows_out=rows, details=details)


def main(argv: list[str] | None = None) -> int:
    args = task_parser("Ingest landed JSON files of one entity into bronze.", True).parse_args(argv)
    ctx = context_from_args(args)
    return run_entry_point(bronze_task(ctx.entity_spec().name), ctx, run, inputs)


if __name__ == "__main__":
    raise SystemExit(main())
