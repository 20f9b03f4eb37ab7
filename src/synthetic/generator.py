"""Seeded synthetic order-system data for the landing folder (pure Python, no Spark).

One call of ``generate`` writes one batch of JSON Lines files for customers, products,
orders and line items, plus a manifest that lists every deliberately injected fault with
the quality rule that must catch it. Output is byte-for-byte reproducible from the
configuration: batch 0 is the full initial load, batch k > 0 an increment that rebuilds
the state of batches 0..k-1 in memory from the seed (no landed file is ever read).

How the world is simulated:

* Faker (seeded) only builds small pools (names, cities, brands, email domains); every
  record then samples those pools with ``random.Random`` streams seeded from
  (seed, batch), which keeps scale factor 1 well under a minute.
* Each order gets its whole life planned when it is placed: pending, processing, shipped,
  delivered (or cancelled, or stuck in shipped because one item was cancelled or
  returned). Batch 0 lands every snapshot before the end of ``end_date``; the rest wait
  and land in the increment whose time window contains them. Increment k covers
  ``increment_ratio`` of the batch-0 time span, so it is about ``increment_ratio`` of
  batch 0 in size.
* Genuine snapshots are written in time order across a batch's files (file n+1 holds
  later snapshots than file n), so late arrivals are only the recorded faults
  (``out_of_order``, or an ``exact_duplicate`` copied into a later file).
* Faults are EXTRA lines (or extra keys) next to genuine ones, never replacements, so
  every genuine key still has its valid snapshots. A separate random stream drives faults
  and timestamp offsets, so the simulated state does not depend on them.
"""

from __future__ import annotations

import filecmp
import json
import os
import random
import unicodedata
import uuid
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any, TextIO

from faker import Faker

# The entities this generator invents data for: the order system's own four (their fields
# and faults are written below). A fifth entity in conf/pipeline.yml needs data of its own;
# tests/test_generate.py checks these against conf/pipeline.yml.
ENTITIES: tuple[str, ...] = ("customers", "products", "orders", "line_items")
KEYS: dict[str, str] = {
    "customers": "customer_id",
    "products": "product_id",
    "orders": "order_id",
    "line_items": "line_item_id",
}

# Rows per entity at scale factor 1 (line items follow from ~3 per order).
SF1_COUNTS: dict[str, int] = {"customers": 10_000, "products": 1_000, "orders": 100_000}

ORDER_STATUSES = ("pending", "processing", "shipped", "delivered", "cancelled")
LINE_ITEM_STATUSES = ("pending", "shipped", "delivered", "cancelled", "returned")

# Field layout of the record tuples, in contract order; ``updated_at`` is always last.
_ID, _TEXT, _TS, _MONEY, _INT = range(5)
FIELDS: dict[str, tuple[tuple[str, int], ...]] = {
    "customers": (
        ("customer_id", _ID), ("first_name", _TEXT), ("last_name", _TEXT), ("email", _TEXT),
        ("phone", _TEXT), ("city", _TEXT), ("country", _TEXT), ("created_at", _TS),
        ("updated_at", _TS),
    ),
    "products": (
        ("product_id", _ID), ("name", _TEXT), ("category", _TEXT), ("price", _MONEY),
        ("updated_at", _TS),
    ),
    "orders": (
        ("order_id", _ID), ("customer_id", _ID), ("order_ts", _TS), ("status", _TEXT),
        ("updated_at", _TS),
    ),
    "line_items": (
        ("line_item_id", _ID), ("order_id", _ID), ("product_id", _ID), ("quantity", _INT),
        ("unit_price", _MONEY), ("status", _TEXT), ("delivered_at", _TS), ("updated_at", _TS),
    ),
}  # fmt: skip
_FIELD_INDEX = {e: {name: i for i, (name, _) in enumerate(f)} for e, f in FIELDS.items()}

# Fault kinds per entity with their relative weights.
FAULT_WEIGHTS: dict[str, dict[str, int]] = {
    "customers": {
        "malformed_json": 1, "wrong_type": 1, "null_key": 1, "null_updated_at": 1,
        "bad_email": 2, "exact_duplicate": 2, "out_of_order": 2,
    },
    "products": {
        "malformed_json": 1, "wrong_type": 1, "null_key": 1, "null_updated_at": 1,
        "non_positive_price": 2, "exact_duplicate": 2, "out_of_order": 2,
    },
    "orders": {
        "malformed_json": 1, "wrong_type": 1, "null_key": 1, "null_updated_at": 1,
        "unknown_status": 2, "exact_duplicate": 2, "out_of_order": 2,
    },
    "line_items": {
        "malformed_json": 1, "wrong_type": 1, "null_key": 1, "null_updated_at": 1,
        "non_positive_quantity": 1, "negative_unit_price": 1, "unknown_status": 1,
        "exact_duplicate": 2, "out_of_order": 2, "orphan_line_item": 1,
    },
}  # fmt: skip
# Share of line-item faults that are early line items (whole orders withheld from batch 0).
EARLY_LINE_ITEM_SHARE = 0.1

_FIXED_RULES: dict[str, str | None] = {
    "malformed_json": "malformed_record",
    "wrong_type": "malformed_record",
    "null_updated_at": "updated_at_not_null",
    "bad_email": "email_valid",
    "non_positive_price": "price_positive",
    "non_positive_quantity": "quantity_positive",
    "negative_unit_price": "unit_price_not_negative",
    "unknown_status": "status_allowed",
    "exact_duplicate": None,
    "out_of_order": None,
    "early_line_item": None,
    "orphan_line_item": "product_exists",
}


def expected_rule(entity: str, kind: str) -> str | None:
    """The rule of conf/quality/<entity>.yml that must catch a fault kind (None: none)."""
    if kind == "null_key":
        return f"{KEYS[entity]}_not_null"
    return _FIXED_RULES[kind]


