"""Which files of the landing area are data: the one filter the landing sensor and the assets share.

The landing area is written by other people's tools (partner uploads, sync jobs), so a listing
trusts nothing it finds there. A file is *accepted* only when it is a regular file (checked with
lstat, so a symlink is never followed), sits directly in a ``<folder>/day=YYYY-MM-DD/`` directory,
resolves to a path inside the landing root, and has a suffix its folder reads (case-insensitive:
``.JSONL`` is a JSON Lines file as much as ``.jsonl``). Everything else is *ignored with a reason*
and reported, never read and never silently skipped. The sensor decides whether a day has a drop
from the accepted files only, so it never starts a run that would read nothing, and the assets read
exactly the files the sensor counted.

``open_landing_file`` re-checks at open time (``O_NOFOLLOW | O_NONBLOCK`` plus fstat), so a file
swapped for a symlink or a FIFO between the listing and the open is refused instead of followed or
blocking the run forever.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import BinaryIO

from core.atomic_io import TMP_PREFIX
from core.curation import parse_external_jsonl
from core.ingest import SUPPORTED_SUFFIXES, text_encoding
from core.safe_open import LandingFileRefused as LandingFileRefused
from core.safe_open import is_inside, open_regular_file

# What each drop folder's readers accept: raw_interactions reads CSV/TSV/Parquet (core.ingest.read_tables),
# curated_conversations reads JSON Lines.
DROP_SUFFIXES: dict[str, tuple[str, ...]] = {
    "interactions": SUPPORTED_SUFFIXES,
    "conversations": (".jsonl",),
    "preferences": (".jsonl",),
}
DAY_DIR = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")

# Why a file in the landing area is not read (reported in the sensor's evaluation and the asset's metadata).
IGNORE_REASONS = {
    "hidden_or_temporary": "name starts with '.' or the atomic-write prefix: still being written, or not data",
    "symlink": "symbolic links are never followed; copy the file into the landing area instead",
    "not_regular_file": "a FIFO, socket or device, not a file; only regular files are read",
    "nested_directory": "only files directly in day=YYYY-MM-DD/ are read; move the files up a level",
    "unsupported_suffix": "the folder's readers do not read this file type; rename or convert it",
    "outside_root": "resolves to a path outside the landing root (a symlinked folder); copy the data in",
    "outside_day_folder": "not inside a day=YYYY-MM-DD/ folder, so it belongs to no partition",
    "unreadable": "could not be opened (permissions, or removed while listing)",
}


@dataclass(frozen=True)
class LandingFile:
    """An accepted file; ``rel`` is its path relative to the landing root (posix)."""

    path: Path
    rel: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class IgnoredFile:
    """A landing entry that is not read, and why (a key of ``IGNORE_REASONS``)."""

    rel: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"file": self.rel, "reason": self.reason}


@dataclass(frozen=True)
class Listing:
    """Accepted and ignored entries of one or more landing folders (each sorted by relative path)."""

    accepted: tuple[LandingFile, ...] = ()
    ignored: tuple[IgnoredFile, ...] = ()

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.accepted]

    def merged(self, other: Listing) -> Listing:
        return Listing(
            tuple(sorted((*self.accepted, *other.accepted), key=lambda f: f.rel)),
            tuple(sorted((*self.ignored, *other.ignored), key=lambda f: f.rel)),
        )


@dataclass
class RootScan:
    """Every day's listing under the drop folders, plus entries that belong to no day."""

    days: dict[str, Listing] = field(default_factory=dict)
    undated: list[IgnoredFile] = field(default_factory=list)

    @property
    def ignored(self) -> list[IgnoredFile]:
        return sorted([*self.undated, *(i for lst in self.days.values() for i in lst.ignored)], key=lambda f: f.rel)


def has_suffix(name: str, suffixes: Iterable[str]) -> bool:
    """Case-insensitive suffix match (``part.JSONL`` is accepted, ``part.json`` is not)."""
    lower = name.lower()
    return any(lower.endswith(s) for s in suffixes)


def describe_ignored(ignored: Iterable[IgnoredFile], limit: int = 20) -> str:
    """'a/part.JSON (unsupported_suffix), a/p.jsonl (symlink), ...' for run logs and sensor messages."""
    items = list(ignored)
    text = ", ".join(f"{i.rel} ({i.reason})" for i in items[:limit])
    return text + (f", and {len(items) - limit} more" if len(items) > limit else "")


def _inside(path: str, real_root: str) -> bool:
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _rel(root: Path, path: Path) -> str:
    """`path` relative to `root`, whichever spelling (relative, with `..`) either was given in."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()


def _reason(name: str, path: str, st: os.stat_result, real_root: str, suffixes: tuple[str, ...]) -> str | None:
    """Why an entry (with its lstat result) is not read, or None when it is accepted."""
    if name.startswith((".", TMP_PREFIX)):
        return "hidden_or_temporary"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    if stat.S_ISDIR(st.st_mode):
        return "nested_directory"
    if not stat.S_ISREG(st.st_mode):
        return "not_regular_file"
    if not has_suffix(name, suffixes):
        return "unsupported_suffix"
    if not _inside(path, real_root):
        return "outside_root"
    return None


def classify_file(root: Path, path: Path, suffixes: tuple[str, ...]) -> str | None:
    """The reason a single file under the landing root is not read (None: read it); e.g. a configured glob's match."""
    try:
        st = os.lstat(path)
    except OSError:
        return "unreadable"
    return _reason(Path(path).name, str(path), st, os.path.realpath(root), suffixes)


