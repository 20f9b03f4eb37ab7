"""Deletes in the contract: a landed record with ``"_deleted": true`` is a tombstone of its
key. Newest wins with deletes too; an older snapshot landing after a delete never brings the
key back (not through the stream, a replayed batch, replay of quarantine or deferred rows);
a newer one re-creates it; a parent's delete reaches its children by the relation's rule.

The micro-batch function is driven directly with parsed landed lines (no streams), so each
test costs a few Delta commits."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

import pytest
from builders import customer, line_item, order
from pipeline_helpers import assert_gold_equals, typed_silver
from pyspark.sql import functions as F

from order_pipeline.common.contract import (
    BATCH_ID,
    CHANGE_DATA_FEED,
    INGESTED_AT,
    QUALITY_WARNINGS,
    RUN_ID,
    SOURCE_FILE,
    bronze_schema,
    silver_ddl,
    silver_table,
)
from order_pipeline.common.io import Lakehouse
from order_pipeline.jobs import gold as gold_job
from order_pipeline.jobs.silver import build_silver, merge_latest
from order_pipeline.quality.rules import RuleSet
from order_pipeline.transforms.parse import parse_lines

pytestmark = pytest.mark.usefixtures("repository_conf")  # every dataset check

TS = datetime.fromisoformat


def at(hour: int) -> str:
    return f"2026-05-01T{hour:02d}:00:00Z"


def delete(entity_key: str, key: str, hour: int, **extra) -> dict:
    return {entity_key: key, "updated_at": at(hour), "_deleted": True, **extra}


def bronze_rows(spark, entity, records: list, file: str):
    """Landed lines as bronze holds them: parsed by the contract's parser."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    parsed = spark.createDataFrame([(line,) for line in lines], "value string").transform(
        parse_lines(entity)
    )
    return parsed.withColumns(
        {
            SOURCE_FILE: F.lit(f"file:/landing/{entity.name}/{file}"),
            INGESTED_AT: F.current_timestamp(),
            BATCH_ID: F.lit(0).cast("bigint"),
            RUN_ID: F.lit("test"),
        }
    ).select(*bronze_schema(entity).fieldNames())


class Entity:
    """One entity's silver driven batch by batch, as its stream would."""

    def __init__(self, spark, ctx, name: str, fault_hook=None) -> None:
        self.spark, self.ctx = spark, replace(ctx, entity=name)
        self.silver = build_silver(spark, self.ctx, progress=lambda _: None)
        if fault_hook is not None:
            self.silver.fault_hook = fault_hook
        self.silver.ensure_tables()
        self.batches = 0

    def land(self, records: list, batch_id: int | None = None, app_id: str = "test-app") -> None:
        batch_id = self.batches if batch_id is None else batch_id
        rows = bronze_rows(self.spark, self.silver.entity, records, f"part-{batch_id}.json")
        self.silver.batch_function(app_id)(rows, batch_id)
        self.batches = max(self.batches, batch_id + 1)

    def rows(self, *columns: str) -> set[tuple]:
        key = self.silver.entity.key
        table = self.spark.table(self.silver.silver)
        return {tuple(r) for r in table.select(key, *columns).collect()}

    def tombstones(self) -> dict[str, tuple]:
        key, seq = self.silver.entity.key, self.silver.entity.sequence
        rows = self.spark.table(self.silver.tombstones).collect()
        return {r[key]: (r[seq], r["_deleted_by"]) for r in rows}

    def quarantined(self) -> set[tuple]:
        key = self.silver.entity.key
        rows = self.spark.table(self.silver.quarantine).collect()
        return {(r.record[key], tuple(r.reasons), r.status) for r in rows}

    def deferred(self) -> set[str]:
        key = self.silver.entity.key
        return {r[key] for r in self.spark.table(self.silver.deferred).collect()}


