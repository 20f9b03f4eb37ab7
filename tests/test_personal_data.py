"""Personal data (conf/pipeline.yml `personal`) is masked where people look: in the record
and inside the raw text, whatever shape that text is in."""

from __future__ import annotations

import hashlib
import hmac
import json

from builders import customer
from pyspark.sql import functions as F

from order_pipeline.common.config import load_entities
from order_pipeline.transforms import personal
from order_pipeline.transforms.personal import MaskKey, keyed_hash, mask_raw_json, mask_record

SECRET = b"a test key"
KEY = MaskKey.from_secret(SECRET)
CUSTOMERS = load_entities()["customers"]


def h(value: str | bytes) -> str:
    """The expected short keyed hash, from Python's own HMAC."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return hmac.new(SECRET, data, hashlib.sha256).hexdigest()[:8]


def m(value: str) -> str:
    """The expected mask of a token in raw text: a JSON string, so JSON stays JSON."""
    return f'"***{h(value)}"'


def masked(spark, lines: list[str | None]) -> list[str | None]:
    df = spark.createDataFrame([(line,) for line in lines], "raw string")
    return [r[0] for r in df.select(mask_raw_json(CUSTOMERS, KEY, F.col("raw"))).collect()]


def test_the_keyed_hash_is_hmac_sha256(spark) -> None:
    long_secret = MaskKey.from_secret(b"k" * 100)  # longer than a block: hashed first (RFC 2104)
    row = spark.range(1).select(
        keyed_hash(KEY, F.lit("ada@example.org")).alias("short"),
        keyed_hash(long_secret, F.lit("Zoë")).alias("long"),
    )
    assert tuple(row.first()) == (
        hmac.new(SECRET, b"ada@example.org", hashlib.sha256).hexdigest(),
        hmac.new(b"k" * 100, "Zoë".encode(), hashlib.sha256).hexdigest(),
    )


def test_raw_text_keeps_only_what_is_known_not_to_be_personal(spark) -> None:
    cases = {
        # a valid line: keys, punctuation, null and the values of non-personal fields stay
        '{"customer_id": "C1", "first_name": "Ada", "phone": null, "country": "GB"}':
            '{"customer_id": "C1", "first_name": ' + m("Ada") + ', "phone": null, "country": "GB"}',
        # escaped quotes inside the e-mail: one token, hashed as its decoded value
        '{"email": "o\\"brien\\"@example.org", "country": "IE"}':
            '{"email": ' + m('o"brien"@example.org') + ', "country": "IE"}',
        # a key named twice: each value masked
        '{"email": "a@example.org", "email": "b@example.org"}':
            '{"email": ' + m("a@example.org") + ', "email": ' + m("b@example.org") + "}",
        # a key spelt with an escape, a key outside the contract: neither is known to be safe
        '{"em\\u0061il": "a@example.org", "nickname": "Ada"}':
            "{" + m("email") + ": " + m("a@example.org") + ", " + m("nickname") + ": " + m("Ada") + "}",
        # a quote missing after a non-personal value: the rest of the line is not a pair
        '{"country": "GB, "email": "a@example.org"}':
            '{"country": ' + m("GB, ") + m("email") + m(": ") + m("a@example.org") + m('"}'),
        # unicode, a byte order mark, tabs, new lines, spaces around the colon
        '\ufeff {\t"first_name" :"Zoë" ,\n"last_name": "山田", "country":"NO"}  ':
            '\ufeff {\t"first_name" :' + m("Zoë") + ' ,\n"last_name": ' + m("山田") + ', "country":"NO"}  ',
        # cut short, and not JSON at all
        '{"customer_id": "C6", "email": "h@example.org"': '{"customer_id": "C6", "email": ' + m("h@example.org"),
        '{"customer_id": "C6", "email": "h@exam': '{"customer_id": "C6", "email": ' + m('"h@exam'),
        "Ada Lovelace; ada@example.org": m("Ada") + " " + m("Lovelace;") + " " + m("ada@example.org"),
        # a personal field inside a non-personal one's object, a number where a name goes
        '{"country": {"email": "x@example.org"}, "first_name": 42}':
            '{"country": {"email": ' + m("x@example.org") + '}, "first_name": ' + m("42") + "}",
        "": "",
    }  # fmt: skip
    assert dict(zip(cases, masked(spark, list(cases)), strict=True)) == cases
    assert masked(spark, [None]) == [None]


def test_raw_text_that_cannot_be_masked_reliably_is_hidden_whole(spark, monkeypatch) -> None:
    not_utf8 = b'{"email": "ada@example.org", "city": "Lond\xff"}'
    too_long = '{"email": "' + "a" * personal.MAX_RAW_CHARS + '"}'
    df = spark.createDataFrame([(not_utf8,)], "raw binary").select(F.col("raw").cast("string"))
    (shown,) = [r[0] for r in df.select(mask_raw_json(CUSTOMERS, KEY, F.col("raw"))).collect()]
    assert shown == (
        f"(raw text hidden: not UTF-8 ({len(not_utf8)} bytes); it may hold personal data, "
        f"--show-personal-data shows it) ***{h(not_utf8)}"
    )
    assert masked(spark, [too_long]) == [
        f"(raw text hidden: longer than {personal.MAX_RAW_CHARS} characters ({len(too_long)}); "
        f"it may hold personal data, --show-personal-data shows it) ***{h(too_long)}"
    ]
    # the safety net: should the tokens ever not add up to the text, nothing of it is shown
    monkeypatch.setattr(personal, "TOKEN", r"[a-z]+")
    line = '{"email": "ada@example.org"}'
    assert masked(spark, [line]) == [
        f"(raw text hidden: not split into JSON tokens ({len(line)} characters); it may hold "
        f"personal data, --show-personal-data shows it) ***{h(line)}"
    ]


def test_a_record_has_its_personal_fields_masked(spark) -> None:
    record = customer("C1", first_name="Zoë", phone=None)
    df = spark.createDataFrame([(json.dumps(record),)], "line string").select(
        F.from_json("line", CUSTOMERS.ddl()).alias("record")
    )
    shown = F.to_json(mask_record(CUSTOMERS, KEY, F.col("record")), {"ignoreNullFields": "false"})
    (row,) = df.select(shown).collect()
    assert json.loads(row[0]) == {
        "customer_id": "C1", "first_name": f"***{h('Zoë')}", "last_name": f"***{h('Lovelace')}",
        "email": f"***{h('c1@example.com')}", "phone": None, "city": f"***{h('London')}",
        "country": "GB", "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-05-01T10:00:00.000Z",
    }  # fmt: skip