# Values that can never parse to the field's contract type (never numeric strings).
_WRONG_TYPES: dict[str, tuple[tuple[str, str], ...]] = {
    "customers": (("created_at", "not-a-date"), ("updated_at", "not-a-date")),
    "products": (("price", "abc"), ("price", "twelve"), ("updated_at", "not-a-date")),
    "orders": (("order_ts", "not-a-date"), ("order_ts", "yesterday"), ("updated_at", "not-a-date")),
    "line_items": (
        ("quantity", "three"), ("unit_price", "abc"), ("delivered_at", "not-a-date"),
        ("updated_at", "not-a-date"),
    ),
}  # fmt: skip
_UNKNOWN_STATUSES = {
    "orders": ("on_hold", "lost", "refunded", "backordered"),
    "line_items": ("lost", "backordered", "in_transit", "refunded"),
}

# (ISO code, Faker locale, calling code, weight)
COUNTRIES: tuple[tuple[str, str, int, int], ...] = (
    ("US", "en_US", 1, 28), ("GB", "en_GB", 44, 12), ("DE", "de_DE", 49, 14),
    ("FR", "fr_FR", 33, 11), ("ES", "es_ES", 34, 8), ("IT", "it_IT", 39, 8),
    ("NL", "nl_NL", 31, 7), ("CA", "en_CA", 1, 6), ("SE", "sv_SE", 46, 3),
    ("PL", "pl_PL", 48, 3),
)  # fmt: skip
_COMMON_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me")

# category: (price range in whole currency units, nouns)
CATEGORIES: dict[str, tuple[tuple[float, float], tuple[str, ...]]] = {
    "Electronics": ((15, 900), (
        "Headphones", "Smartwatch", "Bluetooth Speaker", "USB-C Charger", "Webcam",
        "Keyboard", "Wireless Mouse", "Monitor", "Tablet", "Power Bank")),
    "Home & Kitchen": ((8, 400), (
        "Coffee Maker", "Blender", "Knife Set", "Frying Pan", "Toaster", "Kettle",
        "Cutting Board", "Dinnerware Set", "Vacuum Cleaner", "Air Fryer")),
    "Books": ((5, 60), (
        "Novel", "Cookbook", "Biography", "Travel Guide", "Picture Book", "Poetry Collection",
        "Thriller", "Graphic Novel")),
    "Clothing": ((8, 200), (
        "T-Shirt", "Hoodie", "Jeans", "Rain Jacket", "Sneakers", "Wool Socks", "Dress", "Cap")),
    "Sports & Outdoors": ((10, 500), (
        "Yoga Mat", "Tent", "Running Shoes", "Water Bottle", "Bike Helmet", "Dumbbell Set",
        "Backpack", "Sleeping Bag")),
    "Beauty": ((4, 150), (
        "Shampoo", "Face Cream", "Electric Toothbrush", "Perfume", "Hair Dryer", "Lip Balm",
        "Sunscreen")),
    "Toys & Games": ((8, 150), (
        "Board Game", "Jigsaw Puzzle", "Building Blocks", "Plush Bear", "RC Car", "Card Game",
        "Doll House")),
    "Grocery": ((2, 40), (
        "Coffee Beans", "Green Tea", "Olive Oil", "Dark Chocolate", "Pasta", "Granola",
        "Honey", "Spice Set")),
}  # fmt: skip
_CATEGORY_NAMES = tuple(CATEGORIES)
_CATEGORY_CUM = tuple(accumulate((18, 16, 12, 16, 10, 10, 8, 10)))
_ADJECTIVES = (
    "Classic", "Pro", "Ultra", "Eco", "Compact", "Deluxe", "Premium", "Essential", "Smart",
    "Vintage", "Lite", "Max", "Organic", "Travel",
)  # fmt: skip

_ITEMS_PER_ORDER = (1,) * 20 + (2,) * 22 + (3,) * 20 + (4,) * 16 + (5,) * 12 + (6,) * 10
_QUANTITIES = (1,) * 55 + (2,) * 25 + (3,) * 10 + (4,) * 5 + (5,) * 3 + (10,) * 2
# UTC offsets in minutes for rendering timestamps: 60% 'Z', the rest the same instant
# written with a local offset.
_OFFSETS = (0,) * 12 + (120,) * 4 + (60,) * 2 + (-300, 330)

_HOUR = 3600
_DAY = 86400

Progress = Callable[[str], None]
Record = tuple[Any, ...]
Timeline = Sequence[Record]


