"""Dagster Pipes over a pod log: rank 0 writes its messages as JSON lines on stderr, and the launcher
reads them out of the log stream it follows (no sidecar, no shared message file).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import dagster as dg

PIPES_MARKER = '{"__dagster_pipes_version"'


def parse_pipes_message(line: str) -> dict[str, Any] | None:
    """The Pipes message on a log line (rank 0 writes each as one JSON line on stderr), else None."""
    start = line.find(PIPES_MARKER)
    if start < 0:
        return None
    try:
        message, _ = json.JSONDecoder().raw_decode(line, start)
    except ValueError:
        return None
    return message if isinstance(message, dict) and "method" in message else None


class PodLogMessageReader(dg.PipesMessageReader):
    """Reads rank 0's Pipes messages out of its pod's log stream.

    The trainer uses dagster_pipes' default writer with `{"stdio": "stderr"}`: every message is
    one JSON line on rank 0's stderr, which reaches the pod log unchanged (torchrun `--tee 1`
    leaves stderr alone; `training.k8s_node` copies whole lines). The log follower feeds each
    line to `consume`; other lines are echoed to this process's stdout (the run's compute logs).

    A pod 0 that is replaced (a lost node) closes its Pipes session with the error; the next pod
    opens a new one. Those belong to one logical session, so an intermediate "closed" is held
    back and reported as a warning when a newer "opened" arrives; the last one is forwarded.
    """

    def __init__(self, warn: Callable[[str], None] | None = None, echo: TextIO | None = None) -> None:
        self._handler: Any = None
        self._held_close: dict[str, Any] | None = None
        self._warn = warn or (lambda _msg: None)
        self._echo = echo
        self._lock = threading.Lock()
        self.messages = 0
        self.malformed = 0

    @contextmanager
    def read_messages(self, handler: Any) -> Iterator[dict[str, Any]]:
        self._handler = handler
        try:
            yield {"stdio": "stderr"}
        finally:
            with self._lock:
                if self._held_close is not None:
                    handler.handle_message(self._held_close)
                    self._held_close = None
                self._handler = None

    def consume(self, pod: str, line: str) -> None:
        message = parse_pipes_message(line)
        with self._lock:
            if message is None:
                if PIPES_MARKER in line:
                    self.malformed += 1
                    self._warn(f"[pipes] unreadable message line from {pod} (skipped): {line[:200]}")
                echo = self._echo or sys.stdout
                echo.write(f"[{pod}] {line}\n")
                echo.flush()
                return
            if self._handler is None:
                return
            self.messages += 1
            method = message.get("method")
            if method == "closed":
                self._held_close = message
                return
            if method == "opened" and self._held_close is not None:
                exc = (self._held_close.get("params") or {}).get("exception") or {}
                why = f"{exc.get('name')}: {exc.get('message')}" if exc else "no error"
                self._warn(f"rank 0 stopped on an earlier pod ({why}); a replacement pod {pod} reports from here")
                self._held_close = None
            self._handler.handle_message(message)

    def no_messages_debug_text(self) -> str:
        return (
            "Read Dagster Pipes messages from rank 0's pod log (JSON lines on stderr). The trainer must open "
            "Pipes with the default message writer (dagster_pipes.open_dagster_pipes())."
        )
