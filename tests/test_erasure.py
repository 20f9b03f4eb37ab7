"""Erasure (`order-pipeline erase customer ID`): afterwards no byte under the data root holds
the person's e-mail, phone, names or city (raw bytes, decompressed gzip, and every value of
every parquet file: data, change data feed, Delta checkpoints), the tables equal what they
were with that person's personal fields removed, and the pipeline's next runs, replay
included, are exactly right without bringing the person back."""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from builders import customer, edit_text, land, line_bytes, line_item, order, product
from pipeline_helpers import assert_gold_equals, typed_silver

from order_pipeline.cli import main as cli
from order_pipeline.common.config import conf_dir

SCHEMA = "erasure_test"
AS_OF = "2026-05-20T00:00:00Z"
OLD = {"first_name": "Zebulon", "last_name": "Quxworthy", "email": "zq.first@erase-test.example",
       "phone": "+44 7700 900111", "city": "Erasmusville"}  # fmt: skip
NEW = {**OLD, "email": "zebulon.quxworthy@erase-test.example", "phone": "+44 7700 900123"}
# every personal value the person ever had: none may remain anywhere after the erasure
NEEDLES = sorted(set(OLD.values()) | set(NEW.values()))
C1_V1 = customer("C1", **OLD, updated_at="2026-05-01T10:00:00Z")
C1_V2 = customer("C1", **NEW, updated_at="2026-05-02T10:00:00Z")
C2 = customer("C2", first_name="Ada", last_name="Byron", email="ada@example.org", city="London")
C3 = customer(
    "C3", first_name="Alan", last_name="Turing", email="alan@example.org", city="Wilmslow"
)
C3_BAD = customer("C3", email="not-an-email", updated_at="2026-05-03T10:00:00Z")


def run(root: Path, *args: str) -> int:
    return cli.main(["run", "--data-root", str(root), "--as-of", AS_OF, *args])


def parquet_text(path: Path) -> bytes:
    """Every value of a parquet file, decoded (its pages may be compressed)."""
    table = pq.read_table(path)
    return json.dumps(table.to_pylist(), default=str, ensure_ascii=False).encode("utf-8")


def personal_bytes(root: Path) -> dict[str, list[str]]:
    """needle -> files under ``root`` holding it: as raw bytes, decompressed, or decoded."""
    hits: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        forms = [data]
        if path.name.endswith(".gz"):
            forms.append(gzip.decompress(data))
        if path.name.endswith(".parquet"):
            forms.append(parquet_text(path))
        for needle in NEEDLES:
            if any(needle.encode() in form for form in forms):
                hits.setdefault(needle, []).append(str(path.relative_to(root)))
    return hits


