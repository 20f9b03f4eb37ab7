"""Any permutation and batch split of the same snapshots, valid and invalid, deletes among
them, gives the same silver table: the latest valid snapshot per key unless it is a delete,
folded here in plain Python; and the same tombstones: the newest valid delete per key."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

from conftest import make_context
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from order_pipeline.common.contract import (
    BATCH_ID,
    PARSE_ISSUES,
    RUN_ID,
    SOURCE_FILE,
    bronze_schema,
)
from order_pipeline.common.io import Lakehouse
from order_pipeline.jobs.silver import build_silver

COLUMNS = [
    "customer_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "city",
    "country",
    "created_at",
    "updated_at",
]
EMAIL_OK = {"a@example.com", "b@example.org"}

snapshot = st.fixed_dictionaries(
    {
        # few keys and timestamps, so that snapshots of one key collide across batches
        "customer_id": st.sampled_from(["C1", "C2", "C1", None]),
        "first_name": st.sampled_from(["Ann", "Bob"]),
        "last_name": st.just("Lee"),
        "email": st.sampled_from(
            ["a@example.com", "b@example.org", "a@example.com", "not-an-email", None]
        ),
        "phone": st.sampled_from([None, "+44 1"]),
        "city": st.sampled_from(["Oslo", "Rome"]),
        "country": st.sampled_from(["NO", "Norway"]),  # Norway only warns
        "created_at": st.just(datetime(2026, 1, 1)),
        "updated_at": st.sampled_from(
            [datetime(2026, 5, 1), datetime(2026, 5, 2), datetime(2026, 5, 2), None]
        ),
        # a tombstone of its key (its other fields play no part, a bad e-mail included)
        "_deleted": st.sampled_from([False, False, True]),
    }
)


def is_valid(r: dict) -> bool:
    identified = r["customer_id"] is not None and r["updated_at"] is not None
    return identified and (r["_deleted"] or r["email"] in EMAIL_OK)


def fold_latest(records: list[tuple[dict, str]]) -> set[tuple]:
    best: dict[str, tuple] = {}
    for r, file in records:
        if not is_valid(r):
            continue
        values = [r["updated_at"], r["_deleted"], *(r[c] for c in COLUMNS[1:-1]), file]
        rank = tuple((v is not None, v) for v in values)
        if r["customer_id"] not in best or rank > best[r["customer_id"]][0]:
            best[r["customer_id"]] = (rank, tuple(r[c] for c in COLUMNS), r["_deleted"])
    return {row for _, row, deleted in best.values() if not deleted}


def fold_tombstones(records: list[tuple[dict, str]]) -> set[tuple]:
    newest: dict[str, datetime] = {}
    for r, _ in records:
        if is_valid(r) and r["_deleted"]:
            key = r["customer_id"]
            newest[key] = max(newest.get(key, r["updated_at"]), r["updated_at"])
    return set(newest.items())


@st.composite
def scenario(draw) -> list[list[tuple[dict, str]]]:
    """Some snapshots, each with its own source file, in a drawn arrival order, cut into
    up to four micro-batches at drawn places."""
    records = draw(st.lists(snapshot, min_size=2, max_size=10))
    landed = [(r, f"file:/landing/customers/part-{i % 3}.json") for i, r in enumerate(records)]
    order = draw(st.permutations(range(len(landed))))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(landed) - 1)), max_size=3)))
    arrived = [landed[i] for i in order]
    return [
        arrived[a:b] for a, b in zip([0, *cuts], [*cuts, len(arrived)], strict=True) if arrived[a:b]
    ]


def keyed(scenario_id: int, batch: list[tuple[dict, str]]) -> list[tuple[dict, str]]:
    """A scenario's snapshots with keys of their own, so scenarios share one silver table."""
    return [
        (
            {
                **r,
                "customer_id": None
                if r["customer_id"] is None
                else f"s{scenario_id}-{r['customer_id']}",
            },
            f,
        )
        for r, f in batch
    ]


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenarios=st.lists(scenario(), min_size=25, max_size=25))
def test_any_order_and_batch_split_gives_the_same_silver(
    spark, tmp_path_factory, scenarios
) -> None:
    # Twenty-five independent scenarios per example run side by side: the k-th micro-batch holds
    # every scenario's k-th batch, so each example costs at most four micro-batches while
    # hypothesis explores 75 arrival orders and batch splits.
    ctx = replace(make_context(Path(tmp_path_factory.mktemp("prop"))), entity="customers")
    silver = build_silver(spark, ctx, progress=lambda _: None)
    silver.ensure_tables()
    process = silver.batch_function(app_id="property-test")
    schema = bronze_schema(silver.entity)
    for batch_id in range(max(len(batches) for batches in scenarios)):
        rows = [
            [
                {
                    **r,
                    PARSE_ISSUES: [],
                    SOURCE_FILE: file,
                    BATCH_ID: batch_id,
                    RUN_ID: ctx.run_id,
                }.get(field.name)
                for field in schema
            ]
            for i, batches in enumerate(scenarios)
            if batch_id < len(batches)
            for r, file in keyed(i, batches[batch_id])
        ]
        process(spark.createDataFrame(rows, schema), batch_id)

    Lakehouse(spark, ctx.profile)
    actual = {tuple(row) for row in spark.table("silver_customers").select(*COLUMNS).collect()}
    expected = set().union(
        *(
            fold_latest([s for batch in batches for s in keyed(i, batch)])
            for i, batches in enumerate(scenarios)
        )
    )
    assert actual == expected
    tombstones = spark.table("tombstones_customers").select("customer_id", "updated_at")
    assert {tuple(row) for row in tombstones.collect()} == set().union(
        *(
            fold_tombstones([s for batch in batches for s in keyed(i, batch)])
            for i, batches in enumerate(scenarios)
        )
    )
