"""Following rank 0's log (global rank 0 runs on the pod with completion index 0) across pod replacements.

A lost node replaces pod 0 with a new pod of the same index; the follower moves on to it, and a
dropped stream reconnects without repeating a line, so every Pipes message reaches Dagster once.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from resources.kubernetes.api import api_status, is_stream_timeout
from resources.kubernetes.names import CONTAINER
from resources.kubernetes.pods import list_job_pods, pod_index

_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z ?")


def _iter_lines(resp: Any) -> Iterator[str]:
    """Lines of a streaming log response (urllib3 response with `.stream`, or any iterable of bytes/str)."""
    chunks = resp.stream(65536, decode_content=True) if hasattr(resp, "stream") else iter(resp)
    pending = b""
    for chunk in chunks:
        if isinstance(chunk, str):
            chunk = chunk.encode()
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            yield raw.decode("utf-8", errors="replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", errors="replace")


def split_timestamp(line: str) -> tuple[tuple[str, int] | None, str]:
    """('2026-01-01T00:00:00', nanoseconds), rest of the line) for a `timestamps=True` log line."""
    match = _TIMESTAMP.match(line)
    if not match:
        return None, line
    nanos = int((match.group(2) or "0").ljust(9, "0"))
    return (match.group(1), nanos), line[match.end() :]


LOG_RESUME_MARGIN_S = 60  # clock skew between the launcher and the node; re-read lines are dropped by timestamp


def seconds_since(stamp: str, now: datetime | None = None) -> int:
    """`since_seconds` that reaches back to a log timestamp ('2026-01-01T00:00:00', UTC) plus the margin."""
    seen = datetime.fromisoformat(stamp).replace(tzinfo=UTC)
    age = ((now or datetime.now(UTC)) - seen).total_seconds()
    return max(1, math.ceil(age)) + LOG_RESUME_MARGIN_S


class Rank0LogFollower:
    """A thread that streams the log of the pod with completion index 0 (global rank 0), pod after pod.

    Each line goes to `on_line(pod_name, line)` exactly once: lines are read with timestamps, and
    a reconnect to the same pod resumes after the last timestamp seen.
    """

    def __init__(
        self,
        core: Any,
        namespace: str,
        job_name: str,
        on_line: Callable[[str, str], None],
        *,
        poll_s: float = 2.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.core, self.namespace, self.job_name = core, namespace, job_name
        self.on_line = on_line
        self.poll_s = poll_s
        self.log = log or (lambda _msg: None)
        self.pods_followed: list[str] = []
        self.lines = 0
        self._stop = threading.Event()
        self._drain = threading.Event()
        self._resp: Any = None
        self._thread = threading.Thread(target=self._run, name=f"rank0-logs-{job_name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            with contextlib.suppress(Exception):  # closing a dead stream
                resp.close()
        self._thread.join(timeout)

    def finish(self, timeout: float) -> bool:
        """Read what is left of rank 0's log (the pods have ended), then stop; False if it took too long."""
        self._drain.set()
        self._thread.join(timeout)
        done = not self._thread.is_alive()
        if not done:
            self.stop()
        return done

    def _rank0_pods(self) -> list[Any]:
        return [p for p in list_job_pods(self.core, self.namespace, self.job_name) if pod_index(p) == 0]

    def _run(self) -> None:
        finished: set[str] = set()
        last_seen: dict[str, tuple[str, int]] = {}
        while not self._stop.is_set():
            try:
                pods = self._rank0_pods()
            except Exception as exc:  # the API may blip; keep following
                self.log(f"listing rank 0's pod failed ({exc}); retrying")
                self._stop.wait(self.poll_s)
                continue
            todo = [p for p in pods if p.metadata.name not in finished and (p.status.phase or "Pending") != "Pending"]
            if not todo:
                if self._drain.is_set():
                    return
                self._stop.wait(self.poll_s)
                continue
            pod = todo[0]  # oldest first: an earlier pod 0's last lines come before its replacement's
            name = pod.metadata.name
            terminal = pod.status.phase in ("Succeeded", "Failed")
            if name not in self.pods_followed:
                self.pods_followed.append(name)
                self.log(f"streaming rank 0's log from pod {name}")
            got = self._follow(name, last_seen)
            if terminal or got is None:  # read to the end of a finished pod, or the pod is gone
                finished.add(name)
            elif got == 0:
                self._stop.wait(self.poll_s)

    def _follow(self, name: str, last_seen: dict[str, tuple[str, int]]) -> int | None:
        """Stream one pod's log to its end; the number of new lines, or None when the pod is gone.

        A reconnect asks for the lines of the last `since_seconds` (the client has no sinceTime) with a
        margin for clock skew between this pod and the node; lines up to the last one seen are skipped
        by their timestamps.
        """
        since = last_seen.get(name)
        kwargs: dict[str, Any] = {"container": CONTAINER, "follow": True, "timestamps": True}
        if since is not None:
            kwargs["since_seconds"] = seconds_since(since[0])
        try:
            self._resp = self.core.read_namespaced_pod_log(name, self.namespace, _preload_content=False, **kwargs)
        except Exception as exc:
            if api_status(exc) == 404:
                return None
            if api_status(exc) == 400:  # container not started yet
                return 0
            self.log(f"reading the log of {name} failed ({exc}); retrying")
            return 0
        new = 0
        try:
            for raw in _iter_lines(self._resp):
                stamp, line = split_timestamp(raw)
                if stamp is not None:
                    if since is not None and stamp <= since:
                        continue
                    last_seen[name] = stamp
                self.lines += 1
                new += 1
                self.on_line(name, line)
        except Exception as exc:  # a dropped stream: reconnect from the last timestamp
            if not self._stop.is_set() and not is_stream_timeout(exc):  # a quiet pod outlasting the read timeout
                self.log(f"log stream of {name} dropped ({exc}); reconnecting")
        finally:
            self._resp = None
        return new