def _today_utc() -> date:
    return datetime.now(UTC).date()


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """What to generate; validated on construction (ValueError names the field).

    ``scale`` 1.0 is 10,000 customers, 1,000 products and 100,000 orders (~300,000 line
    items); ``customers``/``products``/``orders`` override it per entity. Every batch of
    one seed must use the same settings (batch k rebuilds batches 0..k-1 from them).
    """

    landing: Path
    seed: int = 42
    batch: int = 0
    scale: float = 0.01
    customers: int | None = None
    products: int | None = None
    orders: int | None = None
    files_per_entity: int = 4
    fault_rate: float = 0.02
    # share of genuine lines followed by a delete of their key (conf/pipeline.yml deletes),
    # dated up to an hour later: later snapshots of the key within that hour land after it
    # (older upserts that must not bring the key back), later ones re-create it
    delete_rate: float = 0.0
    increment_ratio: float = 0.01
    end_date: date = field(default_factory=_today_utc)
    months: int = 6

    def __post_init__(self) -> None:
        def fail(name: str, problem: str) -> None:
            raise ValueError(f"GeneratorConfig.{name} {problem}, got {getattr(self, name)!r}")

        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value: object) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool)

        if not isinstance(self.landing, str | os.PathLike):
            fail("landing", "must be a path")
        object.__setattr__(self, "landing", Path(self.landing))
        if not is_int(self.seed) or self.seed < 0:
            fail("seed", "must be an integer >= 0")
        if not is_int(self.batch) or self.batch < 0:
            fail("batch", "must be an integer >= 0")
        if not is_number(self.scale) or not 0 < self.scale <= 1000:
            fail("scale", "must be a number in (0, 1000]")
        object.__setattr__(self, "scale", float(self.scale))
        for name in ("customers", "products", "orders"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                fail(name, "must be None or an integer >= 1")
        if not is_int(self.files_per_entity) or not 1 <= self.files_per_entity <= 10_000:
            fail("files_per_entity", "must be an integer in [1, 10000]")
        if not is_number(self.fault_rate) or not 0 <= self.fault_rate <= 0.5:
            fail("fault_rate", "must be a share of lines in [0, 0.5]")
        object.__setattr__(self, "fault_rate", float(self.fault_rate))
        if not is_number(self.delete_rate) or not 0 <= self.delete_rate <= 0.5:
            fail("delete_rate", "must be a share of lines in [0, 0.5]")
        object.__setattr__(self, "delete_rate", float(self.delete_rate))
        if not is_number(self.increment_ratio) or not 0 < self.increment_ratio <= 1:
            fail("increment_ratio", "must be a share of batch 0 in (0, 1]")
        object.__setattr__(self, "increment_ratio", float(self.increment_ratio))
        if not isinstance(self.end_date, date) or isinstance(self.end_date, datetime):
            fail("end_date", "must be a datetime.date")
        if not is_int(self.months) or not 1 <= self.months <= 120:
            fail("months", "must be an integer in [1, 120]")

    def count(self, entity: str) -> int:
        """Rows of customers, products or orders in batch 0."""
        explicit = getattr(self, entity)
        if explicit is not None:
            return int(explicit)
        return max(1, round(SF1_COUNTS[entity] * self.scale))

    def params(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "batch": self.batch,
            "scale": self.scale,
            "customers": self.count("customers"),
            "products": self.count("products"),
            "orders": self.count("orders"),
            "files_per_entity": self.files_per_entity,
            "fault_rate": self.fault_rate,
            **({"delete_rate": self.delete_rate} if self.delete_rate else {}),
            "increment_ratio": self.increment_ratio,
            "end_date": self.end_date.isoformat(),
            "months": self.months,
        }


def file_name(seed: int, batch: int, n: int) -> str:
    return f"part-s{seed}-b{batch:04d}-{n:05d}.json"


def manifest_path(landing: Path, seed: int, batch: int) -> Path:
    return Path(landing) / "_manifests" / f"s{seed}-b{batch:04d}.json"


def read_manifest(landing: Path, seed: int, batch: int) -> dict[str, Any] | None:
    path = manifest_path(landing, seed, batch)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- pools


@dataclass(frozen=True)
class _Country:
    code: str
    calling_code: int
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    cities: tuple[str, ...]
    domains: tuple[str, ...]


@dataclass(frozen=True)
class _Pools:
    countries: tuple[_Country, ...]
    country_cum: tuple[int, ...]
    by_code: dict[str, _Country]
    slugs: dict[str, str]
    brands: tuple[str, ...]


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in ascii_text.lower() if ch.isalnum()) or "user"


def _unique(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))


def _city_pool(fake: Faker, n: int) -> tuple[str, ...]:
    """Seeded cities, the same in every process. Some Faker locales (it_IT) build their
    city list from a set, whose order follows PYTHONHASHSEED: draw from a sorted copy."""
    for provider in fake.providers:
        listed = getattr(provider, "cities", None)
        if isinstance(listed, (list, tuple, set, frozenset)) and listed:
            ordered = sorted(listed)
            return _unique([fake.random_element(ordered) for _ in range(n)])
    return _unique([fake.city() for _ in range(n)])


def _build_pools(seed: int) -> _Pools:
    countries = []
    slugs: dict[str, str] = {}
    for i, (code, locale, calling_code, _) in enumerate(COUNTRIES):
        fake = Faker(locale)
        fake.seed_instance(seed * 1000 + i)
        first = _unique([fake.first_name() for _ in range(200)])
        last = _unique([fake.last_name() for _ in range(200)])
        cities = _city_pool(fake, 60)
        domains = _unique([fake.free_email_domain() for _ in range(20)] + list(_COMMON_DOMAINS))
        for name in first + last:
            slugs[name] = _slug(name)
        countries.append(_Country(code, calling_code, first, last, cities, domains))
    fake = Faker("en_US")
    fake.seed_instance(seed)
    brands = _unique(
        [fake.company().split()[0].strip(",.-").title() for _ in range(200)]
        + [fake.last_name() for _ in range(50)]
    )
    cum, total = [], 0
    for *_, weight in COUNTRIES:
        total += weight
        cum.append(total)
    return _Pools(
        countries=tuple(countries),
        country_cum=tuple(cum),
        by_code={c.code: c for c in countries},
        slugs=slugs,
        brands=brands,
    )


# --------------------------------------------------------------------------- rendering

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def _offset_suffix(minutes: int) -> str:
    if minutes == 0:
        return "Z"
    sign = "+" if minutes > 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


_SUFFIXES = {m: _offset_suffix(m) for m in set(_OFFSETS)}


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"


class _Renderer:
    """Renders record tuples as JSON lines: ISO 8601 seconds, money with two decimals."""

    def __init__(self) -> None:
        self._dates: dict[int, str] = {}
        self._clock: list[str] = []
        self._text: dict[str, str] = {}
        self._prefixes = {e: [f'"{name}":' for name, _ in f] for e, f in FIELDS.items()}
        self._genuine = {"orders": self._order, "line_items": self._line_item}

    def timestamp(self, ts: int, offset: int) -> str:
        days, secs = divmod(ts + offset * 60, _DAY)
        day = self._dates.get(days)
        if day is None:
            day = self._dates[days] = date.fromordinal(_EPOCH_ORDINAL + days).isoformat()
        if not self._clock:
            self._clock = [
                f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)
            ]
        return f"{day}T{self._clock[secs]}{_SUFFIXES[offset]}"

    # Fast paths for the two big entities' genuine records (same output as ``line``).
    def _order(self, r: Record, offset: int) -> str:
        ts = self.timestamp
        return (
            f'{{"order_id":"{r[0]}","customer_id":"{r[1]}","order_ts":"{ts(r[2], offset)}",'
            f'"status":"{r[3]}","updated_at":"{ts(r[4], offset)}"}}'
        )

    def _line_item(self, r: Record, offset: int) -> str:
        ts = self.timestamp
        delivered = "null" if r[6] is None else f'"{ts(r[6], offset)}"'
        return (
            f'{{"line_item_id":"{r[0]}","order_id":"{r[1]}","product_id":"{r[2]}",'
            f'"quantity":{r[3]},"unit_price":{_money(r[4])},"status":"{r[5]}",'
            f'"delivered_at":{delivered},"updated_at":"{ts(r[7], offset)}"}}'
        )

    def genuine(self, entity: str, record: Record, offset: int) -> str:
        fast = self._genuine.get(entity)
        return fast(record, offset) if fast else self.line(entity, record, offset)

    def text(self, value: str) -> str:
        out = self._text.get(value)
        if out is None:
            out = json.dumps(value, ensure_ascii=False)
            if len(self._text) < 200_000:
                self._text[value] = out
        return out

    def line(self, entity: str, record: Record, offset: int) -> str:
        parts = []
        for prefix, (_, kind), value in zip(
            self._prefixes[entity], FIELDS[entity], record, strict=True
        ):
            if value is None:
                parts.append(prefix + "null")
            elif type(value) is int:
                if kind == _TS:
                    parts.append(f'{prefix}"{self.timestamp(value, offset)}"')
                elif kind == _MONEY:
                    parts.append(prefix + _money(value))
                else:
                    parts.append(f"{prefix}{value}")
            elif kind == _ID:
                parts.append(f'{prefix}"{value}"')  # generated ids are plain ASCII
            else:
                parts.append(prefix + self.text(value))
        return "{" + ",".join(parts) + "}"