@pytest.fixture(scope="module")
def erased(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("erasure")
    conf = root.parent / f"{root.name}-conf"
    shutil.copytree(conf_dir(), conf)
    local = conf / "local.yml"
    edit_text(local, ("schema: lakehouse", f"schema: {SCHEMA}"))
    landing = root / "landing"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORDER_PIPELINE_CONF", str(conf))
        land(landing, "customers", [C1_V1, C2])
        for task in ("bronze_customers", "silver_customers"):  # the rest lands in the next run
            assert run(root, "--task", task) == 0
        land(landing, "products", [product("P1")])
        land(landing, "orders", [order("O1", "C1"), order("O2", "C2")])
        land(landing, "line_items", [line_item("L1", "O1"), line_item("L2", "O2")])
        # the person's newer snapshot (silver is updated: the change feed keeps both images),
        # a quarantined bad e-mail, a line cut short (key still readable), a line with no key
        # that holds the phone, and other people's lines beside them, one ending in CRLF
        mixed = land(landing, "customers", [
            json.dumps(C3), C1_V2, customer("C1", **{**NEW, "email": "zebulon@"}, updated_at="2026-05-02T11:00:00Z"),
            '{"customer_id": "C1", "first_name": "Zebulon", "email": "' + NEW["email"] + '", "pho',
            "call me back on " + NEW["phone"], json.dumps(C3_BAD).encode() + b"\r",
        ], name="mixed.json")  # fmt: skip
        gz = landing / "customers" / "more.json.gz"
        gz.write_bytes(gzip.compress(line_bytes(C1_V2) + b"\n" + line_bytes(C2) + b"\n"))
        # a line item whose order (the person's) has not landed: deferred
        land(landing, "line_items", [line_item("L3", "O3")])
        assert run(root) == 0
        before = personal_bytes(root)
        tables_before = snapshot(spark)
        started = time.monotonic()
        assert cli.main(["erase", "customer", "C1", "--data-root", str(root),
                         "--reason", "art. 17 request 2026-117"]) == 0  # fmt: skip
        seconds = time.monotonic() - started
        print(f"erasure took {seconds:.1f}s")
        yield {
            "root": root, "before": before, "after": personal_bytes(root), "tables": tables_before,
            "mixed": mixed, "gz": gz, "seconds": seconds, "conf": conf,
        }  # fmt: skip


def frozen(value):
    """A collected value that can go in a set: arrays and structs as tuples."""
    if isinstance(value, list | tuple):
        return tuple(frozen(v) for v in value)
    return value


def snapshot(spark) -> dict[str, set[tuple]]:
    return {
        table: {frozen(r) for r in spark.table(f"{SCHEMA}.{table}").collect()}
        for table in ("bronze_customers", "silver_customers", "quarantine_customers",
                      "gold_order_details", "deferred_line_items")
    }  # fmt: skip


def test_the_search_finds_the_person_where_the_pipeline_put_them(erased):
    """The byte search is meaningful: before the erasure it finds every value in landing, in
    the bronze stream's links, in compressed parquet data files and in silver's change feed."""
    before = erased["before"]
    assert set(before) == set(NEEDLES)
    found = {f for files in before.values() for f in files}
    assert any(f.startswith("landing/customers/") for f in found)
    assert any("checkpoints/bronze_customers/_landing/" in f for f in found)
    for table in (
        "bronze_customers",
        "silver_customers",
        "quarantine_customers",
        "gold_order_details",
    ):
        assert any(f"/{table}/part-" in f and f.endswith(".parquet") for f in found), table
    assert any("/silver_customers/_change_data/" in f for f in found)
    # the Delta logs never held them: personal fields are kept out of the file statistics
    assert not any("_delta_log" in f for f in found)


def test_no_byte_under_the_data_root_holds_the_person(erased):
    assert erased["after"] == {}


def test_other_lines_of_rewritten_landing_files_are_byte_exact(erased):
    assert erased["mixed"].read_bytes() == (
        line_bytes(json.dumps(C3)) + b"\n" + json.dumps(C3_BAD).encode() + b"\r\n"
    )
    assert gzip.decompress(erased["gz"].read_bytes()) == line_bytes(C2) + b"\n"


def test_tables_lose_the_person_and_nothing_else(erased, spark):
    before, after = erased["tables"], snapshot(spark)
    columns = {t: spark.table(f"{SCHEMA}.{t}").columns for t in before}

    def field(table, row, name):
        return row[columns[table].index(name)]

    def mine(table, row) -> bool:
        text = json.dumps(row, default=str)
        return "C1" in text or any(n in text for n in NEEDLES)

    for table in ("bronze_customers", "quarantine_customers"):
        kept = {r for r in before[table] if not mine(table, r)}
        assert after[table] == kept, table
        assert len(kept) < len(before[table])
    assert len(before["quarantine_customers"]) - len(after["quarantine_customers"]) == 3
    personal = ("first_name", "last_name", "email", "phone", "city")
    expected_silver = {
        tuple(None if field("silver_customers", r, "customer_id") == "C1" and c in personal else v
              for c, v in zip(columns["silver_customers"], r, strict=True))
        for r in before["silver_customers"]
    }  # fmt: skip
    assert after["silver_customers"] == expected_silver
    masked = {"customer_name": "", "customer_email": None, "customer_city": None}
    expected_gold = {
        tuple(masked[c] if field("gold_order_details", r, "customer_id") == "C1" and c in masked else v
              for c, v in zip(columns["gold_order_details"], r, strict=True))
        for r in before["gold_order_details"]
    }  # fmt: skip
    assert after["gold_order_details"] == expected_gold
    assert after["deferred_line_items"] == before["deferred_line_items"] != set()


def test_the_audit_row_says_what_was_done_and_holds_no_personal_data(erased, spark):
    (row,) = spark.table(f"{SCHEMA}.ops_erasure_audit").collect()
    assert (row.entity, row.key, row.reason, row.status) == (
        "customers",
        "C1",
        "art. 17 request 2026-117",
        "DONE",
    )
    assert row.requested_by and row.subject_hash and len(row.subject_hash) == 64
    tables = {t["table"]: t for t in json.loads(row.tables)}
    assert set(tables) >= {"bronze_customers", "silver_customers", "gold_order_details"}
    for t in tables.values():
        assert t["version_after"] >= t["version_before"]
    assert tables["bronze_customers"]["rows_deleted"] == 6
    assert tables["quarantine_customers"]["rows_deleted"] == 3
    assert tables["silver_customers"]["rows_masked"] == 1
    assert row.landing_lines_removed == 6 and row.landing_files_rewritten == 3
    text = json.dumps(row.asDict(), default=str)
    assert not any(n in text for n in NEEDLES)


def test_next_runs_are_exact_and_do_not_bring_the_person_back(erased, spark):
    root = erased["root"]
    landing = root / "landing"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORDER_PIPELINE_CONF", str(erased["conf"]))
        # the deferred line item's order arrives; an older snapshot of the person arrives late
        land(landing, "orders", [order("O3", "C1")])
        land(landing, "customers", [C1_V1])
        assert cli.main(["replay", "customers", "--data-root", str(root)]) == 0
        assert run(root) == 0
    silver = typed_silver({
        "customers": [C1_V2, C2, C3], "products": [product("P1")],
        "orders": [order("O1", "C1"), order("O2", "C2"), order("O3", "C1")],
        "line_items": [line_item("L1", "O1"), line_item("L2", "O2"), line_item("L3", "O3")],
    })  # fmt: skip
    silver["customers"]["C1"].update(dict.fromkeys(OLD))
    actual = {
        r.customer_id: r.asDict() for r in spark.table(f"{SCHEMA}.silver_customers").collect()
    }
    assert {k: {c: v for c, v in r.items() if c in silver["customers"][k]} for k, r in actual.items()} == (
        silver["customers"]
    )  # fmt: skip
    assert {r.line_item_id for r in spark.table(f"{SCHEMA}.silver_line_items").collect()} == {
        "L1",
        "L2",
        "L3",
    }
    assert spark.table(f"{SCHEMA}.deferred_line_items").count() == 0
    assert_gold_equals(spark, lambda t: spark.table(f"{SCHEMA}.{t}"), silver, _as_of())


def _as_of():
    from datetime import datetime

    return datetime.fromisoformat(AS_OF.replace("Z", "+00:00")).replace(tzinfo=None)
