"""The local landing folder as the file source reads it: every landed file once, by a name
of our own.

Spark's file source mishandles file names with glob characters: when one file of a
micro-batch is named like ``odd [name].json``, it reads the other files of the batch twice
(its file index lists the folder for a path it cannot take literally). Landing files must
keep whatever name they came with, so the stream does not read the landing folder itself:
before each run, every landed file gets a hard link (a symbolic link across file systems)
named by a sequence number, ``000000000042.json``, in a staging folder beside the stream's
checkpoint, and the file source reads that folder. An index there, ``_index.jsonl``, maps
each number to the landed path; it is written before the link, so every link has its path.

The walk also decides what is ingested, and records what is not: files in sub-folders
(``landing.subfolders``), gzip-compressed JSON Lines (``landing.compressed``), files with
another extension, unreadable files, and files that changed after they were ingested. Names
starting with ``.`` or ``_`` are files still being written (the atomic-rename convention):
they are left for a later run and named in the report.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

INDEX = "_index.jsonl"
LAYOUT_MARKER = "_landing_layout"
LAYOUT = "indexed-v1"  # the stream reads the staging folder of links, not the landing folder
JSON_SUFFIX, GZIP_SUFFIX = ".json", ".json.gz"
# characters java.net.URI leaves as they are in a path (Spark's _metadata.file_path)
_URI_SAFE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'(),;:$&+=@/"
)


@dataclass(frozen=True)
class Skipped:
    file: str  # relative to the entity's landing folder
    reason: str


@dataclass
class LandingIndex:
    """The staging folder the stream reads, and what this walk found."""

    staging: Path
    sources: dict[int, str]  # sequence number -> the landed file as a file: URI
    linked: list[str] = field(default_factory=list)  # newly linked this time
    skipped: list[Skipped] = field(default_factory=list)


def file_uri(path: Path) -> str:
    """``file:/...`` with the escapes Spark's ``_metadata.file_path`` uses."""
    text = str(path.resolve())
    return "file:" + "".join(
        c if c in _URI_SAFE or ord(c) > 127 else "".join(f"%{b:02X}" for b in c.encode())
        for c in text
    )


def _read_index(staging: Path) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    index = staging / INDEX
    if index.is_file():
        for line in index.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                entries[entry["file"]] = entry
    return entries


def _append_index(staging: Path, entry: dict) -> None:
    with (staging / INDEX).open("a", encoding="utf-8") as index:
        index.write(json.dumps(entry, ensure_ascii=False) + "\n")
        index.flush()
        os.fsync(index.fileno())


def _link(source: Path, target: Path) -> None:
    if target.exists() or target.is_symlink():
        return
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: point to it instead
        os.symlink(source.resolve(), target)


def _suffix(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(GZIP_SUFFIX):
        return GZIP_SUFFIX
    if lower.endswith(JSON_SUFFIX):
        return JSON_SUFFIX
    return None


def index_landing(
    landing: Path, staging: Path, subfolders: str = "ingest", compressed: str = "ingest"
) -> LandingIndex:
    """Link every new landed file into ``staging`` under its sequence number (idempotent:
    a file is indexed once, a missing link is made again) and report what is not taken."""
    check_landing_folder(landing)
    staging.mkdir(parents=True, exist_ok=True)
    landing.mkdir(parents=True, exist_ok=True)  # a missing folder is "nothing landed yet"
    entries = _read_index(staging)
    result = LandingIndex(staging, {e["seq"]: e["uri"] for e in entries.values()})
    next_seq = max(result.sources, default=0) + 1

    def unreadable(error: OSError) -> None:
        folder = Path(error.filename)
        if folder == landing:
            raise LandingUnreadable(landing, f"cannot be listed: {error.strerror}")
        result.skipped.append(
            Skipped(folder.relative_to(landing).as_posix(),
                    f"unreadable folder: {error.strerror}: nothing in it was read")
        )  # fmt: skip

    for folder, folders, files in os.walk(landing, onerror=unreadable):
        here = Path(folder)
        for name in [d for d in folders if (here / d).is_symlink()]:
            relative = (here / name).relative_to(landing).as_posix()
            result.skipped.append(Skipped(relative, "a symbolic link to a folder: not followed"))
            folders.remove(name)
        folders.sort()
        for name in sorted(files):
            path = here / name
            relative = path.relative_to(landing).as_posix()
            reason = _not_ingested(path, relative, name, subfolders, compressed)
            if reason:
                result.skipped.append(Skipped(relative, reason))
                continue
            stat = path.stat()
            entry = entries.get(relative)
            if entry is None:
                entry = {"seq": next_seq, "file": relative, "uri": file_uri(path),
                         "suffix": _suffix(name), "size": stat.st_size}  # fmt: skip
                next_seq += 1
                _append_index(staging, entry)  # before the link: every link has its path
                result.sources[entry["seq"]] = entry["uri"]
                result.linked.append(relative)
            elif entry["size"] != stat.st_size:
                result.skipped.append(
                    Skipped(relative, f"changed after it was ingested ({entry['size']} -> "
                            f"{stat.st_size} bytes): landed files must not change; not read again")
                )  # fmt: skip
            _link(path, staging / f"{entry['seq']:012d}{entry['suffix']}")
    return result


class LandingUnreadable(RuntimeError):
    """An entity's landing folder cannot be read: nothing of it can be ingested."""

    def __init__(self, landing: Path, problem: str) -> None:
        super().__init__(
            f"landing folder {landing} {problem}. Nothing was ingested. Way out: make it a "
            f"folder the pipeline's user ({_user()}) can list and read, or point landing_root "
            "(--landing-root, conf/<profile>.yml) at the right place; then run again"
        )


def check_landing_folder(landing: Path) -> None:
    """A missing folder is "nothing landed yet"; anything else that is not a readable
    folder stops the run, naming it."""
    if landing.is_symlink() and not landing.exists():
        raise LandingUnreadable(
            landing, f"is a symbolic link to {os.readlink(landing)}, which does not exist"
        )
    if landing.exists() and not landing.is_dir():
        raise LandingUnreadable(landing, "is a file, not a folder")
    if landing.is_dir():
        try:
            with os.scandir(landing):
                pass
        except OSError as exc:
            raise LandingUnreadable(landing, f"cannot be listed: {exc.strerror}") from None


def _user() -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(os.geteuid()).pw_name}, uid {os.geteuid()}"
    except KeyError:
        return f"uid {os.geteuid()}"