def test_delete_wins_older_upserts_never_resurrect_newer_ones_recreate(spark, ctx) -> None:
    customers = Entity(spark, ctx, "customers")
    key = "customer_id"
    customers.land([
        customer("C1", updated_at=at(1)),
        customer("C2", updated_at=at(1)),
        delete(key, "C3", 5),                          # a key never seen: only a tombstone
        delete(key, "C4", 2, email="not-an-e-mail"),   # a delete is not checked by value rules
        {key: "C5", "updated_at": None, "_deleted": True},    # ... but needs its updated_at
        {key: "C6", "updated_at": at(1), "_deleted": "yes"},  # the marker is a JSON boolean
    ])  # fmt: skip
    assert customers.rows("updated_at") == {("C1", TS("2026-05-01 01:00:00")),
                                            ("C2", TS("2026-05-01 01:00:00"))}  # fmt: skip
    assert sorted(r for _, r, _ in customers.quarantined()) == [
        ("malformed_record",), ("updated_at_not_null",)
    ]  # fmt: skip
    customers.land([
        delete(key, "C1", 3),
        customer("C3", updated_at=at(4)),    # older than its delete, landing after it
        delete(key, "C2", 1),                # the same instant as C2's snapshot: the delete wins
    ])  # fmt: skip
    assert customers.rows() == set()
    customers.land([
        customer("C1", city="Older", updated_at=at(2)),   # older than the delete
        customer("C2", city="Tie", updated_at=at(1)),     # ties with its delete: loses
        customer("C4", city="New", updated_at=at(6)),     # newer than its delete: re-created
        delete(key, "C1", 2),                             # an older delete changes nothing
    ])  # fmt: skip
    assert customers.rows("city") == {("C4", "New")}
    assert customers.tombstones() == {
        "C1": (TS("2026-05-01 03:00:00"), "delete"),
        "C2": (TS("2026-05-01 01:00:00"), "delete"),
        "C3": (TS("2026-05-01 05:00:00"), "delete"),
        "C4": (TS("2026-05-01 02:00:00"), "delete"),
    }
    # delete and re-create and delete again
    customers.land([customer("C1", city="Back", updated_at=at(7))])
    assert customers.rows("city") == {("C1", "Back"), ("C4", "New")}
    customers.land([delete(key, "C4", 8)])
    assert customers.rows("city") == {("C1", "Back")}
    assert customers.tombstones()["C4"] == (TS("2026-05-01 08:00:00"), "delete")


def test_a_batch_replayed_after_a_crash_between_silver_and_tombstones_is_exactly_once(
    spark, ctx
) -> None:
    """The crash lands after the silver MERGE (the row deleted) and before the tombstone
    is written; the replayed batch writes it, and an older upsert after that stays out."""

    class Crash(RuntimeError):
        pass

    def crash_after_silver(step: str, batch_id) -> None:
        if step == "silver_merged" and batch_id == 1:
            raise Crash(step)

    customers = Entity(spark, ctx, "customers", fault_hook=crash_after_silver)
    customers.land([customer("C1", updated_at=at(1)), customer("C2", updated_at=at(1))])
    batch = [delete("customer_id", "C1", 3)]
    with pytest.raises(Crash):
        customers.land(batch)
    assert customers.rows() == {("C2",)} and customers.tombstones() == {}
    customers.silver.fault_hook = lambda *_: None
    customers.land(batch, batch_id=1)  # the stream runs the batch again after the restart
    customers.land(batch, batch_id=1)  # and once more: nothing changes
    assert customers.tombstones() == {"C1": (TS("2026-05-01 03:00:00"), "delete")}
    customers.land([customer("C1", updated_at=at(2))], batch_id=2)
    assert customers.rows() == {("C2",)}
    history = Lakehouse(spark, ctx.profile).history("tombstones_customers")
    assert [h.operation for h in history].count("MERGE") == 1  # the repeat wrote nothing


def test_replay_of_a_quarantined_row_does_not_resurrect_a_deleted_key(spark, ctx) -> None:
    customers = Entity(spark, ctx, "customers")
    customers.land([customer("C1", email="no-at-sign", updated_at=at(1))])
    customers.land([delete("customer_id", "C1", 2), customer("C2", email="x", updated_at=at(1))])
    silver = customers.silver
    # the e-mail rule is dropped: both quarantined rows now pass the gate
    silver.rules = RuleSet(
        silver.rules.entity, tuple(r for r in silver.rules.rules if r.name != "email_valid")
    )
    checked, replayed, _ = silver.replay()
    assert (checked, replayed) == (2, 2)
    assert customers.rows() == {("C2",)}  # C1's replayed snapshot is older than its delete


RULES = ("cascade", "keep", "quarantine")


