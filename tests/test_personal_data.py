"""Personal data (conf/pipeline.yml `personal`) is masked where people look: the quarantine
listing masks it in the record and inside the raw text, whatever shape that text is in, and
prints it in clear only with --show-personal-data."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
from pathlib import Path

import pytest
from builders import customer, edit_text, land, line_bytes
from pyspark.sql import functions as F

from order_pipeline.cli import main as cli
from order_pipeline.common.config import conf_dir, load_entities
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


# -- the command line ------------------------------------------------------------------------

EPOCH = 1764669600  # a number where a timestamp goes: quarantined, raw text kept
PERSON = {  # customer -> its personal values, distinct from every other row's
    "C2": dict(first_name="Augusta", last_name="Byron-King", email="augusta.king@example",
               phone="+44 20 7946 0102", city="Marylebone"),
    "C3": dict(first_name="Charles", last_name="Babbage", email='c"babbage"@example.org',
               phone="+44 20 7946 0103", city="Walworth"),
    "C4": dict(first_name="Mary", last_name="Somerville", email="mary.somerville@example.org",
               phone="+44 20 7946 0104", city="Jedburgh"),
    "C5": dict(first_name="Zoë", last_name="Łukasiewicz-山田", email="zoë.yamada@example.jp",
               phone="+81 3 1234 0105", city="Zürich"),
    "C6": dict(first_name="Hertha", last_name="Ayrton", email="hertha.ayrton@example.org",
               phone="+44 20 7946 0106", city="Portsea"),
    "C7": dict(first_name="Grace", last_name="Hopper", email="grace.hopper@example.org",
               phone="+1 212 555 0107", city="Arlington"),
}  # fmt: skip
REPEATED = json.dumps(customer("C4", **PERSON["C4"])).replace(
    '"email": "mary.somerville@example.org"',
    '"email": "mary.somerville@example.org", "email": "augusta.king@example"',  # C2's e-mail
)
MALFORMED = json.dumps(customer("C6", **PERSON["C6"]))[:-40]  # cut short: not JSON
NOT_UTF8 = line_bytes(customer("C7", **PERSON["C7"], country="US")).replace(b'"US"', b'"U\xffS"')
LANDED = [
    customer("C1"),
    customer("C2", **PERSON["C2"]),  # bad e-mail: quarantined as parsed, no raw text
    customer("C3", **PERSON["C3"], updated_at=EPOCH),
    REPEATED,
    json.dumps(customer("C5", **PERSON["C5"], updated_at=EPOCH), ensure_ascii=False),
    MALFORMED,
    NOT_UTF8,
]


def forms(value: str) -> set[str]:
    """Every way a value can appear in the output: as is, JSON-escaped (once as raw text,
    twice as a JSON Lines field holding raw text), and as the hex of a line's bytes."""
    once = {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], value}
    twice = {json.dumps(v, ensure_ascii=ascii)[1:-1] for v in once for ascii in (True, False)}
    return once | twice | {value.encode("utf-8").hex().upper()}


@pytest.fixture(scope="module")
def data_root(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("personal")
    conf = root / "conf"
    shutil.copytree(conf_dir(), conf)
    local = conf / "local.yml"
    edit_text(local, ("schema: lakehouse", "schema: personal_test"))
    rules = conf / "quality" / "customers.yml"
    edit_text(rules, ("max_quarantine_ratio: 0.5", "max_quarantine_ratio: 1.0"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORDER_PIPELINE_CONF", str(conf))
        land(root / "landing", "customers", LANDED)
        for task in ("bronze_customers", "silver_customers"):
            assert cli.main(["run", "--task", task, "--data-root", str(root)]) == 0
        yield root


def quarantine(capsys, root: Path, *options: str) -> str:
    capsys.readouterr()
    assert cli.main(["quarantine", *options, "--data-root", str(root)]) == 0
    return capsys.readouterr().out


def test_the_listing_masks_personal_data_by_default(capsys, data_root) -> None:
    out = quarantine(capsys, data_root, "--entity", "customers", "--json")
    table = quarantine(capsys, data_root, "--entity", "customers")
    summary = quarantine(capsys, data_root, "--json")
    for customer_id, values in PERSON.items():
        for field, value in values.items():
            for shown in (out, table, summary):
                leaks = {form for form in forms(value) if form in shown}
                assert not leaks, f"{customer_id}.{field} printed: {leaks}"

    rows = {}
    for line in out.splitlines():
        record = json.loads(line)["record"]
        key = re.match(r'\{"customer_id": ?"(C\d)"', record)
        rows[key.group(1) if key else "hidden"] = record
    assert sorted(rows) == ["C2", "C3", "C4", "C5", "C6", "hidden"]  # C7: not UTF-8
    mask = re.compile(r"\*\*\*[0-9a-f]{8}")
    pairs = {c: json.loads(rows[c], object_pairs_hook=list) for c in ("C2", "C3", "C4", "C5")}
    for customer_id, fields in pairs.items():  # the parsed record, or raw text that is JSON
        assert ("customer_id", customer_id) in fields and ("country", "GB") in fields
        assert {k for k, v in fields if mask.fullmatch(str(v))} == set(CUSTOMERS.personal)
    # the same e-mail masks alike in a record and inside another row's raw text
    c2_email = dict(pairs["C2"])["email"]
    c4_emails = [v for k, v in pairs["C4"] if k == "email"]
    assert c4_emails[1] == c2_email != c4_emails[0]
    assert rows["C6"].startswith('{"customer_id": "C6", "first_name": "***')  # cut short
    assert rows["hidden"].startswith("(raw text hidden: not UTF-8 (")


def test_show_personal_data_prints_them_in_clear(capsys, data_root) -> None:
    out = quarantine(capsys, data_root, "--entity", "customers", "--json", "--show-personal-data")
    for customer_id, values in PERSON.items():
        for field, value in values.items():
            assert any(form in out for form in forms(value)), f"{customer_id}.{field} not shown"
    assert NOT_UTF8.hex().upper() in out


def test_sql_help_says_its_results_are_not_masked(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["sql", "--help"])
    assert "personal data in clear" in capsys.readouterr().out