# --------------------------------------------------------------------------- writers


class _NullWriter:
    """Stands in for a writer while earlier batches are replayed in memory."""

    active = False

    def write(self, timeline: Timeline, idx: int, bucket: int, *, early: bool = False) -> None:
        return None


class _EntityWriter:
    """Writes one entity's lines of one batch into per-file staging buckets, injecting
    faults as extra lines next to the genuine line they derive from."""

    active = True

    def __init__(
        self,
        entity: str,
        config: GeneratorConfig,
        staging: Path,
        token: str,
        renderer: _Renderer,
        fault_probability: float,
    ) -> None:
        self.entity = entity
        self.key = KEYS[entity]
        self.batch = config.batch
        self.n_files = config.files_per_entity
        self.staging = staging
        self.token = token
        self.seed = config.seed
        self.render = renderer
        self.probability = fault_probability
        self.rng = random.Random(f"{config.seed}:{config.batch}:faults:{entity}")
        cycle = [k for k, w in FAULT_WEIGHTS[entity].items() for _ in range(w)]
        self.rng.shuffle(cycle)
        self.cycle = cycle
        self.cursor = 0
        self.owed: dict[str, int] = {}
        self.handles: dict[int, TextIO] = {}
        self.paths: dict[int, Path] = {}
        self.lines: dict[int, int] = {}
        self.faults: list[dict[str, Any]] = []
        self.orphans = 0
        # deletes draw from their own stream: delete_rate 0 lands exactly what it did before
        self.delete_rate = config.delete_rate
        self.delete_rng = random.Random(f"{config.seed}:{config.batch}:deletes:{entity}")
        self.deletes: list[dict[str, Any]] = []

    # -- output
    def _offset(self) -> int:
        return _OFFSETS[int(self.rng.random() * len(_OFFSETS))]

    def _put(self, bucket: int, text: str) -> int:
        handle = self.handles.get(bucket)
        if handle is None:
            path = self.staging / (
                f"{self.entity}-s{self.seed}-b{self.batch:04d}-{bucket:05d}-{self.token}.json"
            )
            handle = open(path, "w", encoding="utf-8", newline="\n", buffering=1 << 20)  # noqa: SIM115
            self.handles[bucket], self.paths[bucket], self.lines[bucket] = handle, path, 0
        handle.write(text)
        handle.write("\n")
        self.lines[bucket] += 1
        return self.lines[bucket]

    def _record(self, bucket: int, line: int, kind: str, key: str, **extra: Any) -> None:
        self.faults.append(
            {
                "entity": self.entity,
                "bucket": bucket,
                "line": line,
                "kind": kind,
                "key": key,
                "expected_rule": expected_rule(self.entity, kind),
                **extra,
            }
        )

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()

    # -- genuine lines
    def write(self, timeline: Timeline, idx: int, bucket: int, *, early: bool = False) -> None:
        record = timeline[idx]
        text = self.render.genuine(self.entity, record, self._offset())
        line = self._put(bucket, text)
        if early:
            self._record(bucket, line, "early_line_item", record[0], parent_batch=1)
        elif self.probability and self.rng.random() < self.probability:
            self._inject(timeline, idx, bucket, text)
        if self.delete_rate and self.delete_rng.random() < self.delete_rate:
            self._delete(record, bucket)

    def _delete(self, record: Record, bucket: int) -> None:
        """A tombstone of the record's key, up to an hour after it (never earlier: the key
        existed), in the same file."""
        ts = record[-1] + self.delete_rng.randint(1, _HOUR)
        stamp = self.render.timestamp(ts, 0)
        text = json.dumps({self.key: record[0], "updated_at": stamp, "_deleted": True})
        line = self._put(bucket, text)
        self.deletes.append(
            {"entity": self.entity, "bucket": bucket, "line": line, "key": record[0],
             "updated_at": stamp}
        )  # fmt: skip

    # -- faults
    def _inject(self, timeline: Timeline, idx: int, bucket: int, text: str) -> None:
        # A kind that does not fit this line (out_of_order needs an earlier snapshot and a
        # later file) is owed and placed on the next line it fits, to keep the kind mix.
        for kind in list(self.owed):
            made = self._make(kind, timeline, idx, bucket, text)
            if made is not None:
                self.owed[kind] -= 1
                if not self.owed[kind]:
                    del self.owed[kind]
                self._emit_fault(kind, *made)
                return
        size = len(self.cycle)
        for attempt in range(size):
            kind = self.cycle[(self.cursor + attempt) % size]
            made = self._make(kind, timeline, idx, bucket, text)
            if made is not None:
                self.cursor = (self.cursor + attempt + 1) % size
                self._emit_fault(kind, *made)
                return
            self.owed[kind] = self.owed.get(kind, 0) + 1

    def _emit_fault(self, kind: str, text: str, bucket: int, key: str) -> None:
        self._record(bucket, self._put(bucket, text), kind, key)

    def _replace(self, record: Record, name: str, value: Any) -> Record:
        i = _FIELD_INDEX[self.entity][name]
        return (*record[:i], value, *record[i + 1 :])

    def _make(
        self, kind: str, timeline: Timeline, idx: int, bucket: int, text: str
    ) -> tuple[str, int, str] | None:
        rng = self.rng
        record = timeline[idx]
        key = record[0]
        # Quarantine-type faults are newer copies of a genuine snapshot, so a gate that let
        # them through would visibly overwrite silver.
        newer = (*record[:-1], record[-1] + rng.randint(1, _HOUR))
        fields = _FIELD_INDEX[self.entity]
        if kind == "exact_duplicate":
            return text, rng.randint(bucket, self.n_files - 1), key
        if kind == "out_of_order":
            if idx == 0 or bucket >= self.n_files - 1:
                return None
            previous = timeline[idx - 1]
            low, high = previous[-1] + 1, record[-1] - 1
            if low > high:
                return None
            older = (*previous[:-1], rng.randint(low, high))
            line = self.render.line(self.entity, older, self._offset())
            return line, rng.randint(bucket + 1, self.n_files - 1), key
        if kind == "malformed_json":
            cut = rng.randint(len(text) // 3, (2 * len(text)) // 3)
            return text[:cut], bucket, key
        if kind == "wrong_type":
            name, value = rng.choice(_WRONG_TYPES[self.entity])
            faulty = self._replace(newer, name, value)
        elif kind == "null_key":
            faulty = (None, *newer[1:])
        elif kind == "null_updated_at":
            faulty = (*record[:-1], None)
        elif kind == "bad_email":
            local, _, domain = record[fields["email"]].partition("@")
            bad = rng.choice(
                (
                    f"{local}_at_{domain}",
                    f"{local}@",
                    f"{local}@{domain.split('.')[0]}",
                    f"{local}@@{domain}",
                    f"@{domain}",
                )
            )
            faulty = self._replace(newer, "email", bad)
        elif kind == "non_positive_price":
            price = 0 if rng.random() < 0.3 else -rng.randint(1, 10_000)
            faulty = self._replace(newer, "price", price)
        elif kind == "non_positive_quantity":
            quantity = 0 if rng.random() < 0.5 else -rng.randint(1, 3)
            faulty = self._replace(newer, "quantity", quantity)
        elif kind == "negative_unit_price":
            unit_price = -rng.randint(1, max(1, record[fields["unit_price"]]))
            faulty = self._replace(newer, "unit_price", unit_price)
        elif kind == "unknown_status":
            faulty = self._replace(newer, "status", rng.choice(_UNKNOWN_STATUSES[self.entity]))
        elif kind == "orphan_line_item":
            self.orphans += 1
            key = f"L-ORPHAN-b{self.batch:04d}-{self.orphans:06d}"
            faulty = (
                key,
                record[fields["order_id"]],
                f"P-MISSING-{rng.randint(1, 99):04d}",
                rng.choice(_QUANTITIES),
                record[fields["unit_price"]],
                "pending",
                None,
                newer[-1],
            )
        else:  # pragma: no cover - FAULT_WEIGHTS and this function list the same kinds
            raise ValueError(f"unknown fault kind {kind!r}")
        return self.render.line(self.entity, faulty, self._offset()), bucket, key


Writer = _EntityWriter | _NullWriter

# --------------------------------------------------------------------------- world


def _months_before(day: date, months: int) -> date:
    year, month = divmod(day.year * 12 + day.month - 1 - months, 12)
    month += 1
    next_month = date(year + month // 12, month % 12 + 1, 1)
    return date(year, month, min(day.day, (next_month - timedelta(days=1)).day))


def _utc_text(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(day: date) -> int:
    return (day.toordinal() - _EPOCH_ORDINAL) * _DAY


def _stochastic_round(rng: random.Random, expected: float) -> int:
    whole = int(expected)
    return whole + (1 if rng.random() < expected - whole else 0)


# pending event: (updated_at, sequence, entity, timeline, index)
_Event = tuple[int, int, str, Timeline, int]


class _World:
    """The simulated order system: current state plus planned future snapshots."""

    def __init__(self, config: GeneratorConfig, pools: _Pools) -> None:
        self.config = config
        self.pools = pools
        self.start = _epoch(_months_before(config.end_date, config.months))
        self.as_of = _epoch(config.end_date + timedelta(days=1))  # batch 0 is before this
        self.span = self.as_of - self.start
        self.step = max(1, round(config.increment_ratio * self.span))
        self.n_customers = config.count("customers")
        self.n_products = config.count("products")
        self.n_orders = config.count("orders")
        self.customers: list[Record] = []
        self.customer_created: list[int] = []
        self.customer_cum: list[float] = []
        self.products: list[Record] = []
        self.product_created: list[int] = []
        self.product_cum: list[float] = []
        self.price_history: list[tuple[list[int], list[int]]] = []
        self.next_order = 1
        self.next_item = 1
        self.sequence = 0
        self.pending: list[_Event] = []
        self.withheld: list[_Event] = []

    def window(self, batch: int) -> tuple[int, int]:
        if batch == 0:
            return self.start, self.as_of
        low = self.as_of + (batch - 1) * self.step
        return low, low + self.step

    def _seq(self) -> int:
        self.sequence += 1
        return self.sequence

    # -- customers
    def _email(self, rng: random.Random, first: str, last: str, country: _Country) -> str:
        f, lname = self.pools.slugs[first], self.pools.slugs[last]
        pattern = rng.random()
        if pattern < 0.4:
            local = f"{f}.{lname}"
        elif pattern < 0.6:
            local = f"{f[0]}{lname}"
        elif pattern < 0.8:
            local = f"{f}.{lname}{rng.randint(1, 99)}"
        else:
            local = f"{f}_{lname}{rng.randint(1950, 2006)}"
        return f"{local}@{rng.choice(country.domains)}"

    def _phone(self, rng: random.Random, country: _Country) -> str | None:
        if rng.random() < 0.15:
            return None
        return f"+{country.calling_code} {rng.randint(100, 999)} {rng.randint(1000000, 9999999)}"

    def _new_customer(self, rng: random.Random, created: int) -> Record:
        pools = self.pools
        pick = rng.random() * pools.country_cum[-1]
        country = pools.countries[bisect_right(pools.country_cum, pick)]
        first, last = rng.choice(country.first_names), rng.choice(country.last_names)
        number = len(self.customers) + 1
        record = (
            f"C-{number:07d}",
            first,
            last,
            self._email(rng, first, last, country),
            self._phone(rng, country),
            rng.choice(country.cities),
            country.code,
            created,
            created,
        )
        self.customers.append(record)
        self.customer_created.append(created)
        weight = min(rng.paretovariate(2.0), 50.0)
        self.customer_cum.append((self.customer_cum[-1] if self.customer_cum else 0.0) + weight)
        return record

    def _changed_customer(self, rng: random.Random, record: Record, ts: int) -> Record:
        cid, first, last, email, phone, city, code, created, _ = record
        country = self.pools.by_code[code]
        change = rng.random()
        if change < 0.4:
            email = self._email(rng, first, last, country)
        elif change < 0.7:
            if phone is None or rng.random() < 0.5:
                phone = f"+{country.calling_code} {rng.randint(100, 999)} {rng.randint(1000000, 9999999)}"
            else:
                phone = None
        else:
            city = rng.choice(country.cities)
        return (cid, first, last, email, phone, city, code, created, ts)

    # -- products
    def _new_product(self, rng: random.Random, created: int) -> Record:
        category = _CATEGORY_NAMES[bisect_right(_CATEGORY_CUM, rng.random() * _CATEGORY_CUM[-1])]
        (low, high), nouns = CATEGORIES[category]
        name = f"{rng.choice(self.pools.brands)} {rng.choice(_ADJECTIVES)} {rng.choice(nouns)}"
        whole = int(low * (high / low) ** rng.random())
        cents = max(99, whole * 100 + rng.choice((99, 99, 49, 95, 0)))
        number = len(self.products) + 1
        record = (f"P-{number:06d}", name, category, cents, created)
        self.products.append(record)
        self.product_created.append(created)
        self.price_history.append(([created], [cents]))
        weight = min(rng.paretovariate(1.2), 500.0)
        self.product_cum.append((self.product_cum[-1] if self.product_cum else 0.0) + weight)
        return record

    def _reprice(self, rng: random.Random, index: int, ts: int) -> tuple[Record, Record]:
        previous = self.products[index]
        cents = max(99, round(previous[3] * rng.uniform(0.85, 1.15)))
        record = (*previous[:3], cents, ts)
        self.products[index] = record
        times, prices = self.price_history[index]
        times.append(ts)
        prices.append(cents)
        return previous, record

    def _price_at(self, index: int, ts: int) -> int:
        times, prices = self.price_history[index]
        return prices[max(0, bisect_right(times, ts) - 1)]

    @staticmethod
    def _pick(rng: random.Random, cum: list[float], eligible: int) -> int:
        return bisect_right(cum, rng.random() * cum[eligible - 1], 0, eligible - 1)

    # -- orders
    def _plan_order(self, rng: random.Random, t0: int) -> list[tuple[str, list[Record]]]:
        """The whole planned life of one order: its timeline and one per line item."""
        oid = f"O-{self.next_order:08d}"
        self.next_order += 1
        customers = bisect_right(self.customer_created, t0)
        cid = self.customers[self._pick(rng, self.customer_cum, customers)][0]
        eligible = bisect_right(self.product_created, t0)
        chosen: list[int] = []
        for _ in range(rng.choice(_ITEMS_PER_ORDER)):
            for _attempt in range(4):
                product = self._pick(rng, self.product_cum, eligible)
                if product not in chosen:
                    chosen.append(product)
                    break
        order: list[Record] = [(oid, cid, t0, "pending", t0)]
        items: list[list[Record]] = []
        for product in chosen:
            lid = f"L-{self.next_item:09d}"
            self.next_item += 1
            pid = self.products[product][0]
            price = self._price_at(product, t0)
            items.append([(lid, oid, pid, rng.choice(_QUANTITIES), price, "pending", None, t0)])

        outcome = rng.random()
        if outcome < 0.06:  # cancelled, sometimes after processing started
            t = t0
            if rng.random() < 0.5:
                t = t0 + rng.randint(300, 6 * _HOUR)
                order.append((oid, cid, t0, "processing", t))
            cancelled = t + rng.randint(600, _DAY)
            order.append((oid, cid, t0, "cancelled", cancelled))
            for item in items:
                item.append((*item[0][:5], "cancelled", None, cancelled))
        else:
            processing = t0 + rng.randint(300, 12 * _HOUR)
            shipped = processing + rng.randint(4 * _HOUR, 3 * _DAY)
            order.append((oid, cid, t0, "processing", processing))
            order.append((oid, cid, t0, "shipped", shipped))
            # An order with a cancelled or returned item never reaches delivered (only
            # orders whose items are all delivered do): it stays shipped, in progress.
            stuck = outcome < 0.11
            cancel_at = return_at = -1
            if stuck:
                if len(items) >= 2 and rng.random() < 0.5:
                    cancel_at = rng.randrange(len(items))
                else:
                    return_at = rng.randrange(len(items))
            one_parcel = rng.random() < 0.7
            parcel = shipped + rng.randint(_DAY, 6 * _DAY)
            delivered_times = []
            for k, item in enumerate(items):
                head = item[0][:5]
                if k == cancel_at:
                    ts = processing + rng.randint(60, shipped - processing - 60)
                    item.append((*head, "cancelled", None, ts))
                    continue
                item.append((*head, "shipped", None, shipped))
                delivered = parcel if one_parcel else shipped + rng.randint(_DAY, 6 * _DAY)
                item.append((*head, "delivered", delivered, delivered))
                delivered_times.append(delivered)
                if k == return_at:
                    returned = delivered + rng.randint(2 * _DAY, 20 * _DAY)
                    item.append((*head, "returned", delivered, returned))
            if not stuck:
                done = max(delivered_times) + rng.randint(60, _HOUR)
                order.append((oid, cid, t0, "delivered", done))
        return [("orders", order)] + [("line_items", item) for item in items]

    # -- batch 0
    def base(self, writers: Mapping[str, Writer]) -> None:
        rng = random.Random(f"{self.config.seed}:0:data")
        start, as_of, span = self.start, self.as_of, self.span

        # Customers: 70% signed up in the two years before the window, the rest during it.
        before = max(1, round(self.n_customers * 0.7))
        created = sorted(start - 730 * _DAY + rng.randrange(730 * _DAY) for _ in range(before))
        created += sorted(start + rng.randrange(span) for _ in range(self.n_customers - before))
        events: list[tuple[int, int, Timeline, int]] = []
        for ts in created:
            history = [self._new_customer(rng, ts)]
            roll = rng.random()
            updates = 2 if roll < 0.06 else 1 if roll < 0.3 else 0
            if updates and ts + _HOUR < as_of - 1:
                times = sorted({rng.randint(ts + _HOUR, as_of - 1) for _ in range(updates)})
                for t in times:
                    history.append(self._changed_customer(rng, history[-1], t))
                self.customers[-1] = history[-1]
            for idx, record in enumerate(history):
                events.append((record[-1], self._seq(), history, idx))
        self._write_sorted(writers["customers"], events)

        # Products: the catalogue mostly predates the window; some launch during it.
        before = max(1, round(self.n_products * 0.9))
        created = sorted(start - 365 * _DAY + rng.randrange(365 * _DAY) for _ in range(before))
        created += sorted(start + rng.randrange(span) for _ in range(self.n_products - before))
        events = []
        for index, ts in enumerate(created):
            history = [self._new_product(rng, ts)]
            if rng.random() < 0.2 and ts + _DAY < as_of - 1:
                history.append(self._reprice(rng, index, rng.randint(ts + _DAY, as_of - 1))[1])
            for idx, record in enumerate(history):
                events.append((record[-1], self._seq(), history, idx))
        self._write_sorted(writers["products"], events)

        # Orders and line items stream straight to their files (file = slice of time).
        order_times = sorted(start + rng.randrange(span) for _ in range(self.n_orders))
        early_share = EARLY_LINE_ITEM_SHARE * self.config.fault_rate
        n_withheld = 0
        if self.config.fault_rate > 0 and self.n_orders > 1:
            n_withheld = min(self.n_orders - 1, max(1, round(self.n_orders * early_share)))
        withheld = set(rng.sample(range(self.n_orders), n_withheld))
        n_files = self.config.files_per_entity
        for i, t0 in enumerate(order_times):
            hold = i in withheld
            for entity, timeline in self._plan_order(rng, t0):
                writer = writers[entity]
                for idx, record in enumerate(timeline):
                    ts = record[-1]
                    if ts >= as_of:
                        self.pending.append((ts, self._seq(), entity, timeline, idx))
                    elif hold and entity == "orders":
                        self.withheld.append((ts, self._seq(), entity, timeline, idx))
                    else:
                        self._seq()
                        if writer.active:
                            bucket = min(n_files - 1, (ts - start) * n_files // span)
                            writer.write(timeline, idx, bucket, early=hold)

    # -- batch k > 0
    def increment(self, batch: int, writers: Mapping[str, Writer]) -> None:
        rng = random.Random(f"{self.config.seed}:{batch}:data")
        low, high = self.window(batch)
        share = self.step / self.span  # this window as a share of batch 0's window
        events: dict[str, list[tuple[int, int, Timeline, int]]] = {e: [] for e in ENTITIES}

        for ts in sorted(
            rng.randrange(low, high)
            for _ in range(_stochastic_round(rng, 0.3 * self.n_customers * share))
        ):
            events["customers"].append((ts, self._seq(), [self._new_customer(rng, ts)], 0))
        for ts in sorted(
            rng.randrange(low, high)
            for _ in range(_stochastic_round(rng, 0.3 * self.n_customers * share))
        ):
            eligible = bisect_right(self.customer_created, ts - _HOUR)
            if eligible == 0:
                continue
            index = rng.randrange(eligible)
            previous = self.customers[index]
            ts = max(ts, previous[-1] + 1)
            if ts >= high:
                continue
            record = self._changed_customer(rng, previous, ts)
            self.customers[index] = record
            events["customers"].append((ts, self._seq(), [previous, record], 1))

        for ts in sorted(
            rng.randrange(low, high)
            for _ in range(_stochastic_round(rng, 0.1 * self.n_products * share))
        ):
            events["products"].append((ts, self._seq(), [self._new_product(rng, ts)], 0))
        for ts in sorted(
            rng.randrange(low, high)
            for _ in range(_stochastic_round(rng, 0.2 * self.n_products * share))
        ):
            eligible = bisect_right(self.product_created, ts - _DAY)
            if eligible == 0:
                continue
            index = rng.randrange(eligible)
            ts = max(ts, self.products[index][-1] + 1)
            if ts >= high:
                continue
            previous, record = self._reprice(rng, index, ts)
            events["products"].append((ts, self._seq(), [previous, record], 1))

        due = [e for e in self.pending if e[0] < high]
        self.pending = [e for e in self.pending if e[0] >= high]
        if batch == 1:
            due += self.withheld  # the parents of batch 0's early line items
            self.withheld = []
        for ts, seq, entity, timeline, idx in due:
            events[entity].append((ts, seq, timeline, idx))

        for t0 in sorted(
            rng.randrange(low, high) for _ in range(_stochastic_round(rng, self.n_orders * share))
        ):
            for entity, timeline in self._plan_order(rng, t0):
                for idx, record in enumerate(timeline):
                    ts = record[-1]
                    if ts >= high:
                        self.pending.append((ts, self._seq(), entity, timeline, idx))
                    else:
                        events[entity].append((ts, self._seq(), timeline, idx))

        for entity in ENTITIES:
            self._write_sorted(writers[entity], events[entity])

    @staticmethod
    def _write_sorted(writer: Writer, events: list[tuple[int, int, Timeline, int]]) -> None:
        """Equal-sized files in time order: file n+1 holds only later snapshots."""
        if not isinstance(writer, _EntityWriter) or not events:
            return
        events.sort(key=lambda e: (e[0], e[1]))
        n_files = writer.n_files
        total = len(events)
        for position, (_, _, timeline, idx) in enumerate(events):
            writer.write(timeline, idx, position * n_files // total)


# --------------------------------------------------------------------------- landing


def _same_content(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, shallow=False)


def _land(
    config: GeneratorConfig, writers: dict[str, _EntityWriter], progress: Progress
) -> tuple[list[dict[str, Any]], dict[tuple[str, int], str]]:
    """Rename staged files into place; files already landed identically are skipped."""
    landing = config.landing
    plan: list[tuple[str, Path, Path, int]] = []
    relative: dict[tuple[str, int], str] = {}
    for entity, writer in writers.items():
        for n, bucket in enumerate(sorted(writer.paths), start=1):
            name = file_name(config.seed, config.batch, n)
            relative[(entity, bucket)] = f"{entity}/{name}"
            plan.append(
                (entity, writer.paths[bucket], landing / entity / name, writer.lines[bucket])
            )
    planned = {final for _, _, final, _ in plan}
    for entity in ENTITIES:
        for existing in (landing / entity).glob(f"part-s{config.seed}-b{config.batch:04d}-*.json"):
            if existing not in planned:
                raise FileExistsError(
                    f"{existing} was landed by an earlier run with other parameters; "
                    f"remove it or use another seed or batch"
                )
    for _, staged, final, _ in plan:
        if final.exists() and not _same_content(staged, final):
            raise FileExistsError(
                f"{final} already exists with different content (generated with other "
                f"parameters?); remove it or use another seed or batch"
            )
    files = []
    for entity, staged, final, lines in plan:
        skipped = final.exists()
        if skipped:
            staged.unlink()
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
        files.append(
            {
                "entity": entity,
                "path": final.relative_to(landing).as_posix(),
                "lines": lines,
                "skipped": skipped,
            }
        )
    n_skipped = sum(f["skipped"] for f in files)
    if n_skipped:
        progress(f"{n_skipped} of {len(files)} files were already landed: skipped")
    return files, relative


def _manifest_text(manifest: dict[str, Any]) -> str:
    """Pretty JSON with one fault per line, so large manifests stay readable."""
    head = {k: v for k, v in manifest.items() if k != "faults"}
    text = json.dumps(head, indent=2, ensure_ascii=False)[:-2]
    faults = ",\n".join("    " + json.dumps(f, ensure_ascii=False) for f in manifest["faults"])
    body = f'\n  "faults": [\n{faults}\n  ]' if faults else '\n  "faults": []'
    return text + "," + body + "\n}\n"


def _write_manifest(config: GeneratorConfig, manifest: dict[str, Any]) -> Path:
    path = manifest_path(config.landing, config.seed, config.batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temp.write_text(_manifest_text(manifest), encoding="utf-8")
    os.replace(temp, path)
    return path


def _warn_on_other_parameters(config: GeneratorConfig, progress: Progress) -> None:
    if config.batch == 0:
        return
    base = read_manifest(config.landing, config.seed, 0)
    if base is None:
        return
    ours = {k: v for k, v in config.params().items() if k != "batch"}
    theirs = {k: v for k, v in base.get("params", {}).items() if k != "batch"}
    differing = sorted(k for k in ours if theirs.get(k) != ours[k])
    if differing:
        progress(
            f"warning: batch 0 of seed {config.seed} was generated with other {', '.join(differing)}"
            f" ({', '.join(f'{k}={theirs.get(k)!r}' for k in differing)}); this increment will"
            f" not continue it consistently"
        )


# --------------------------------------------------------------------------- entry point


def generate(config: GeneratorConfig, progress: Progress = print) -> dict[str, Any]:
    """Generate one batch into ``config.landing`` and return its manifest.

    Re-running the same configuration lands nothing twice: files already in place with
    the same content are skipped (``"skipped": true`` in the manifest).
    """
    _warn_on_other_parameters(config, progress)
    pools = _build_pools(config.seed)
    world = _World(config, pools)
    null = _NullWriter()
    replay = dict.fromkeys(ENTITIES, null)
    if config.batch > 0:
        progress(
            f"rebuilding the state of batches 0..{config.batch - 1} of seed {config.seed} in memory"
        )
        world.base(replay)
        for batch in range(1, config.batch):
            world.increment(batch, replay)

    staging = config.landing / "_staging"
    staging.mkdir(parents=True, exist_ok=True)
    renderer = _Renderer()
    token = uuid.uuid4().hex[:12]
    probability = config.fault_rate / (1 - config.fault_rate)  # fault lines / all lines
    writers = {
        entity: _EntityWriter(
            entity,
            config,
            staging,
            token,
            renderer,
            probability * ((1 - EARLY_LINE_ITEM_SHARE) if entity == "line_items" else 1),
        )
        for entity in ENTITIES
    }
    try:
        if config.batch == 0:
            world.base(writers)
        else:
            world.increment(config.batch, writers)
        for writer in writers.values():
            writer.close()
        for entity, writer in writers.items():
            progress(
                f"{entity}: {sum(writer.lines.values()):,} lines in {len(writer.lines)} files, "
                f"{len(writer.faults):,} faults"
            )
        files, relative = _land(config, writers, progress)
    finally:
        for writer in writers.values():
            writer.close()
            for path in writer.paths.values():
                path.unlink(missing_ok=True)

    faults = []
    counts: dict[str, dict[str, Any]] = {}
    for entity, writer in writers.items():
        kinds: dict[str, int] = {}
        for fault in writer.faults:
            bucket = fault.pop("bucket")
            faults.append({"entity": entity, "file": relative[(entity, bucket)], **fault})
            kinds[fault["kind"]] = kinds.get(fault["kind"], 0) + 1
        counts[entity] = {
            "lines": sum(writer.lines.values()),
            "faults": dict(sorted(kinds.items())),
            **({"deletes": len(writer.deletes)} if config.delete_rate else {}),
        }
    faults.sort(key=lambda f: (ENTITIES.index(f["entity"]), f["file"], f["line"]))
    deletes = [
        {**{k: v for k, v in d.items() if k != "bucket"}, "file": relative[(e, d["bucket"])]}
        for e, writer in writers.items()
        for d in writer.deletes
    ]
    low, high = world.window(config.batch)
    manifest = {
        "seed": config.seed,
        "batch": config.batch,
        "params": config.params(),
        "end_date": config.end_date.isoformat(),
        "window": {"from": _utc_text(low), "to": _utc_text(high)},
        "files": files,
        "counts": counts,
        "faults": faults,
        **({"deletes": deletes} if config.delete_rate else {}),
    }
    _write_manifest(config, manifest)
    return manifest
