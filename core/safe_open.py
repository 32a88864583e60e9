"""Opening input files without trusting what lies at the path between listing it and reading it.

Readers list a folder (or a glob) first and open the files later; in between, another tool may replace a file
by a FIFO (opening it waits for a writer that never comes: the run hangs) or by a symlink (the run reads whatever
it points at). ``open_regular_file`` closes that gap on the opened descriptor itself: ``O_NONBLOCK`` makes a
FIFO open return at once, ``O_NOFOLLOW`` refuses a symlink where links must not be followed, and ``fstat`` says
what was really opened. Shared by the landing rules (``core.landing_files``) and the table readers
(``core.ingest``), which is why it depends on neither.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO


class LandingFileRefused(OSError):
    """A file that cannot be read safely; ``reason`` is a key of ``core.landing_files.IGNORE_REASONS``."""

    def __init__(self, path: Path, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.reason = reason
        self.detail = detail


def is_inside(root: Path, path: Path) -> bool:
    """Whether `path` is lexically under `root` (both made absolute; symlinks are not resolved)."""
    base = os.path.abspath(root)
    return os.path.abspath(path).startswith(base.rstrip(os.sep) + os.sep)


def open_regular_file(path: Path, *, follow_symlinks: bool) -> BinaryIO:
    """Open `path` for binary reading if it is a regular file; never blocks on a FIFO.

    ``follow_symlinks=False`` (landing-area files, written by others) refuses a symlink with reason ``symlink``;
    a FIFO, socket or device is refused with ``not_regular_file``; an open that fails otherwise is ``unreadable``.
    The returned file is in blocking mode again, so reads behave as usual.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if not follow_symlinks and os.path.islink(path):
            raise LandingFileRefused(path, "symlink", "became a symbolic link after it was listed") from exc
        raise LandingFileRefused(path, "unreadable", f"cannot open: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LandingFileRefused(path, "not_regular_file", "is not a regular file (FIFO, socket or device)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