def _not_ingested(path: Path, relative: str, name: str, subfolders: str, compressed: str) -> str:
    if any(part.startswith((".", "_")) for part in relative.split("/")):
        return "hidden name (starts with . or _): still being written, left for a later run"
    if "/" in relative and subfolders != "ingest":
        return "in a sub-folder, and landing.subfolders is skip"
    suffix = _suffix(name)
    if suffix is None:
        return "neither .json nor .json.gz"
    if suffix == GZIP_SUFFIX and compressed != "ingest":
        return "gzip-compressed, and landing.compressed is skip"
    if not path.is_file():
        return "not a regular file"
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return ""


# -- erasure (jobs/erase.py) ------------------------------------------------------------------
@dataclass(frozen=True)
class Rewritten:
    file: Path
    lines_removed: int
    removed_whole: bool  # no line was left: the file is gone


def split_lines(data: bytes) -> list[bytes]:
    """The lines of a file with their own endings, so kept lines are written back byte-exact
    (``\\r\\n`` or not, with or without a last newline)."""
    return re.findall(rb"[^\n]*\n|[^\n]+$", data)


def rewrite_without(path: Path, drop: Callable[[bytes], bool]) -> Rewritten | None:
    """Write ``path`` again without the lines ``drop`` picks, every other byte as it was
    (gzip files are decompressed and compressed again); None when no line was picked.
    The new content is written beside it under a hidden name (never ingested meanwhile),
    synced and renamed over it, so a reader sees the old file or the new one; the file keeps
    its modification time (the landing retention counts from it). A file left without
    lines is removed."""
    import gzip

    raw = path.read_bytes()
    compressed = path.name.lower().endswith(GZIP_SUFFIX)
    data = gzip.decompress(raw) if compressed else raw
    lines = split_lines(data)
    kept = [line for line in lines if not drop(line)]
    if len(kept) == len(lines):
        return None
    if not any(line.strip() for line in kept):
        path.unlink()
        return Rewritten(path, len(lines) - len(kept), True)
    content = b"".join(kept)
    if compressed:
        content = gzip.compress(content, mtime=0)
    stat = path.stat()
    staged = path.with_name(f".{path.name}.erasing")
    with staged.open("wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.utime(staged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(staged, path)
    return Rewritten(path, len(lines) - len(kept), False)


def follow_rewrite(landing: Path, staging: Path, rewritten: Rewritten) -> None:
    """After an erasure rewrote a landed file: the stream's link to it (a hard link would
    keep the old content alive) points to the new file, or is gone with the file, and the
    index records the new size, so the file is not reported as changed after ingestion. The
    stream has already read it (the erasure lets every stream catch up first) and never
    reads a link name twice."""
    relative = rewritten.file.relative_to(landing).as_posix()
    entry = _read_index(staging).get(relative) if staging.is_dir() else None
    if entry is None:
        return
    link = staging / f"{entry['seq']:012d}{entry['suffix']}"
    link.unlink(missing_ok=True)
    if rewritten.removed_whole:
        return
    _append_index(staging, {**entry, "size": rewritten.file.stat().st_size})
    _link(rewritten.file, link)


# -- retention ------------------------------------------------------------------------------
def retire_ingested(
    landing: Path,
    staging: Path,
    mode: str,
    older_than_seconds: float,
    archive: Path | None,
    now: float,
) -> list[str]:
    """Archive or delete the ingested files of ``landing`` last modified more than
    ``older_than_seconds`` before ``now``, with the stream's link to each (a hard link would
    keep a deleted file's content alive). Call it only once the stream has committed every
    indexed file. A file changed since it was ingested is left (it is reported as such).
    Returns the files moved or removed, relative to ``landing``."""
    import shutil

    if mode == "off" or not staging.is_dir():
        return []
    retired = []
    for relative, entry in sorted(_read_index(staging).items()):
        path = landing / relative
        try:
            stat = path.stat()
        except OSError:
            continue
        if stat.st_size != entry["size"] or now - stat.st_mtime < older_than_seconds:
            continue
        if mode == "archive":
            assert archive is not None
            target = archive / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, target)
        else:
            path.unlink()
        (staging / f"{entry['seq']:012d}{entry['suffix']}").unlink(missing_ok=True)
        retired.append(relative)
    return retired
