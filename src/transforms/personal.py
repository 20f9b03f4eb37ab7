"""Personal data in what people look at: masked unless they ask to see it.

Which fields are personal is declared once, per entity, in conf/pipeline.yml (``personal``).
A masked value prints as ``***`` and the first 8 hex digits of its HMAC-SHA256 under a key
drawn for one listing: equal values mask alike, so rows stay tellable apart ("these three
rows hold the same e-mail"), and without the key the mask cannot be reversed by hashing a
list of likely e-mails or names, as a plain hash could. The key is never stored: masks of
two listings cannot be compared, and there is nothing to protect afterwards.

Raw text (the landed line of a record that did not parse) is masked in Spark, token by
token, and by an allow-list: JSON punctuation, the contract's field names in key position,
``null``/``true``/``false``, and the value of a field that is *not* personal, where it sits
exactly as ``{ or ,  "field" : value  , or } or the end`` around it, are kept; every other
token (values of personal fields, of fields outside the contract, keys outside it, anything
a broken line leaves in between) is masked. So a line whose quotes are off, that repeats a
key or spells one with escapes, never shows a personal value in clear: it only shows less.
Text that cannot be masked this way (not valid UTF-8, longer than ``MAX_RAW_CHARS``, or
whose tokens do not add up to it) is hidden whole, with a marker that says why.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F

from order_pipeline.common.config import Entity

MASK_PREFIX = "***"
HASH_DIGITS = 8  # 32 bits: no collision to speak of among the rows of one listing
# Beyond this, raw text is hidden rather than tokenised: a landed line is a record of a few
# hundred characters; a megabyte "line" is not worth a regex pass per row.
MAX_RAW_CHARS = 20_000

# One JSON token with the white space before it: a string literal (possibly unterminated),
# a punctuation mark, a run of anything else (numbers, literals, garbage), or the white space
# at the end. Possessive quantifiers, so long strings do not recurse in the regex engine.
# (Text that is not valid UTF-8 never reaches it: it is hidden whole.)
_SPACE = r"[\s\ufeff]"
TOKEN = rf'(?s){_SPACE}*+(?:"[^"\\]*+(?:\\.[^"\\]*+)*+"?|[{{}}\[\]:,]|[^\s\ufeff{{}}\[\]:,"]++|\z)'
_OPENS_PAIR = ("{", ",")  # what stands before a key
_CLOSES_PAIR = (",", "}", "")  # what stands after a value ("": the end of the text)
_PUNCTUATION = ("{", "}", "[", "]", ":", ",", "")
_LITERALS = ("null", "true", "false")


@dataclass(frozen=True, repr=False)
class MaskKey:
    """An HMAC-SHA256 key, kept as its two padded halves so Spark can compute the HMAC with
    ``sha2`` and ``concat`` (RFC 2104: H((K ^ opad) || H((K ^ ipad) || message)))."""

    inner: bytes
    outer: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> MaskKey:
        block = hashlib.sha256(secret).digest() if len(secret) > 64 else secret
        block = block.ljust(64, b"\0")
        return cls(bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block))

    @classmethod
    def random(cls) -> MaskKey:
        return cls.from_secret(secrets.token_bytes(32))


def keyed_hash(key: MaskKey, value: Column) -> Column:
    """The hex HMAC-SHA256 of a string's UTF-8 bytes (or of a binary) under ``key``."""
    inner = F.unhex(F.sha2(F.concat(F.lit(key.inner), value.cast("binary")), 256))
    return F.sha2(F.concat(F.lit(key.outer), inner), 256)


def mask_value(key: MaskKey, value: Column) -> Column:
    """``***`` and a short keyed hash of the value as text; null stays null (it says nothing)."""
    text = value.cast("string")
    return F.when(value.isNotNull(), F.concat(F.lit(MASK_PREFIX), _short_hash(key, text)))