@pytest.mark.parametrize("rule", RULES)
def test_a_parent_delete_reaches_its_children_by_the_relation_rule(spark, ctx, rule) -> None:
    """line_items.order_id under each on_delete rule: a child in silver (L1), one landing
    after the delete and older than it (L3), one newer than it (L4), and one deferred for a
    parent that is deleted before it ever arrives (L5)."""
    items_spec = replace(
        ctx.entities["line_items"], on_parent_delete={"order_id": rule, "product_id": "keep"}
    )
    ctx = replace(ctx, entities={**ctx.entities, "line_items": items_spec})
    # the parents are written straight through the silver MERGE: only the child is streamed
    silver_with(spark, ctx, "products", [{"product_id": "P1", "name": "W", "category": "T",
                                          "price": 1.5, "updated_at": at(1)}])  # fmt: skip
    silver_with(
        spark, ctx, "orders", [order("O1", updated_at=at(1)), order("O2", updated_at=at(1))]
    )
    items = Entity(spark, ctx, "line_items")
    items.land([
        line_item("L1", "O1", updated_at=at(1)),
        line_item("L2", "O2", updated_at=at(1)),
        line_item("L5", "O3", updated_at=at(1)),   # O3 has not arrived: deferred
    ])  # fmt: skip
    assert items.deferred() == {"L5"}
    silver_with(spark, ctx, "orders", [delete("order_id", "O1", 2), delete("order_id", "O3", 2)])
    items.land([
        line_item("L3", "O1", updated_at=at(1)),
        line_item("L4", "O1", updated_at=at(3)),   # newer than its order's delete
    ])  # fmt: skip
    cascaded, quarantined = items.silver.apply_parent_deletes()
    promoted, expired = items.silver.resolve_deferred()
    deleted = TS("2026-05-01 02:00:00")
    if rule == "cascade":
        # the deferred L5 leaves as a delete: "promoted" counts it
        assert (cascaded, quarantined, promoted, expired) == (1, 0, 1, 0)
        assert items.rows() == {("L2",)}
        assert items.tombstones() == {k: (deleted, "cascade:order_id") for k in ("L1", "L3", "L5")}
        assert items.deferred() == {"L4"}  # it waits for O1 to be created again
        assert items.quarantined() == set()
    elif rule == "keep":
        assert (cascaded, quarantined, promoted, expired) == (0, 0, 1, 0)
        assert items.rows() == {("L1",), ("L2",), ("L3",), ("L4",), ("L5",)}
        assert items.tombstones() == {} and items.deferred() == set()
    else:
        assert (cascaded, quarantined, promoted, expired) == (0, 1, 0, 0)
        assert items.rows() == {("L2",)}
        reason = ("order_id_parent_deleted", "order_exists")
        assert items.quarantined() == {(k, reason, "open") for k in ("L1", "L3", "L5")}
        assert items.deferred() == {"L4"} and items.tombstones() == {}
        assert items.silver.apply_parent_deletes() == (0, 0)  # a repeat finds nothing
        assert len(items.quarantined()) == 3


def silver_with(spark, ctx, entity_name: str, records: list[dict]) -> None:
    """Records (deletes among them) into silver through the silver MERGE itself."""
    entity = ctx.entities[entity_name]
    lake = Lakehouse(spark, ctx.profile)
    lake.ensure(silver_table(entity_name), silver_ddl(entity), properties=CHANGE_DATA_FEED)
    rows = bronze_rows(spark, entity, records, f"{entity_name}.json").withColumn(
        QUALITY_WARNINGS, F.array().cast("array<string>")
    )
    merge_latest(lake, silver_table(entity_name), rows, entity, ctx.run_id)


def test_incremental_gold_removes_and_recomputes_what_deletes_reach(spark, ctx) -> None:
    """Gold built in full, then silver deletes a line item, an order (and its line item, as
    the cascade rule does), a customer and a product (its line item kept, as the keep rule
    does); the incremental build (from the change feed's delete rows) equals the
    plain-Python gold of what is left, and gold's reference checks pass: the kept line
    item's product is in the product's tombstones."""
    as_of = datetime(2026, 5, 20)
    initial = {
        "customers": [customer("C1"), customer("C2")],
        "products": [
            {"product_id": p, "name": p, "category": "T", "price": 2.0, "updated_at": at(1)}
            for p in ("P1", "P2")
        ],
        # O4-O7 untouched: affected orders stay within gold.max_incremental_share (1.0)
        "orders": [order(f"O{i}", "C2" if i in (2, 4, 5, 6, 7) else "C1") for i in range(1, 8)],
        "line_items": [
            line_item("L1", "O1", "P1", status="delivered", delivered_at=at(5)),
            line_item("L2", "O1", "P2", status="delivered", delivered_at=at(5)),
            line_item("L3", "O2", "P1", status="shipped"),  # deleted with its order
            line_item("L4", "O3", "P2"),
        ],
    }
    for name, records in initial.items():
        silver_with(spark, ctx, name, records)
    ctx = replace(ctx, as_of=as_of)
    assert gold_job.run(spark, ctx, lambda _: None).details["mode"] == "full"
    later = "2026-05-02T00:00:00Z"
    deletes = {
        "line_items": [
            {"line_item_id": i, "updated_at": later, "_deleted": True} for i in ("L2", "L3")
        ],
        "orders": [{"order_id": "O2", "updated_at": later, "_deleted": True}],
        "customers": [{"customer_id": "C1", "updated_at": later, "_deleted": True}],
        "products": [{"product_id": "P2", "updated_at": later, "_deleted": True}],
    }
    for name, records in deletes.items():
        silver_with(spark, ctx, name, records)
    result = gold_job.run(spark, ctx, lambda _: None)
    assert (result.details["mode"], result.details["affected_orders"]) == ("incremental", 3)
    # L4's product P2 was deleted under keep: checked, and no orphan
    assert {c["check"]: c["rows_failed"] for c in result.details["checks"]} == {
        "line_item_order_exists": 0,
        "line_item_product_exists": 0,
    }
    left = typed_silver(
        {
            "customers": [initial["customers"][1]],
            "products": [initial["products"][0]],
            "orders": [o for o in initial["orders"] if o["order_id"] != "O2"],
            "line_items": [initial["line_items"][i] for i in (0, 3)],
        }
    )
    assert_gold_equals(spark, spark.table, left, as_of)
