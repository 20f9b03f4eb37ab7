"""Plain-Python expectations over landed files, written independently of the pipeline.

It reads the JSON Lines itself, applies the data contract's rules as DESIGN.md states them,
folds the latest valid snapshot per key and computes the gold answers, so tests can compare
the Spark pipeline's tables against numbers it did not produce.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

TYPES = {
    "customers": {"customer_id": "s", "first_name": "s", "last_name": "s", "email": "s", "phone": "s",
                  "city": "s", "country": "s", "created_at": "ts", "updated_at": "ts"},
    "products": {"product_id": "s", "name": "s", "category": "s", "price": "dec", "updated_at": "ts"},
    "orders": {"order_id": "s", "customer_id": "s", "order_ts": "ts", "status": "s", "updated_at": "ts"},
    "line_items": {"line_item_id": "s", "order_id": "s", "product_id": "s", "quantity": "int",
                   "unit_price": "dec", "status": "s", "delivered_at": "ts", "updated_at": "ts"},
}  # fmt: skip
KEYS = {
    "customers": "customer_id",
    "products": "product_id",
    "orders": "order_id",
    "line_items": "line_item_id",
}
PARENTS = {
    "orders": {"customer_id": "customers"},
    "line_items": {"order_id": "orders", "product_id": "products"},
}
# what a parent's delete does to the children of each relation (conf/pipeline.yml on_delete)
ON_DELETE = {
    "orders": {"customer_id": "keep"},
    "line_items": {"order_id": "cascade", "product_id": "keep"},
}
MARKER = "_deleted"  # a record with "_deleted": true is a tombstone of its key
EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\Z")
ORDER_STATUSES = {"pending", "processing", "shipped", "delivered", "cancelled"}
LINE_STATUSES = {"pending", "shipped", "delivered", "cancelled", "returned"}


class Unparseable(ValueError):
    pass


# The contract's timestamp: an ISO 8601 date and time with a zone; instants in [1900, 2200).
ISO_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})"
)
SANE = (datetime(1900, 1, 1), datetime(2200, 1, 1))
DECIMAL_SCALE = 2  # decimal(10,2) everywhere in the contract


def load_object(line: str) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """The JSON object of a line, and its top-level (key, value) pairs, repeats included."""
    objects: list[list[tuple[str, Any]]] = []

    def keep(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        objects.append(pairs)
        return dict(pairs)

    raw = json.loads(line, object_pairs_hook=keep)
    if not isinstance(raw, dict):
        raise Unparseable(raw)
    return raw, objects[-1]  # the outermost object is completed last


def parse_issues(entity: str, raw: dict[str, Any], pairs: list[tuple[str, Any]]) -> list[str]:
    """Rules of kind parse_issue (and not_blank) a parseable object fails, by name."""
    names = [k for k, _ in pairs]
    issues = []
    if len(names) != len(set(names)):
        issues.append("duplicate_field")
    if set(names) - set(TYPES[entity]) - {MARKER}:
        issues.append("extra_field")
    for name, kind in TYPES[entity].items():
        value = raw.get(name)
        if kind == "ts" and value is not None:
            if not (isinstance(value, str) and ISO_TIMESTAMP.fullmatch(value)):
                issues.append("timestamp_format")
            parsed = parse_value("ts", value)
            if parsed is not None and not SANE[0] <= parsed < SANE[1]:
                issues.append("timestamp_range")
        if kind == "dec" and isinstance(value, float | int) and not isinstance(value, bool):
            text = json.dumps(value)
            if "." in text and "e" not in text.lower() and len(text.split(".")[1]) > DECIMAL_SCALE:
                issues.append("decimal_scale")
    key = raw.get(KEYS[entity])
    if isinstance(key, str) and not key.strip():
        issues.append(f"{KEYS[entity]}_not_blank")
    return sorted(set(issues))


def parse_value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "s":
        if not isinstance(value, str):
            raise Unparseable(value)
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise Unparseable(value)
        return value
    if kind == "dec":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Unparseable(value)
        return Decimal(str(value)).quantize(Decimal("0.01"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        # a number parses (as epoch seconds) but fails timestamp_format
        try:
            return datetime(1970, 1, 1) + timedelta(seconds=value)
        except OverflowError:
            return datetime.max
    if not isinstance(value, str):
        raise Unparseable(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise Unparseable(value) from exc
    if parsed.tzinfo is None:
        return parsed  # read in the session's zone (UTC), and fails timestamp_format
    return parsed.astimezone(UTC).replace(tzinfo=None)


def quarantine_reasons(entity: str, r: dict[str, Any]) -> list[str]:
    """Names of the quarantine rules a parsed record fails (DESIGN.md's minimum set); a
    delete only needs its key and updated_at."""
    key = KEYS[entity]
    reasons = []
    if r[key] is None:
        reasons.append(f"{key}_not_null")
    if r["updated_at"] is None:
        reasons.append("updated_at_not_null")
    if r.get(MARKER):
        return reasons
    if entity == "customers":
        if r["email"] is not None and not EMAIL.match(r["email"]):
            reasons.append("email_valid")
        if r["email"] is None:
            reasons.append("email_not_null")
    elif entity == "products":
        if r["price"] is not None and r["price"] <= 0:
            reasons.append("price_positive")
        if r["price"] is None:
            reasons.append("price_not_null")
    elif entity == "orders":
        if r["status"] is not None and r["status"] not in ORDER_STATUSES:
            reasons.append("status_allowed")
        if r["status"] is None:
            reasons.append("status_not_null")
        if r["order_ts"] is None:
            reasons.append("order_ts_not_null")
    else:
        if r["quantity"] is not None and r["quantity"] <= 0:
            reasons.append("quantity_positive")
        if r["quantity"] is None:
            reasons.append("quantity_not_null")
        if r["unit_price"] is not None and r["unit_price"] < 0:
            reasons.append("unit_price_not_negative")
        if r["unit_price"] is None:
            reasons.append("unit_price_not_null")
        if r["status"] is not None and r["status"] not in LINE_STATUSES:
            reasons.append("status_allowed")
        if r["status"] is None:
            reasons.append("status_not_null")
    return reasons


@dataclass
class Landed:
    """Every landed line of one entity, classified."""

    valid: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (record, file)
    quarantined: Counter = field(default_factory=Counter)  # (key, reasons tuple) -> n


def read_landing(landing: Path, entity: str) -> Landed:
    landed = Landed()
    for path in sorted((landing / entity).glob("*.json")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                raw, top = load_object(line)
                record = {f: parse_value(t, raw.get(f)) for f, t in TYPES[entity].items()}
                marker = raw.get(MARKER)
                if marker is not None and not isinstance(marker, bool):
                    raise Unparseable(marker)
                record[MARKER] = bool(marker)
            except (ValueError, Unparseable):
                landed.quarantined[(None, ("malformed_record",))] += 1
                continue
            reasons = [*quarantine_reasons(entity, record), *parse_issues(entity, raw, top)]
            reasons = (
                [r for r in reasons if r != "extra_field"]
                if reasons == ["extra_field"]
                else reasons
            )
            if reasons:
                landed.quarantined[(record[KEYS[entity]], tuple(sorted(reasons)))] += 1
            else:
                landed.valid.append((record, f"file:{path}"))
    return landed


def order_key(entity: str, record: dict[str, Any], file: str) -> tuple:
    """Snapshot order: updated_at, then deletes above upserts, then the other contract
    fields, then the file; None lowest."""
    fields = [f for f in TYPES[entity] if f not in (KEYS[entity], "updated_at")]
    values = [record["updated_at"], bool(record.get(MARKER)), *(record[f] for f in fields), file]
    return tuple((v is not None, v) for v in values)


def latest_per_key(
    entity: str, rows: list[tuple[dict[str, Any], str]]
) -> dict[str, dict[str, Any]]:
    """The live rows: per key the greatest snapshot, unless it is a delete."""
    best: dict[str, tuple[tuple, dict[str, Any]]] = {}
    for record, file in rows:
        key = record[KEYS[entity]]
        rank = order_key(entity, record, file)
        if key not in best or rank > best[key][0]:
            best[key] = (rank, record)
    return {
        k: {f: v for f, v in r.items() if f != MARKER}
        for k, (_, r) in best.items()
        if not r.get(MARKER)
    }


def expected_silver(landing: Path) -> tuple[dict[str, dict[str, dict]], dict[str, list[dict]]]:
    """Silver per entity after one run over everything landed, and the rows left deferred."""
    silver, deferred, _ = expected_state(landing)
    return silver, deferred


def has_parents(r: dict, parents: dict, rules: dict, silver: dict, tombstones: dict) -> bool:
    """Whether every parent of ``r`` is there: in silver, or deleted under a keep rule (a
    delete needs no parent)."""
    if r.get(MARKER):
        return True
    return all(
        r[c] in silver[p] or (rules[c] == "keep" and r[c] in tombstones[p])
        for c, p in parents.items()
    )


def expected_state(
    landing: Path,
) -> tuple[dict[str, dict[str, dict]], dict[str, list[dict]], dict[str, dict[str, datetime]]]:
    """Silver, deferred rows and tombstones (key -> newest delete's updated_at) per entity."""
    fold = expected_fold(landing)
    return fold.silver, fold.deferred, fold.tombstones


@dataclass
class Fold:
    """One run over everything landed, per entity: silver, the rows left deferred, the
    tombstones, the keys of the rows that passed (silver's keys and those whose newest
    snapshot is a delete) and the rows a parent's delete quarantined."""

    silver: dict[str, dict[str, dict]] = field(default_factory=dict)
    deferred: dict[str, list[dict]] = field(default_factory=dict)
    tombstones: dict[str, dict[str, datetime]] = field(default_factory=dict)
    passed: dict[str, list[dict]] = field(default_factory=dict)
    parent_deleted: dict[str, int] = field(default_factory=dict)


def expected_fold(landing: Path) -> Fold:
    """Deletes of parents, per relation: a child snapshot not newer than its parent's newest
    delete is deleted at that instant (cascade) or quarantined (quarantine); under keep a
    deleted parent satisfies the foreign key."""
    fold = Fold()
    silver, deferred, tombstones = fold.silver, fold.deferred, fold.tombstones
    for entity in ("customers", "products", "orders", "line_items"):
        valid = read_landing(landing, entity).valid
        parents = PARENTS.get(entity, {})
        rules = ON_DELETE.get(entity, {})
        judged = []
        for r, f in valid:
            for column, parent in parents.items():
                deleted_at = tombstones[parent].get(r[column])
                if r.get(MARKER) or deleted_at is None or deleted_at < r["updated_at"]:
                    continue
                if rules[column] == "cascade":
                    r = {**r, MARKER: True, "updated_at": deleted_at}
                elif rules[column] == "quarantine":
                    r = None
                    break
            if r is not None:
                judged.append((r, f))
        fold.parent_deleted[entity] = len(valid) - len(judged)
        ready = [(r, f) for r, f in judged if has_parents(r, parents, rules, silver, tombstones)]
        fold.passed[entity] = [r for r, _ in ready]
        deferred[entity] = [
            r for r, _ in judged if not has_parents(r, parents, rules, silver, tombstones)
        ]
        silver[entity] = latest_per_key(entity, ready)
        tombs: dict[str, datetime] = {}
        for r, _ in ready:
            key = r[KEYS[entity]]
            if r.get(MARKER) and (key not in tombs or r["updated_at"] > tombs[key]):
                tombs[key] = r["updated_at"]
        tombstones[entity] = tombs
    return fold


def gold_order_details(silver: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    rows = []
    for li in silver["line_items"].values():
        order = silver["orders"].get(li["order_id"], {})
        customer = silver["customers"].get(order.get("customer_id"), {})
        product = silver["products"].get(li["product_id"], {})
        rows.append({
            "line_item_id": li["line_item_id"], "order_id": li["order_id"], "product_id": li["product_id"],
            "customer_id": order.get("customer_id"), "order_ts": order.get("order_ts"),
            "order_status": order.get("status"), "line_status": li["status"], "quantity": li["quantity"],
            "unit_price": li["unit_price"], "line_total": (li["quantity"] * li["unit_price"]).quantize(Decimal("0.01")),
            "delivered_at": li["delivered_at"],
            "customer_name": " ".join(x for x in (customer.get("first_name"), customer.get("last_name")) if x is not None),
            "customer_email": customer.get("email"), "customer_city": customer.get("city"),
            "customer_country": customer.get("country"), "product_name": product.get("name"),
            "product_category": product.get("category"),
        })  # fmt: skip
    return rows


def gold_product_sales_monthly(details: list[dict[str, Any]]) -> dict[tuple, tuple]:
    """(month, product_id) -> (units, revenue, orders) over delivered line items."""
    units: Counter = Counter()
    revenue: dict[tuple, Decimal] = defaultdict(Decimal)
    orders: dict[tuple, set] = defaultdict(set)
    for d in details:
        if d["line_status"] != "delivered":
            continue
        key = (d["order_ts"].date().replace(day=1), d["product_id"])
        units[key] += d["quantity"]
        revenue[key] += d["line_total"]
        orders[key].add(d["order_id"])
    return {k: (units[k], revenue[k], len(orders[k])) for k in units}


def gold_completion(silver: dict[str, dict[str, dict]]) -> dict[str, tuple]:
    """order_id -> (total, delivered, cancelled, status, completed_at)."""
    items: dict[str, list[dict]] = defaultdict(list)
    for li in silver["line_items"].values():
        items[li["order_id"]].append(li)
    result = {}
    for order_id, order in silver["orders"].items():
        its = items.get(order_id, [])
        total = len(its)
        delivered = sum(1 for i in its if i["status"] == "delivered")
        cancelled = sum(1 for i in its if i["status"] == "cancelled")
        if order["status"] == "cancelled" or (total and cancelled == total):
            status, completed_at = "Cancelled", None
        elif total and delivered == total:
            status, completed_at = "Completed", max(i["delivered_at"] for i in its)
        else:
            status, completed_at = "In Progress", None
        result[order_id] = (total, delivered, cancelled, status, completed_at)
    return result


def most_sold_last_30d(details: list[dict[str, Any]], as_of: datetime) -> tuple | None:
    """(product_id, units, orders, sales_days, share rounded to 4 places) or None."""
    start = as_of - timedelta(days=30)
    window = [
        d for d in details if d["line_status"] == "delivered" and start <= d["order_ts"] < as_of
    ]
    if not window:
        return None
    units: Counter = Counter()
    orders: dict[str, set] = defaultdict(set)
    days: dict[str, set] = defaultdict(set)
    for d in window:
        units[d["product_id"]] += d["quantity"]
        orders[d["product_id"]].add(d["order_id"])
        days[d["product_id"]].add(d["order_ts"].date())
    best = min(units, key=lambda p: (-units[p], p))
    share = (Decimal(units[best]) / Decimal(sum(units.values()))).quantize(Decimal("0.0001"))
    return best, units[best], len(orders[best]), len(days[best]), share
