"""Gold task: build the gold tables from silver, incrementally where the silver change
data feed allows it.

A full rebuild overwrites every gold table from whole silver tables. An incremental build
reads the silver changes since the versions the last build consumed (its watermarks, in
ops_gold_watermarks), recomputes the gold rows of the orders those changes reach and MERGEs
them in. Both read silver at versions pinned when the task starts, and the watermarks move
to those versions only after every gold write succeeded: a run that fails half way leaves
the old watermarks, and the next run recomputes the same keys (and more) from current silver.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from order_pipeline.common import contract
from order_pipeline.common.config import GoldSettings
from order_pipeline.common.contract import (
    CHANGE_DATA_FEED,
    GOLD_TASK,
    GOLD_WATERMARKS,
    OPS_TABLE_PROPERTIES,
    WATERMARKS_DDL,
    personal_properties,
    silver_ddl,
    silver_table,
)
from order_pipeline.common.inputs import Consumed, Inputs, Versions
from order_pipeline.common.io import (
    Lakehouse,
    WhenMatched,
    WhenNotMatched,
    named_by,
    sql_literal,
)
from order_pipeline.common.timing import StepTimer
from order_pipeline.jobs import checks
from order_pipeline.jobs.task import (
    TaskContext,
    TaskResult,
    context_from_args,
    no_fault,
    run_entry_point,
    task_parser,
)
from order_pipeline.quality.dataset_checks import load_gold_checks
from order_pipeline.transforms import gold

MAINTAINED = (
    contract.ORDER_DETAILS,
    contract.PRODUCT_SALES_MONTHLY,
    contract.ORDER_COMPLETION_STATUS,
)
# Error conditions of a change feed that cannot serve the versions asked for (log or change
# files cleaned up, change data not recorded for some version, incompatible schema change):
# the build falls back to a full rebuild. PySpark leaves some JVM errors unconverted (a
# failed job arrives as a Py4JJavaError), so they are recognised by their message.
CHANGE_FEED_UNAVAILABLE = (
    "DELTA_MISSING_CHANGE_DATA",
    "DELTA_TRUNCATED_TRANSACTION_LOG",
    "DELTA_LOG_FILE_NOT_FOUND",
    "DELTA_VERSION_NOT_FOUND",
    "DELTA_VERSIONS_NOT_CONTIGUOUS",
    "DELTA_FILE_NOT_FOUND",
    "FAILED_READ_FILE.FILE_NOT_EXIST",
    "DELTA_CHANGE_DATA_FEED_INCOMPATIBLE_SCHEMA_CHANGE",
    "DELTA_CHANGE_DATA_FEED_INCOMPATIBLE_DATA_SCHEMA",
)


class ChangeFeedUnavailable(RuntimeError):
    """The silver change feed cannot serve the versions since the watermarks."""


class IncrementalNotCheaper(RuntimeError):
    """So many orders are affected that overwriting gold costs less than MERGEing them."""


# Up to this many affected orders, their silver and gold rows are read with the ids spelled out
# (``order_id IN (...)``): a filtered scan each, which Parquet and Delta narrow by their
# statistics. Joining whole tables to the ids instead planned shuffles over every row: for five
# orders at SF1, 4-10 s against 0.3 s per table.
MAX_LISTED_ORDERS = 2_000


@dataclass(frozen=True)
class Rebuilt:
    """The orders an incremental build rewrote: how many, their ids as local rows when they
    were few enough to hold so (else None), and as a list when at most MAX_LISTED_ORDERS."""

    affected: int
    ids: DataFrame | None
    listed: list[str] | None


# -- reads ---------------------------------------------------------------------------------
def silver_snapshot(lake: Lakehouse, table: str) -> gold.SilverSnapshot:
    properties = lake.properties(table)
    return gold.SilverSnapshot(
        table=table,
        table_id=lake.table_id(table),
        version=lake.version(table),
        change_data_feed=properties.get("delta.enableChangeDataFeed", "").lower() == "true",
    )


def consumed_watermarks(lake: Lakehouse) -> dict[str, gold.Watermark]:
    return {
        r.source_table: gold.Watermark(r.source_table, r.table_id, r.version)
        for r in lake.read(GOLD_WATERMARKS).collect()
    }


def record_watermarks(lake: Lakehouse, snapshots: list[gold.SilverSnapshot], run_id: str) -> None:
    """Replace the watermarks by the versions of every silver table gold read, in one
    overwrite: the table holds one row per such table and nothing else (a MERGE of its four
    rows cost ~1.8 s here, the overwrite ~0.9 s; the table's properties stay)."""
    now = datetime.now(UTC)
    rows = lake.spark.createDataFrame(
        [(s.table, s.table_id, s.version, run_id, now) for s in snapshots], WATERMARKS_DDL
    )
    lake.overwrite(rows.coalesce(1), GOLD_WATERMARKS)


def change_feed_unavailable(exc: BaseException) -> str | None:
    """The error condition of ``exc`` if it says the change feed cannot serve a read."""
    text = str(exc)
    return next((c for c in CHANGE_FEED_UNAVAILABLE if f"[{c}]" in text), None)


# -- full rebuild ----------------------------------------------------------------------------
def write_gold(
    lake: Lakehouse,
    as_of: datetime,
    silver: dict[str, DataFrame] | None = None,
    steps: StepTimer | None = None,
) -> None:
    """Overwrite the four gold tables from the given silver tables (default: current)."""
    silver = silver or {name: lake.read(silver_table(name)) for name in gold.GOLD_INPUTS}
    steps = steps or StepTimer()
    details = gold.order_details(
        silver["line_items"], silver["orders"], silver["customers"], silver["products"]
    )
    with steps("details"):
        lake.overwrite(
            details,
            contract.ORDER_DETAILS,
            properties=contract.schema_statistics_properties(
                details.schema, contract.ORDER_DETAILS_PERSONAL
            ),
        )
    with steps("monthly sales"):
        lake.overwrite(
            gold.product_sales_monthly(lake.read(contract.ORDER_DETAILS)),
            contract.PRODUCT_SALES_MONTHLY,
        )
    with steps("completion"):
        lake.overwrite(
            gold.order_completion_status(silver["orders"], silver["line_items"]),
            contract.ORDER_COMPLETION_STATUS,
        )
    write_most_sold(lake, as_of, steps)


def write_most_sold(lake: Lakehouse, as_of: datetime, steps: StepTimer) -> None:
    with steps("most sold"):
        lake.overwrite(
            lake.sql(gold.most_sold_query(), {"as_of": as_of}), contract.MOST_SOLD_LAST_30D
        )


# -- incremental build -----------------------------------------------------------------------
def silver_changes(
    lake: Lakehouse,
    snapshots: dict[str, gold.SilverSnapshot],
    watermarks: dict[str, gold.Watermark],
) -> gold.SilverChanges:
    changed = {}
    for name, snapshot in snapshots.items():
        consumed = watermarks[snapshot.table].version
        if snapshot.version > consumed:
            changed[name] = lake.read_changes(snapshot.table, consumed, snapshot.version)
    return gold.SilverChanges(**changed)


def replace_rows(lake: Lakehouse, table: str, rows: DataFrame, gone: DataFrame, key: str) -> None:
    """Upsert ``rows`` by key and delete the keys of ``gone`` (rows whose silver source was
    deleted), in one MERGE. Repeating it changes nothing."""
    values = {c: f"s.`{c}`" for c in rows.columns}
    source = rows.withColumn(gold.VANISHED, F.lit(False)).unionByName(
        gone.select(key).withColumn(gold.VANISHED, F.lit(True)), allowMissingColumns=True
    )
    vanished = f"s.`{gold.VANISHED}`"
    lake.merge(
        source,
        table,
        f"t.`{key}` = s.`{key}`",
        [
            WhenMatched(condition=vanished, delete=True),
            WhenMatched(set=values),
            WhenNotMatched(condition=f"NOT {vanished}", values=values),
        ],
    )


def replace_sales_groups(lake: Lakehouse, groups: DataFrame, few: bool = False) -> None:
    """Recompute the given monthly sales groups from gold_order_details and replace them in
    one MERGE: updated, inserted, or deleted when no delivered item is left in them. ``few``:
    the groups are local rows of few products, listed to narrow the read of the details."""
    details = lake.read(contract.ORDER_DETAILS)
    if few:  # a group of a null product_id matches the details' null product_ids
        products = [r[0] for r in groups.select("product_id").distinct().collect()]
        listed = F.col("product_id").isin([p for p in products if p is not None])
        details = details.where(listed | F.col("product_id").isNull())
    rows = lake.small(gold.product_sales_for_groups(groups, details))
    values = {c: f"s.`{c}`" for c in rows.columns if c != gold.VANISHED}
    vanished = f"s.`{gold.VANISHED}`"
    lake.merge(
        rows,
        contract.PRODUCT_SALES_MONTHLY,
        "t.product_id <=> s.product_id AND t.month <=> s.month",
        [
            WhenMatched(condition=vanished, delete=True),
            WhenMatched(set=values),
            WhenNotMatched(condition=f"NOT {vanished}", values=values),
        ],
    )


def update_gold(
    lake: Lakehouse,
    silver: dict[str, DataFrame],
    changes: gold.SilverChanges,
    order_ids: DataFrame,
    listed: list[str] | None,
    fault_hook: Callable[[str], None],
    steps: StepTimer,
) -> None:
    """Write the gold rows of ``order_ids`` (``listed``: the same ids as a list, when few),
    recomputed from ``silver``, into gold: the listed orders' details and completion rows
    replaced in one commit each, many orders' MERGEd by key; their monthly sales groups
    MERGEd either way."""
    # Each source below is computed once into local rows when small (Lakehouse.materialize):
    # a MERGE evaluates its source several times, and these join silver and the change feed.
    pinned = lake.read(contract.ORDER_DETAILS, lake.version(contract.ORDER_DETAILS))
    replaced = of_orders(pinned, order_ids, listed)
    if listed is not None:
        with steps("affected rows"):
            silver = narrowed_silver(lake, silver, order_ids, listed)
            replaced = lake.small(replaced)
    details = gold.order_details_for_orders(
        order_ids, silver["line_items"], silver["orders"], silver["customers"], silver["products"]
    )
    with steps("affected rows"):
        local = lake.materialize(details)
    refreshed = local if local is not None else lake.cache(details)
    try:
        groups = gold.sales_groups_to_refresh(
            changes, order_ids, silver["orders"], refreshed, replaced
        )
        with steps("affected rows"):
            groups = lake.small(groups)
        with steps("details"):
            if listed is not None:
                replace_orders(lake, contract.ORDER_DETAILS, refreshed, listed)
            else:
                # gold rows of the affected orders that the recomputation no longer has: their
                # line item, or their order, was deleted from silver (the feed's delete rows)
                gone = lake.small(
                    replaced.select("line_item_id").join(refreshed, "line_item_id", "left_anti"),
                )
                replace_rows(lake, contract.ORDER_DETAILS, refreshed, gone, "line_item_id")
        fault_hook("order_details_merged")
        with steps("completion"):
            completion = lake.small(
                gold.order_completion_status_for_orders(
                    order_ids, silver["orders"], silver["line_items"]
                ),
            )
            if listed is not None:
                replace_orders(lake, contract.ORDER_COMPLETION_STATUS, completion, listed)
            else:
                deleted_orders = lake.small(
                    of_orders(lake.read(contract.ORDER_COMPLETION_STATUS), order_ids, None)
                    .select("order_id")
                    .join(completion, "order_id", "left_anti"),
                )
                replace_rows(
                    lake, contract.ORDER_COMPLETION_STATUS, completion, deleted_orders, "order_id"
                )
        with steps("monthly sales"):
            replace_sales_groups(lake, groups, listed is not None)
    finally:
        if local is None:
            lake.release(refreshed)


def replace_orders(lake: Lakehouse, table: str, rows: DataFrame, listed: list[str]) -> None:
    """Replace every row of ``table`` of the ``listed`` orders by ``rows``, all of which are
    of those orders, in one commit: an order's rows that ``rows`` no longer has (its line item
    or itself deleted from silver) go with the others. A MERGE by key did the same in ~2.4 s
    (details) at SF1, this ~0.9 s. A line item's gold row always lies under an order listed
    here when the item changes: a move between orders lists both (the feed's pre-image)."""
    ids = ", ".join(sql_literal(order_id) for order_id in listed)
    lake.replace_where(rows.coalesce(1), table, f"order_id IN ({ids})")


def of_orders(df: DataFrame, order_ids: DataFrame, listed: list[str] | None) -> DataFrame:
    """The rows of ``df`` whose order_id is one of ``order_ids``, which ``listed`` spells out
    when they are few (MAX_LISTED_ORDERS). Either way with the columns of ``df``."""
    if listed is None:
        return df.join(order_ids, "order_id", "left_semi").select(*df.columns)
    return df.where(F.col("order_id").isin(listed))


def narrowed_silver(
    lake: Lakehouse, silver: dict[str, DataFrame], order_ids: DataFrame, listed: list[str]
) -> dict[str, DataFrame]:
    """The silver rows the gold rows of the ``listed`` orders are built from, as local rows
    where small: their line items and orders, the customers those orders name and the
    products those line items name, each read with its keys listed."""
    items = lake.small(of_orders(silver["line_items"], order_ids, listed))
    orders = lake.small(of_orders(silver["orders"], order_ids, listed))
    return {
        "line_items": items,
        "orders": orders,
        "customers": lake.small(named_by(silver["customers"], "customer_id", orders)),
        "products": lake.small(named_by(silver["products"], "product_id", items)),
    }


def build_incrementally(
    lake: Lakehouse,
    silver: dict[str, DataFrame],
    snapshots: dict[str, gold.SilverSnapshot],
    watermarks: dict[str, gold.Watermark],
    progress: Callable[[str], None],
    fault_hook: Callable[[str], None],
    settings: GoldSettings,
    steps: StepTimer,
    count_orders: Callable[[], int],
) -> Rebuilt:
    """Bring the gold tables up to the pinned silver versions from the changes since the
    watermarks; returns the orders it rewrote. Raises IncrementalNotCheaper, before any
    write, when silver holds fewer orders (``count_orders``: the pinned silver_orders' rows)
    than ``min_orders_for_incremental`` (before the change feed is read) or more than
    ``max_incremental_share`` of them are affected (before the change feed is read too when
    one commit of silver_orders changed that many: ``changed_orders_at_least``)."""
    max_share, min_orders = settings.max_incremental_share, settings.min_orders_for_incremental
    all_orders = count_orders() if min_orders else None  # counted once, if at all
    if all_orders is not None and all_orders < min_orders:
        raise IncrementalNotCheaper(
            f"{all_orders} orders are fewer than the gold.min_orders_for_incremental of "
            f"{min_orders}: a full rebuild is cheaper"
        )
    at_least = changed_orders_at_least(lake, snapshots["orders"], watermarks)
    if at_least:
        all_orders = count_orders() if all_orders is None else all_orders
        if at_least > max_share * all_orders:
            raise IncrementalNotCheaper(
                f"a commit of {snapshots['orders'].table} changed {at_least} of its "
                f"{all_orders} orders (by its operation metrics), more than the "
                f"gold.max_incremental_share of {max_share:g}: a full rebuild is cheaper"
            )
    order_ids: DataFrame | None = None
    local_ids: DataFrame | None = None
    try:
        changes = silver_changes(lake, snapshots, watermarks)
        affected = 0
        if changes.any():
            ids = gold.affected_orders(changes, silver["orders"], silver["line_items"])
            # reading them reads every change feed: an unreadable one shows here, before a write
            with steps("affected orders"):
                local_ids = lake.materialize(ids)
                order_ids = local_ids if local_ids is not None else lake.cache(ids)
                affected = order_ids.count()
    except Exception as exc:
        if order_ids is not None:
            lake.release(order_ids)
        condition = change_feed_unavailable(exc)
        if condition is None:
            raise
        raise ChangeFeedUnavailable(
            f"the silver change feed cannot serve the versions since the watermarks ({condition})"
        ) from exc
    listed: list[str] | None = None
    try:
        if affected and all_orders is None:
            all_orders = count_orders()
        if affected and affected > max_share * all_orders:
            raise IncrementalNotCheaper(
                f"{affected} affected orders of {all_orders} are more than the "
                f"gold.max_incremental_share of {max_share:g}: a full rebuild is cheaper"
            )
        versions = {name: s.version for name, s in snapshots.items()}
        progress(f"  gold: incremental at silver versions {versions}: {affected} affected orders")
        if local_ids is not None and affected <= MAX_LISTED_ORDERS:
            listed = sorted(r.order_id for r in local_ids.collect())
        if affected:  # a changed customer without orders, say, changes no gold row
            assert order_ids is not None
            update_gold(lake, silver, changes, order_ids, listed, fault_hook, steps)
    finally:
        if order_ids is not None and local_ids is None:
            lake.release(order_ids)
    if order_ids is None:  # nothing changed: no order rebuilt
        local_ids, listed = lake.spark.createDataFrame([], "order_id string"), []
    return Rebuilt(affected, local_ids, listed)


def changed_orders_at_least(
    lake: Lakehouse, orders: gold.SilverSnapshot, watermarks: dict[str, gold.Watermark]
) -> int:
    """A floor under the affected orders, known before any change feed is read: every order
    row a commit of silver_orders since the watermark wrote is an affected order (one row
    per order_id), so the most one commit wrote is a floor (0 when the commits' metrics are
    gone). Read from the commits' operation metrics, in milliseconds locally; computing the
    affected orders themselves costs a join of every change feed with silver (2.7 s at SF1,
    5.7 s at SF10), wasted when a rebuild is chosen after it."""
    changed = lake.keys_changed(orders.table, watermarks[orders.table].version, orders.version)
    return max(changed or [0])


# -- the task --------------------------------------------------------------------------------
def run(
    spark: SparkSession,
    ctx: TaskContext,
    progress: Callable[[str], None] = print,
    fault_hook: Callable[[str], None] = no_fault,
) -> TaskResult:
    lake = Lakehouse(spark, ctx.profile)
    for name in gold.GOLD_INPUTS:
        entity = ctx.entities[name]
        ddl = silver_ddl(entity)
        lake.ensure(
            silver_table(name), ddl, properties=personal_properties(entity, ddl, CHANGE_DATA_FEED)
        )
    lake.ensure(GOLD_WATERMARKS, WATERMARKS_DDL, properties=OPS_TABLE_PROPERTIES)
    as_of = ctx.as_of or datetime.now(UTC)
    gold_checks = load_gold_checks(gold.GOLD_INPUTS)

    snapshots = {name: silver_snapshot(lake, silver_table(name)) for name in gold.GOLD_INPUTS}
    versions = {name: s.version for name, s in snapshots.items()}
    silver = {name: lake.read(s.table, s.version) for name, s in snapshots.items()}
    watermarks = consumed_watermarks(lake)
    reason = gold.full_rebuild_reason(
        ctx.full_refresh,
        [table for table in MAINTAINED if not lake.exists(table)],
        list(snapshots.values()),
        watermarks,
    )
    rebuilt: Rebuilt | None = None  # the orders an incremental build rewrote
    steps = StepTimer()
    if reason is None:
        try:
            rebuilt = build_incrementally(
                lake,
                silver,
                snapshots,
                watermarks,
                progress,
                fault_hook,
                ctx.profile.gold,
                steps,
                functools.partial(lake.row_count, snapshots["orders"].table, versions["orders"]),
            )
        except (ChangeFeedUnavailable, IncrementalNotCheaper) as exc:
            reason = str(exc)
    if reason is not None:
        progress(f"  gold: full rebuild at silver versions {versions}: {reason}")
        write_gold(lake, as_of, silver, steps)
    else:
        write_most_sold(lake, as_of, steps)
    fault_hook("gold_written")
    if reason is not None or any(
        s.version != watermarks[s.table].version for s in snapshots.values()
    ):
        with steps("watermarks"):
            record_watermarks(lake, list(snapshots.values()), ctx.run_id)

    details_table, scope, few = lake.read(contract.ORDER_DETAILS), "every row", False
    read_versions: dict[str, int] | None = versions  # all of gold: its files can be read
    if reason is None and rebuilt is not None and rebuilt.ids is not None:
        details_table = of_orders(details_table, rebuilt.ids, rebuilt.listed)
        scope, few = "the orders this run rebuilt", rebuilt.listed is not None
        read_versions = None
    with steps("checks"):
        found = checks.gold_checks(
            lake, gold_checks, ctx.run_id, details_table, silver, ctx.entities, scope, progress,
            few=few, versions=read_versions,
        )  # fmt: skip
    with steps("counts"):
        rows_in = lake.row_count(snapshots["line_items"].table, versions["line_items"])
        counts = {table: lake.row_count(table) for table in contract.GOLD_TABLES}
    for table, n in counts.items():
        progress(f"  {table}: {n} rows")
    mode = "incremental" if reason is None else "full"
    progress(f"  gold: {mode} build: {steps}")
    valid_until = most_sold_valid_until(lake, as_of)
    details = {
        "as_of": as_of,
        "mode": mode,
        "full_rebuild_reason": reason,
        "silver_versions": versions,
        "affected_orders": rebuilt and rebuilt.affected,
        "checks": found,
        **counts,
    }
    return TaskResult(
        rows_in=rows_in,
        rows_out=counts[contract.ORDER_DETAILS],
        details=details,
        state={"most_sold_valid_until": valid_until and valid_until.isoformat()},
    )


def most_sold_valid_until(lake: Lakehouse, as_of: datetime) -> datetime | None:
    """The last instant at which the most-sold answer computed at ``as_of`` is still the
    answer, silver unchanged: until an order after ``as_of`` enters the 30-day window or the
    oldest order in it leaves (None: no order will ever enter or leave)."""
    micros = (
        lake.read(contract.ORDER_DETAILS)
        .where(F.col("line_status") == "delivered")
        .select(
            F.unix_micros(
                F.least(
                    F.min(F.when(F.col("order_ts") >= F.lit(as_of), F.col("order_ts"))),
                    F.min(
                        F.when(
                            (F.col("order_ts") >= F.lit(as_of) - F.expr("INTERVAL 30 DAYS"))
                            & (F.col("order_ts") < F.lit(as_of)),
                            F.col("order_ts"),
                        )
                    )
                    + F.expr("INTERVAL 30 DAYS"),
                )
            )
        )
        .first()[0]
    )
    return None if micros is None else datetime.fromtimestamp(micros / 1e6, UTC)


def inputs(ctx: TaskContext, versions: Versions, previous: Consumed | None) -> Inputs:
    """The silver tables' versions and the as-of date asked for; due while a gold table is
    missing, or, with no as-of date given, once the most-sold window has moved past an
    order (``most_sold_valid_until``)."""
    values = {
        "silver": {name: versions(silver_table(name)) for name in gold.GOLD_INPUTS},
        "as_of": ctx.as_of.isoformat() if ctx.as_of else None,
    }
    due = None
    if missing := [t for t in (*contract.GOLD_TABLES, GOLD_WATERMARKS) if versions(t) is None]:
        due = f"{missing[0]} does not exist"
    elif ctx.as_of is None and previous is not None:
        until = previous.state.get("most_sold_valid_until", "unknown")
        if until == "unknown" or (
            until is not None and datetime.now(UTC) > datetime.fromisoformat(until)
        ):
            due = f"the 30-day window of the most sold product moved (valid until {until})"
    return Inputs(values, due)


def main(argv: list[str] | None = None) -> int:
    args = task_parser("Build the gold tables from silver.", False).parse_args(argv)
    ctx = context_from_args(args)
    return run_entry_point(GOLD_TASK, ctx, run, inputs)


if __name__ == "__main__":
    raise SystemExit(main())
