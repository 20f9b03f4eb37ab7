"""Which landed lines and raw texts belong to the person an erasure is for (pure).

A line belongs to key K of an entity when it parses to a JSON object whose key field is K.
A line that does not parse (cut short, not JSON, not UTF-8) belongs to K when the key field
can still be read from its text and is K; when no key can be read from it at all, when it
holds one of the person's personal values (``needles``: e-mail, phone, names... as found in
the person's parsed rows). A line whose key names someone else is never theirs, even if it
holds an equal value (two customers may share a city or an e-mail).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

BOM = b"\xef\xbb\xbf"
MIN_NEEDLE = 4  # shorter personal values say too little to attribute a keyless line


def key_pattern(key_field: str) -> str:
    """A regular expression whose group 1 is the key's value as written in a JSON text
    (Python and Java agree on it)."""
    return r'"' + re.escape(key_field) + r'"\s*:\s*"((?:[^"\\]|\\.)*)'


def usable_needles(values: Iterable[str | None]) -> list[str]:
    return sorted({v for v in values if v and len(v.strip()) >= MIN_NEEDLE})


def line_belongs(line: bytes, key_field: str, key: str, needles: list[str]) -> bool:
    text = line.removeprefix(BOM).strip()
    if not text:
        return False
    keys: list[object] = []

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        keys.extend(value for name, value in items if name == key_field)
        return dict(items)

    try:
        record = json.loads(text.decode("utf-8"), object_pairs_hook=pairs)
    except (UnicodeDecodeError, ValueError):
        record = None
    if isinstance(record, dict) and keys:
        return any(value == key for value in keys)  # a repeated key field: any of them
    decoded = text.decode("utf-8", errors="replace")
    found = re.findall(key_pattern(key_field), decoded)
    if found:
        return any(_unescape(value) == key for value in found)
    return any(needle.encode("utf-8") in text for needle in needles)


def _unescape(value: str) -> str:
    try:
        return json.loads(f'"{value}"')
    except ValueError:
        return value