def mask_record(entity: Entity, key: MaskKey, record: Column) -> Column:
    """The record struct with its personal fields masked (they become strings)."""
    return F.struct(
        *[
            (mask_value(key, record[c]) if c in entity.personal else record[c]).alias(c)
            for c in entity.columns
        ]
    )


def mask_raw_json(entity: Entity, key: MaskKey, raw: Column) -> Column:
    """Raw text with every token that may be personal masked (see the module's docstring),
    or, where that cannot be done reliably, a marker saying why it is hidden."""
    maskable = F.is_valid_utf8(raw) & (F.length(raw) <= MAX_RAW_CHARS)
    tokens = F.when(maskable, F.regexp_extract_all(raw, F.lit(TOKEN), 0))
    cores = F.transform(tokens, lambda t: F.regexp_replace(t, rf"^{_SPACE}+", ""))
    # Each token beside its neighbours, as arrays zipped once: a lambda that looked them up
    # by index would evaluate the whole array again per token.
    n = F.size(cores)
    nothing = F.lit(None).cast("string")
    before = {k: F.slice(F.concat(F.array_repeat(nothing, k), cores), 1, n) for k in (1, 2, 3)}
    after = F.concat(F.slice(cores, 2, n), F.array(F.lit("")))  # "": the end closes a pair
    zipped = F.arrays_zip(
        tokens.alias("token"),
        cores.alias("core"),
        before[1].alias("before1"),
        before[2].alias("before2"),
        before[3].alias("before3"),
        after.alias("after1"),
    )
    field_names = [json.dumps(c) for c in entity.columns]
    kept_values = [json.dumps(c) for c in entity.columns if c not in entity.personal]

    def isin(value: Column, options: list[str] | tuple[str, ...]) -> Column:
        return F.coalesce(value.isin(*options), F.lit(False)) if options else F.lit(False)

    def shown(z: Column) -> Column:
        this = z["core"]
        is_key = (
            isin(this, field_names) & isin(z["after1"], [":"]) & isin(z["before1"], _OPENS_PAIR)
        )
        is_kept_value = (
            isin(z["before1"], [":"])
            & isin(z["before2"], kept_values)
            & isin(z["before3"], _OPENS_PAIR)
            & isin(z["after1"], _CLOSES_PAIR)
        )
        keep = isin(this, _PUNCTUATION) | isin(this, _LITERALS) | is_key | is_kept_value
        space = F.regexp_extract(z["token"], rf"^{_SPACE}*", 0)
        # a string's mask hashes its decoded value, so it matches the record's mask of it
        decoded = F.when(
            this.startswith('"'), F.get_json_object(F.concat(F.lit("["), this, F.lit("]")), "$[0]")
        )
        masked = F.concat(
            F.lit(f'"{MASK_PREFIX}'), _short_hash(key, F.coalesce(decoded, this)), F.lit('"')
        )
        return F.when(keep, z["token"]).otherwise(F.concat(space, masked))

    return (
        F.when(raw.isNull(), nothing)
        .when(~F.is_valid_utf8(raw), hidden(key, raw, "not UTF-8 (%d bytes)", F.octet_length(raw)))
        .when(
            F.length(raw) > MAX_RAW_CHARS,
            hidden(key, raw, f"longer than {MAX_RAW_CHARS} characters (%d)", F.length(raw)),
        )
        .when(
            F.array_join(tokens, "") != raw,
            hidden(key, raw, "not split into JSON tokens (%d characters)", F.length(raw)),
        )
        .otherwise(F.array_join(F.transform(zipped, shown), ""))
    )


def hidden(key: MaskKey, raw: Column, why: str, size: Column) -> Column:
    """The marker that stands for raw text hidden whole, with its keyed hash."""
    return F.format_string(
        f"(raw text hidden: {why}; it may hold personal data, --show-personal-data shows it) "
        f"{MASK_PREFIX}%s",
        size,
        _short_hash(key, raw.cast("binary")),
    )


def _short_hash(key: MaskKey, value: Column) -> Column:
    return F.substring(keyed_hash(key, value), 1, HASH_DIGITS)