@dataclass(frozen=True)
class GlobMatch:
    """What a configured files glob names: the paths to read and what it leaves out, with the reason."""

    paths: list[Path]
    ignored: list[IgnoredFile]


def resolve_glob(root: Path, pattern: str, suffixes: tuple[str, ...]) -> GlobMatch:
    """Resolve a configured files glob (CATALOG_FILES, INTERACTION_FILES) the way the readers will read it.

    Under the landing root the landing rules apply, since partners write there (a matched directory contributes
    its accepted files and the entries it ignores; ``rel`` is relative to the root). Elsewhere the glob is the
    operator's own configuration: symlinks are followed and directories are kept for the reader to expand; only
    what cannot be read as a file (a FIFO, socket or device, or a dangling symlink) is left out, and ``rel`` is
    the path as matched.
    """
    paths: list[Path] = []
    ignored: list[IgnoredFile] = []
    for name in sorted(glob.glob(pattern)):
        path = Path(name)
        if is_inside(Path(root), path):
            if os.path.isdir(path) and not os.path.islink(path):
                listing = list_directory(Path(root), path, suffixes)
                paths.extend(listing.paths)
                ignored.extend(listing.ignored)
                continue
            reason = classify_file(Path(root), path, suffixes)
            rel = _rel(Path(root), path)
        else:
            try:
                mode = os.stat(path).st_mode
                reason = None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "not_regular_file"
            except OSError:  # removed meanwhile, or a dangling symlink
                reason = "unreadable"
            rel = name
        if reason is None:
            paths.append(path)
        else:
            ignored.append(IgnoredFile(rel, reason))
    return GlobMatch(paths, sorted(ignored, key=lambda i: i.rel))


def glob_ignored(root: Path, pattern: str, suffixes: tuple[str, ...]) -> list[IgnoredFile]:
    """What a configured files glob matches but is not read, with the reason (sorted by file)."""
    return resolve_glob(root, pattern, suffixes).ignored


def list_day_folder(root: Path, folder: str, day: str) -> Listing:
    """The accepted and ignored entries of ``<root>/<folder>/day=<day>/`` (empty when it does not exist)."""
    return list_directory(root, Path(root) / folder / f"day={day}", DROP_SUFFIXES[folder])


def list_directory(root: Path, directory: Path, suffixes: tuple[str, ...]) -> Listing:
    """The accepted and ignored entries directly in `directory` (under `root`), read with the given suffixes."""
    root = Path(root)
    real_root = os.path.realpath(root)
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return Listing()
    if stat.S_ISLNK(st.st_mode):
        return Listing(ignored=(IgnoredFile(_rel(root, directory), "symlink"),))
    if not stat.S_ISDIR(st.st_mode):
        return Listing(ignored=(IgnoredFile(_rel(root, directory), "not_regular_file"),))
    accepted: list[LandingFile] = []
    ignored: list[IgnoredFile] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return Listing(ignored=(IgnoredFile(_rel(root, directory), "unreadable"),))
    for entry in entries:
        rel = _rel(root, Path(entry.path))
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # removed while we listed: not part of this drop
            continue
        reason = _reason(entry.name, entry.path, st, real_root, suffixes)
        if reason is None:
            accepted.append(LandingFile(Path(entry.path), rel, st.st_size, st.st_mtime_ns))
        else:
            ignored.append(IgnoredFile(rel, reason))
    return Listing(tuple(sorted(accepted, key=lambda f: f.rel)), tuple(sorted(ignored, key=lambda f: f.rel)))


def scan_root(root: Path) -> RootScan:
    """List every ``<folder>/day=YYYY-MM-DD/`` of the drop folders; entries not in a day folder are ``undated``."""
    root = Path(root)
    scan = RootScan()
    for folder in DROP_SUFFIXES:
        base = root / folder
        if not base.is_dir():
            continue
        for entry in sorted(os.scandir(base), key=lambda e: e.name):
            match = DAY_DIR.match(entry.name)
            if entry.name.startswith((".", TMP_PREFIX)):
                continue  # e.g. a folder being synced in under a temporary name
            if not match:
                scan.undated.append(IgnoredFile(_rel(root, Path(entry.path)), "outside_day_folder"))
                continue
            listing = list_day_folder(root, folder, match.group(1))
            if listing.accepted or listing.ignored:
                day = match.group(1)
                scan.days[day] = scan.days[day].merged(listing) if day in scan.days else listing
    return scan


def open_landing_file(path: Path) -> BinaryIO:
    """Open a listed landing file for binary reading, refusing what changed into a symlink or non-file.

    O_NOFOLLOW fails on a symlink; O_NONBLOCK makes opening a FIFO return at once instead of waiting for a
    writer; fstat on the opened descriptor then tells what was really opened (``core.safe_open``).
    """
    return open_regular_file(path, follow_symlinks=False)


def conversation_encoding(name: str, setting: str) -> str:
    """Check an encoding for the landing JSONL files, naming `setting` in the error.

    Beyond being a text codec (core.ingest.text_encoding) it must keep newline and ASCII as single bytes, since
    files are split into lines before decoding (UTF-16 is refused). parse_external_jsonl checks exactly that
    before it reads a line, so parsing no lines is that check alone.
    """
    text_encoding(name, setting)
    try:
        parse_external_jsonl((), date(2000, 1, 1), source=setting, encoding=name)
    except ValueError as exc:
        raise ValueError(f"{setting}={name!r}: {exc}") from exc
    return name
