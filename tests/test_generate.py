"""The seeded synthetic data generator (no Spark).

Every expectation is checked independently of the generator: lines are re-read with
``json.loads`` and judged by a small plain-Python reading of conf/pipeline.yml and
conf/quality/*.yml, not by the generator's own constants.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from order_pipeline.cli import generate as generate_job
from order_pipeline.synthetic.generator import GeneratorConfig, generate

CONF = Path(__file__).resolve().parents[1] / "conf"
CONTRACT: dict[str, dict[str, Any]] = yaml.safe_load((CONF / "pipeline.yml").read_text())[
    "entities"
]
RULES: dict[str, list[dict[str, Any]]] = {
    entity: yaml.safe_load((CONF / "quality" / f"{entity}.yml").read_text())["rules"]
    for entity in CONTRACT
}
NULLABLE = {("customers", "phone"), ("line_items", "delivered_at")}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})$")
END_DATE = date(2026, 5, 1)
SETTINGS: dict[str, Any] = {
    "seed": 7,
    "scale": 0.01,
    "products": 150,
    "files_per_entity": 3,
    "fault_rate": 0.2,  # high, so every fault kind shows up in a small batch
    "increment_ratio": 0.05,
    "end_date": END_DATE,
    "months": 3,
}


def quiet(_: str) -> None:
    return None


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Line:
    entity: str
    file: str  # relative to landing
    file_index: int  # position of the file in the batch, in landing order
    number: int  # 1-based
    text: str

    def parsed(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.text, parse_float=Decimal)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None


def read_batch(landing: Path, manifest: dict[str, Any]) -> dict[str, list[Line]]:
    lines: dict[str, list[Line]] = defaultdict(list)
    for index, entry in enumerate(manifest["files"]):
        text = (landing / entry["path"]).read_text(encoding="utf-8")
        assert text.endswith("\n")
        for number, row in enumerate(text.split("\n")[:-1], start=1):
            lines[entry["entity"]].append(Line(entry["entity"], entry["path"], index, number, row))
    return lines


def landed_files(landing: Path) -> dict[str, bytes]:
    return {
        p.relative_to(landing).as_posix(): p.read_bytes()
        for p in sorted(landing.rglob("*.json"))
        if "_staging" not in p.parts
    }


# --------------------------------------------------------------------------- rules


def parses_as(spark_type: str, value: Any) -> bool:
    """Would this JSON value parse to the contract type? (None counts as parseable.)"""
    if value is None:
        return True
    if spark_type == "string":
        return isinstance(value, str)
    if spark_type == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if spark_type.startswith("decimal"):
        return isinstance(value, Decimal | int) and not isinstance(value, bool)
    if spark_type == "timestamp":
        if not isinstance(value, str) or not TIMESTAMP.match(value):
            return False
        try:
            return datetime.fromisoformat(value).tzinfo is not None
        except ValueError:
            return False
    raise AssertionError(spark_type)


def failed_rules(entity: str, row: dict[str, Any]) -> set[str]:
    """The non-FK rules of conf/quality/<entity>.yml that a parsed row fails."""
    failed = set()
    fields = CONTRACT[entity]["fields"]
    if set(row) != set(fields) or not all(parses_as(fields[k], v) for k, v in row.items()):
        return {"malformed_record"}
    for rule in RULES[entity]:
        value = row.get(rule.get("column", ""))
        kind = rule["kind"]
        if kind == "not_null":
            fails = value is None
        elif value is None:
            fails = False
        elif kind == "regex":
            fails = not re.match(
                rule["pattern"].replace(r"\z", r"\Z"), value
            )  # Java \z is Python \Z
        elif kind == "in_set":
            fails = value not in rule["values"]
        elif kind == "range":
            low = rule.get("min")
            fails = low is not None and (value <= low if rule.get("strict_min") else value < low)
        else:
            fails = False
        if fails:
            failed.add(rule["name"])
    return failed


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    landing = tmp_path_factory.mktemp("landing")
    manifests = [
        generate(GeneratorConfig(landing=landing, batch=b, **SETTINGS), progress=quiet)
        for b in (0, 1)
    ]
    return {
        "landing": landing,
        "manifests": manifests,
        "lines": [read_batch(landing, m) for m in manifests],
    }


def fault_index(manifest: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(f["file"], f["line"]): f for f in manifest["faults"]}


def valid_rows(batch: dict[str, list[Line]], manifest: dict[str, Any], entity: str) -> list[dict]:
    """Parsed lines that are not quarantine-type faults (valid data, maybe late or copied)."""
    faults = fault_index(manifest)
    rows = []
    for line in batch[entity]:
        fault = faults.get((line.file, line.number))
        if fault is None or fault["expected_rule"] is None:
            rows.append(line.parsed())
    return rows


# --------------------------------------------------------------------------- tests


def test_same_seed_gives_byte_identical_files(landed: dict[str, Any], tmp_path: Path) -> None:
    again = tmp_path / "again"
    for batch in (0, 1):
        generate(GeneratorConfig(landing=again, batch=batch, **SETTINGS), progress=quiet)
    assert landed_files(again) == landed_files(landed["landing"])


def test_a_different_seed_gives_different_data(landed: dict[str, Any], tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate(GeneratorConfig(landing=other, **{**SETTINGS, "seed": 8}), progress=quiet)
    ours = landed["landing"] / "orders" / "part-s7-b0000-00001.json"
    theirs = other / "orders" / "part-s8-b0000-00001.json"
    assert ours.read_bytes() != theirs.read_bytes()


def test_scale_factor_sizes() -> None:
    sf1 = GeneratorConfig(landing=Path("x"), scale=1.0)
    assert (sf1.count("customers"), sf1.count("products"), sf1.count("orders")) == (
        10_000,
        1_000,
        100_000,
    )
    sf10 = GeneratorConfig(landing=Path("x"), scale=10, orders=5)
    assert (sf10.count("customers"), sf10.count("orders")) == (100_000, 5)


def test_manifest_matches_the_files(landed: dict[str, Any]) -> None:
    landing = landed["landing"]
    for manifest, batch in zip(landed["manifests"], landed["lines"], strict=True):
        on_disk = json.loads(
            (landing / "_manifests" / f"s7-b{manifest['batch']:04d}.json").read_text()
        )
        assert on_disk == manifest
        for entry in manifest["files"]:
            assert entry["path"].startswith(entry["entity"] + "/")
            assert re.fullmatch(
                rf"part-s7-b{manifest['batch']:04d}-\d{{5}}\.json", entry["path"].split("/")[1]
            )
            assert not entry["skipped"]
        for entity in CONTRACT:
            assert manifest["counts"][entity]["lines"] == len(batch[entity])
            kinds = Counter(f["kind"] for f in manifest["faults"] if f["entity"] == entity)
            assert manifest["counts"][entity]["faults"] == dict(kinds)
        assert len(fault_index(manifest)) == len(manifest["faults"])  # one fault per line


def test_fault_rate_is_the_share_of_lines(landed: dict[str, Any]) -> None:
    manifest = landed["manifests"][0]
    total = sum(c["lines"] for c in manifest["counts"].values())
    assert 0.15 < len(manifest["faults"]) / total < 0.25


def test_every_fault_kind_shows_up(landed: dict[str, Any]) -> None:
    kinds = {(f["entity"], f["kind"]) for f in landed["manifests"][0]["faults"]}
    common = {"malformed_json", "wrong_type", "null_key", "null_updated_at"}
    common |= {"exact_duplicate", "out_of_order"}
    expected = {(e, k) for e in CONTRACT for k in common}
    expected |= {("customers", "bad_email"), ("products", "non_positive_price")}
    expected |= {("orders", "unknown_status"), ("line_items", "unknown_status")}
    expected |= {
        ("line_items", k)
        for k in ("non_positive_quantity", "negative_unit_price", "orphan_line_item")
    }
    expected.add(("line_items", "early_line_item"))
    assert expected <= kinds


def test_expected_rules_are_names_from_conf(landed: dict[str, Any]) -> None:
    for manifest in landed["manifests"]:
        for fault in manifest["faults"]:
            names = {rule["name"] for rule in RULES[fault["entity"]]}
            assert fault["expected_rule"] is None or fault["expected_rule"] in names, fault


def test_each_recorded_fault_is_really_in_its_line(landed: dict[str, Any]) -> None:
    all_orders = {
        row["order_id"]
        for m, b in zip(landed["manifests"], landed["lines"], strict=True)
        for row in valid_rows(b, m, "orders")
    }
    for manifest, batch in zip(landed["manifests"], landed["lines"], strict=True):
        by_position = {(line.file, line.number): line for lines in batch.values() for line in lines}
        texts = {e: Counter(line.text for line in lines) for e, lines in batch.items()}
        valid_keys = {
            e: {row[CONTRACT[e]["key"]] for row in valid_rows(batch, manifest, e)} for e in CONTRACT
        }
        # (file position, updated_at) of every parseable line, per entity and key
        seen: dict[str, dict[str, list[tuple[int, datetime]]]] = {
            e: defaultdict(list) for e in CONTRACT
        }
        for entity, lines in batch.items():
            for line in lines:
                row = line.parsed()
                if row and parses_as("timestamp", row.get("updated_at")) and row["updated_at"]:
                    key = row.get(CONTRACT[entity]["key"])
                    seen[entity][key].append((line.file_index, ts(row["updated_at"])))
        for fault in manifest["faults"]:
            entity, kind = fault["entity"], fault["kind"]
            line = by_position[(fault["file"], fault["line"])]
            key_column = CONTRACT[entity]["key"]
            row = line.parsed()
            if kind == "malformed_json":
                assert row is None, line
                assert fault["key"] in valid_keys[entity]
                continue
            assert row is not None, line
            failed = failed_rules(entity, row)
            if fault["expected_rule"] is None or kind == "orphan_line_item":
                assert failed == set(), (fault, line)
            else:
                assert failed == {fault["expected_rule"]}, (fault, line, failed)
            if kind not in ("null_key", "orphan_line_item"):
                assert row[key_column] == fault["key"], (fault, line)
            if fault["expected_rule"] is not None and kind != "orphan_line_item":
                # an extra snapshot: the key still has valid rows in the same batch
                assert fault["key"] in valid_keys[entity], fault
            if kind == "wrong_type":
                assert any(not parses_as(CONTRACT[entity]["fields"][k], v) for k, v in row.items())
                assert not any(isinstance(v, str) and v.strip().isdigit() for v in row.values())
            elif kind == "null_key":
                assert row[key_column] is None and row["updated_at"] is not None
            elif kind == "bad_email":
                assert not re.match(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$", row["email"]), row
            elif kind == "exact_duplicate":
                assert texts[entity][line.text] >= 2, line
            elif kind == "out_of_order":
                newer_earlier = [
                    (index, updated)
                    for index, updated in seen[entity][fault["key"]]
                    if index < line.file_index and updated > ts(row["updated_at"])
                ]
                assert newer_earlier, line
            elif kind == "orphan_line_item":
                assert row["order_id"] in all_orders
            elif kind == "early_line_item":
                assert fault.get("parent_batch") == 1


def test_valid_lines_parse_to_the_contract(landed: dict[str, Any]) -> None:
    offsets = Counter()
    for manifest, batch in zip(landed["manifests"], landed["lines"], strict=True):
        for entity, spec in CONTRACT.items():
            fields = spec["fields"]
            for row in valid_rows(batch, manifest, entity):
                assert row is not None
                assert list(row) == list(fields)  # every field, contract order
                assert failed_rules(entity, row) == set(), row
                for name, spark_type in fields.items():
                    value = row[name]
                    if (entity, name) not in NULLABLE:
                        assert value is not None, (entity, name, row)
                    assert parses_as(spark_type, value), (entity, name, row)
                    if spark_type.startswith("decimal") and value is not None:
                        assert isinstance(value, Decimal) and value.as_tuple().exponent == -2
                        assert len(value.as_tuple().digits) <= 10
                    if spark_type == "timestamp" and value is not None:
                        offsets["Z" if value.endswith("Z") else "offset"] += 1
                if entity == "customers":
                    assert re.fullmatch(r"[A-Z]{2}", row["country"])
    assert offsets["Z"] > offsets["offset"] > 0


def test_snapshots_tell_a_consistent_story(landed: dict[str, Any]) -> None:
    """Status order per key, orders consistent with their items, prices from products."""
    transitions = {
        "orders": {
            ("pending", "processing"), ("processing", "shipped"), ("shipped", "delivered"),
            ("pending", "cancelled"), ("processing", "cancelled"),
        },
        "line_items": {
            ("pending", "shipped"), ("shipped", "delivered"), ("delivered", "returned"),
            ("pending", "cancelled"),
        },
    }  # fmt: skip
    rows = {
        e: [r for m, b in zip(landed["manifests"], landed["lines"], strict=True)
            for r in valid_rows(b, m, e)]
        for e in CONTRACT
    }  # fmt: skip
    customers = {r["customer_id"] for r in rows["customers"]}
    prices = defaultdict(set)
    for r in rows["products"]:
        prices[r["product_id"]].add(r["price"])
    latest: dict[str, dict[str, dict]] = {}
    for entity in ("orders", "line_items"):
        key = CONTRACT[entity]["key"]
        history = defaultdict(dict)
        for r in rows[entity]:
            history[r[key]][r["updated_at"]] = r  # copies of a snapshot collapse
        latest[entity] = {}
        for k, snapshots in history.items():
            ordered = sorted(snapshots.values(), key=lambda r: ts(r["updated_at"]))
            statuses = [r["status"] for r in ordered]
            # late copies may repeat an earlier state; the real sequence is the distinct one
            distinct = [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]]
            assert distinct[0] == "pending", (k, statuses)
            for a, b in pairwise(distinct):
                assert (a, b) in transitions[entity], (k, statuses)
            latest[entity][k] = ordered[-1]
    orders = latest["orders"]
    for r in rows["orders"]:
        assert r["customer_id"] in customers
        assert ts(r["order_ts"]) <= ts(r["updated_at"])
        assert ts(r["order_ts"]) >= datetime.fromisoformat("2026-02-01T00:00:00Z")
    items_of = defaultdict(list)
    for item in latest["line_items"].values():
        items_of[item["order_id"]].append(item)
        assert item["unit_price"] in prices[item["product_id"]]
        assert item["order_id"] in orders
        delivered = item["delivered_at"]
        assert (delivered is not None) == (item["status"] in ("delivered", "returned"))
        if delivered is not None:
            assert ts(delivered) > ts(orders[item["order_id"]]["order_ts"])
    for order_id, order in orders.items():
        statuses = {i["status"] for i in items_of[order_id]}
        if order["status"] == "delivered":
            assert statuses == {"delivered"}, order_id
        if order["status"] == "cancelled":
            assert statuses == {"cancelled"}, order_id
    n_items = len(latest["line_items"]) / len(orders)
    assert 2.6 < n_items < 3.4
    final = Counter(o["status"] for o in orders.values())
    assert final["delivered"] > final["cancelled"] > 0 and final["shipped"] > 0


def test_early_line_items_wait_for_batch_1(landed: dict[str, Any]) -> None:
    batch0, batch1 = landed["lines"]
    manifest0, manifest1 = landed["manifests"]
    early = [f for f in manifest0["faults"] if f["kind"] == "early_line_item"]
    assert early
    by_position = {(line.file, line.number): line for line in batch0["line_items"]}
    parents = {by_position[(f["file"], f["line"])].parsed()["order_id"] for f in early}
    # not even a faulty or truncated line of those orders in batch 0
    assert not any(p in line.text for p in parents for line in batch0["orders"])
    orders1 = {r["order_id"] for r in valid_rows(batch1, manifest1, "orders")}
    assert parents <= orders1
    assert not [f for f in manifest1["faults"] if f["kind"] == "early_line_item"]


def test_orphans_reference_products_that_never_exist(landed: dict[str, Any]) -> None:
    products = {
        line.parsed()["product_id"]
        for batch in landed["lines"]
        for line in batch["products"]
        if line.parsed() is not None
    }
    orphans = [
        f for m in landed["manifests"] for f in m["faults"] if f["kind"] == "orphan_line_item"
    ]
    assert orphans
    for batch in landed["lines"]:
        for line in batch["line_items"]:
            row = line.parsed()
            if row and row["line_item_id"] in {f["key"] for f in orphans}:
                assert row["product_id"] not in products


def test_an_increment_is_about_increment_ratio_of_batch_0(landed: dict[str, Any]) -> None:
    sizes = [sum(c["lines"] for c in m["counts"].values()) for m in landed["manifests"]]
    assert 0.7 < sizes[1] / sizes[0] / SETTINGS["increment_ratio"] < 1.3, sizes


def test_increment_snapshots_are_newer_than_batch_0(landed: dict[str, Any]) -> None:
    (batch0, batch1), (manifest0, manifest1) = landed["lines"], landed["manifests"]
    window_start = ts(manifest1["window"]["from"])
    assert ts(manifest0["window"]["to"]) == window_start
    # quarantine-type faults and recorded late arrivals are not increments of state
    skip = {
        (f["file"], f["line"])
        for f in manifest1["faults"]
        if f["kind"] == "out_of_order" or f["expected_rule"] is not None
    }
    early = {(f["file"], f["line"]) for f in manifest0["faults"] if f["kind"] == "early_line_item"}
    withheld = {
        line.parsed()["order_id"]
        for line in batch0["line_items"]
        if (line.file, line.number) in early
    }
    changed = Counter()
    for entity, spec in CONTRACT.items():
        key = spec["key"]
        newest: dict[str, datetime] = {}
        for row in valid_rows(batch0, manifest0, entity):
            updated = ts(row["updated_at"])
            newest[row[key]] = max(updated, newest.get(row[key], updated))
        for line in batch1[entity]:
            if (line.file, line.number) in skip:
                continue
            row = line.parsed()
            if row[key] in newest:
                assert ts(row["updated_at"]) > newest[row[key]], row
                changed[entity] += 1
            elif ts(row["updated_at"]) < window_start:
                # only the history of the orders withheld from batch 0 is older
                assert entity == "orders" and row["order_id"] in withheld, row
    assert changed["orders"] and changed["line_items"]


def test_an_increment_depends_only_on_seed_and_batch(
    landed: dict[str, Any], tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh"
    generate(GeneratorConfig(landing=fresh, batch=2, **SETTINGS), progress=quiet)
    again = tmp_path / "again"
    for batch in (0, 1, 2):
        generate(GeneratorConfig(landing=again, batch=batch, **SETTINGS), progress=quiet)
    batch2 = {k: v for k, v in landed_files(again).items() if "b0002" in k}
    assert batch2 and landed_files(fresh) == batch2


def test_rerunning_lands_nothing_new(tmp_path: Path) -> None:
    config = GeneratorConfig(landing=tmp_path, **{**SETTINGS, "scale": 0.002})
    first = generate(config, progress=quiet)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("part-*.json")}
    messages: list[str] = []
    second = generate(config, progress=messages.append)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("part-*.json")}
    assert after == before
    assert all(f["skipped"] for f in second["files"])
    assert [f["path"] for f in second["files"]] == [f["path"] for f in first["files"]]
    assert second["faults"] == first["faults"]
    assert any("skipped" in m for m in messages)
    assert list((tmp_path / "_staging").iterdir()) == []


def test_landing_refuses_to_mix_different_parameters(tmp_path: Path) -> None:
    generate(GeneratorConfig(landing=tmp_path, **{**SETTINGS, "scale": 0.002}), progress=quiet)
    before = landed_files(tmp_path)
    with pytest.raises(FileExistsError):
        generate(GeneratorConfig(landing=tmp_path, **{**SETTINGS, "scale": 0.003}), progress=quiet)
    assert landed_files(tmp_path) == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fault_rate", 2.0),
        ("scale", -1.0),
        ("batch", -1),
        ("files_per_entity", 0),
        ("increment_ratio", 0.0),
        ("months", 0),
        ("orders", 0),
        ("end_date", datetime(2026, 5, 1)),
    ],
)
def test_bad_config_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        GeneratorConfig(landing=Path("x"), **{field: value})


def test_cli_generates_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--data-root", str(tmp_path), "--seed", "3", "--scale", "0.002"]
    assert generate_job.main([*argv, "--end-date", "2026-05-01", "--files", "2"]) == 0
    out = capsys.readouterr().out
    for word in ("customers", "products", "orders", "line_items", "lines/s", "faults"):
        assert word in out
    manifest = json.loads((tmp_path / "landing" / "_manifests" / "s3-b0000.json").read_text())
    assert manifest["params"]["files_per_entity"] == 2
    # an increment takes batch 0's end date from its manifest
    assert generate_job.main([*argv, "--batch", "1", "--files", "2"]) == 0
    increment = json.loads((tmp_path / "landing" / "_manifests" / "s3-b0001.json").read_text())
    assert increment["end_date"] == "2026-05-01"
    assert generate_job.main([*argv, "--fault-rate", "2"]) == 2
    assert "fault_rate" in capsys.readouterr().err


def test_configure_parser_leaves_data_root_to_the_caller(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    generate_job.configure_parser(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--data-root", "x"])
    args = parser.parse_args(["--landing", str(tmp_path / "in"), "--scale", "0.001"])
    args.data_root = str(tmp_path / "unused")
    assert generate_job.run_cli(args) == 0
    assert (tmp_path / "in" / "orders").is_dir() and not (tmp_path / "unused").exists()


def test_output_is_identical_across_processes_with_different_hash_seeds(tmp_path: Path) -> None:
    """Faker's it_IT cities come from a set: the pools must not follow PYTHONHASHSEED."""
    import os
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; "
        "from order_pipeline.synthetic.generator import GeneratorConfig, generate; "
        "generate(GeneratorConfig(landing=Path(sys.argv[1]), seed=3, scale=0.003, "
        "end_date=__import__('datetime').date(2026, 1, 31)), progress=lambda _: None)"
    )
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / hash_seed)], check=True, env=env
        )
    first = sorted((tmp_path / "1").rglob("*.json"))
    assert first
    for path in first:
        assert (
            path.read_bytes() == (tmp_path / "2" / path.relative_to(tmp_path / "1")).read_bytes()
        ), path


