"""Test data builders: valid records by default, override what the test is about."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

T0 = "2026-05-01T10:00:00Z"


def customer(customer_id: str = "C1", **overrides: Any) -> dict[str, Any]:
    record = {
        "customer_id": customer_id, "first_name": "Ada", "last_name": "Lovelace",
        "email": f"{customer_id.lower()}@example.com", "phone": None, "city": "London",
        "country": "GB", "created_at": "2026-01-01T00:00:00Z", "updated_at": T0,
    }  # fmt: skip
    return {**record, **overrides}


def product(product_id: str = "P1", **overrides: Any) -> dict[str, Any]:
    record = {
        "product_id": product_id,
        "name": "Widget",
        "category": "Tools",
        "price": 9.99,
        "updated_at": T0,
    }
    return {**record, **overrides}


def order(order_id: str = "O1", customer_id: str = "C1", **overrides: Any) -> dict[str, Any]:
    record = {
        "order_id": order_id, "customer_id": customer_id, "order_ts": T0,
        "status": "pending", "updated_at": T0,
    }  # fmt: skip
    return {**record, **overrides}


def line_item(
    line_item_id: str = "L1", order_id: str = "O1", product_id: str = "P1", **overrides: Any
) -> dict[str, Any]:
    record = {
        "line_item_id": line_item_id, "order_id": order_id, "product_id": product_id,
        "quantity": 1, "unit_price": 9.99, "status": "pending", "delivered_at": None, "updated_at": T0,
    }  # fmt: skip
    return {**record, **overrides}


def land(
    landing: str | Path,
    entity: str,
    records: list[dict[str, Any] | str | bytes],
    name: str | None = None,
) -> Path:
    """Land JSON Lines atomically (written beside, then renamed in), as the contract says.
    A str record is written as is (to land malformed lines), bytes as they are (encodings)."""
    folder = Path(landing) / entity
    folder.mkdir(parents=True, exist_ok=True)
    name = name or f"part-{uuid.uuid4().hex[:12]}.json"
    staging = Path(landing) / "_staging"
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / name
    tmp.write_bytes(b"".join(line_bytes(r) + b"\n" for r in records))
    os.replace(tmp, folder / name)
    return folder / name


def line_bytes(record: dict[str, Any] | str | bytes) -> bytes:
    if isinstance(record, bytes):
        return record
    return (record if isinstance(record, str) else json.dumps(record)).encode("utf-8")


def edit_text(path: Path, *changes: tuple[str, str]) -> None:
    """Replace the first ``old`` by ``new`` in a (conf) file, for each change: every ``old``
    must be there, so a conf change that moves the text fails the test instead of leaving the
    file as it was."""
    text = path.read_text(encoding="utf-8")
    for old, new in changes:
        assert old in text, f"{path}: {old!r} not found"
        text = text.replace(old, new, 1)
    path.write_text(text, encoding="utf-8")