def test_the_generator_invents_the_entities_of_conf_pipeline() -> None:
    from order_pipeline.synthetic.generator import ENTITIES

    assert list(ENTITIES) == list(CONTRACT)


def test_deletes_are_injected_at_their_rate_and_recorded(
    landed: dict[str, Any], tmp_path: Path
) -> None:
    """delete_rate adds a delete after a share of the genuine lines, up to an hour after
    the snapshot it follows, and lists each in the manifest; the other lines stay as
    delete_rate 0 lands them."""
    target = tmp_path / "deletes"
    manifest = generate(
        GeneratorConfig(landing=target, **{**SETTINGS, "delete_rate": 0.05}), progress=quiet
    )
    deletes = manifest["deletes"]
    faults = fault_index(manifest)
    plain, plain_manifest = landed["lines"][0], landed["manifests"][0]
    genuine = sum(len(plain[e]) for e in CONTRACT) - len(plain_manifest["faults"])
    assert 0.035 < len(deletes) / genuine < 0.065
    for entity in CONTRACT:
        key = CONTRACT[entity]["key"]
        ours = [d for d in deletes if d["entity"] == entity]
        assert ours and manifest["counts"][entity]["deletes"] == len(ours)
        for d in ours:
            lines = (target / d["file"]).read_text().splitlines()
            record = json.loads(lines[d["line"] - 1])
            n = d["line"] - 1  # the genuine line it follows: a fault may sit in between
            while (
                faults.get((d["file"], n), {}).get("kind", "early_line_item") != "early_line_item"
            ):
                n -= 1
            before = json.loads(lines[n - 1])
            assert record == {key: d["key"], "updated_at": d["updated_at"], "_deleted": True}
            assert before[key] == d["key"]
            gap = ts(d["updated_at"]) - ts(before["updated_at"])
            assert timedelta(0) < gap <= timedelta(hours=1), d
        # without its deletes, every file holds what delete_rate 0 landed, in that order
        marked = {(d["file"], d["line"]) for d in ours}
        for name in {d["file"] for d in ours}:
            kept = [
                line
                for n, line in enumerate((target / name).read_text().splitlines(), 1)
                if (name, n) not in marked
            ]
            assert kept == (landed["landing"] / name).read_text().splitlines()
