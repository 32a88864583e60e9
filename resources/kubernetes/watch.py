"""Watching one training Job: its conditions, its pods, rank 0's log stream (with Dagster Pipes
messages), failure capture and cleanup. Works on the official `kubernetes` client's API objects
(`BatchV1Api`, `CoreV1Api`) or anything with the same methods (the tests use fakes that return
real client model objects).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import dagster as dg
import yaml

from resources.kubernetes.objects import (
    COMPLETION_INDEX_ANNOTATION,
    CONTAINER,
    JOB_LABEL,
    pod_failure_action,
)
from training.k8s_node import PEER_LOST_EXIT_CODE, rank_error
from training.torchrun_logs import parse_root_cause

PIPES_MARKER = '{"__dagster_pipes_version"'
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z ?")
_NODE_VERDICT = re.compile(r"\[k8s_node\] torchrun exited .*")

_api_client: Any = None


def to_dict(obj: Any) -> Any:
    """A kubernetes client model (V1Job, V1Pod...) as its JSON form (camelCase keys); dicts pass through."""
    global _api_client
    if obj is None or isinstance(obj, dict):
        return obj
    if _api_client is None:
        from kubernetes.client import ApiClient

        _api_client = ApiClient()
    return _api_client.sanitize_for_serialization(obj)


def api_status(exc: BaseException) -> int | None:
    return getattr(exc, "status", None)


# ---- bounded API calls --------------------------------------------------------------------------------------

# Defaults for every Kubernetes API call: the API server ends a plain request itself after 60 s
# (kube-apiserver --request-timeout), so waiting longer for an answer never helps.
API_CONNECT_TIMEOUT_S = 10.0
API_READ_TIMEOUT_S = 60.0
API_TIMEOUT_SETTINGS = "K8S_API_CONNECT_TIMEOUT_SECONDS / K8S_API_READ_TIMEOUT_SECONDS"


class KubeApiUnavailable(RuntimeError):
    """A Kubernetes API call got no answer within its bound, or could not reach the server at all."""

    status = None  # no HTTP status: the server never answered


def _is_timeout(exc: BaseException) -> bool:
    """True for a request that reached no answer in time (as opposed to a refused or failed connection)."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    reason = exc.reason if isinstance(exc, MaxRetryError) else exc
    if isinstance(reason, NewConnectionError):  # a subclass of ConnectTimeoutError, but a refusal
        return False
    return isinstance(reason, Urllib3Timeout | socket.timeout)


def is_stream_timeout(exc: BaseException) -> bool:
    """A log stream that was quiet for longer than the read timeout (urllib3 raises it while reading)."""
    from urllib3.exceptions import ProtocolError

    if isinstance(exc, ProtocolError) and exc.args and isinstance(exc.args[-1], BaseException):
        exc = exc.args[-1]
    return _is_timeout(exc)


class BoundedApi:
    """A kubernetes client API object (BatchV1Api, CoreV1Api) whose every call carries connect and read timeouts.

    The client waits forever by default: a server that accepts the connection and never answers
    (a wedged API server, a black-holing proxy or network policy) would hang the Dagster run for good.
    Here each call gets `_request_timeout=(connect, read)`, and a transport failure becomes a
    `KubeApiUnavailable` that names the server, the call and the bound. Streams opened with
    `_preload_content=False` (pod logs) keep the read timeout for every read.
    """

    def __init__(self, api: Any, connect_s: float = API_CONNECT_TIMEOUT_S, read_s: float = API_READ_TIMEOUT_S) -> None:
        if connect_s <= 0 or read_s <= 0:
            raise ValueError(f"API timeouts must be positive, got connect={connect_s} read={read_s}")
        self._api = api
        self.connect_s, self.read_s = float(connect_s), float(read_s)

    @property
    def server(self) -> str:
        config = getattr(getattr(self._api, "api_client", None), "configuration", None)
        return getattr(config, "host", None) or "the Kubernetes API server"

    def capped(self, seconds: float) -> BoundedApi:
        """The same API with both timeouts at most `seconds` (at least 1 s): for a caller with its own deadline."""
        bound = float(max(1, math.ceil(seconds)))
        return BoundedApi(self._api, min(self.connect_s, bound), min(self.read_s, bound))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._api, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("_request_timeout", (self.connect_s, self.read_s))
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                if _is_transport_error(exc):
                    raise KubeApiUnavailable(self._explain(name, args, exc)) from exc
                raise

        return call

    def _explain(self, name: str, args: tuple[Any, ...], exc: BaseException) -> str:
        what = f"{name}({', '.join(a for a in args if isinstance(a, str))})"
        if _is_timeout(exc):
            return (
                f"the Kubernetes API server at {self.server} did not answer {what} within the bound "
                f"(connect {self.connect_s:g}s, read {self.read_s:g}s; {API_TIMEOUT_SETTINGS}): {exc}. "
                "Check that the API server is up and reachable from this pod (network policy, proxy, DNS)"
            )
        return (
            f"could not reach the Kubernetes API server at {self.server} for {what}: {exc}. "
            "Check the server address (kubeconfig / in-cluster service) and that this pod may reach it"
        )


def _is_transport_error(exc: BaseException) -> bool:
    from urllib3.exceptions import HTTPError

    return isinstance(exc, HTTPError | socket.timeout | ConnectionError)


# ---- Dagster Pipes over the pod log ------------------------------------------------------------------------


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


# ---- following rank 0's log across pod replacements ---------------------------------------------------------


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


def pod_index(pod: Any) -> int | None:
    annotations = (pod.metadata.annotations or {}) if pod.metadata else {}
    value = annotations.get(COMPLETION_INDEX_ANNOTATION)
    return int(value) if value is not None and str(value).isdigit() else None


def list_job_pods(core: Any, namespace: str, job_name: str) -> list[Any]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_LABEL}={job_name}").items or []
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return sorted(pods, key=lambda p: (p.metadata.creation_timestamp or epoch, p.metadata.name))


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


# ---- watching the Job ---------------------------------------------------------------------------------------


@dataclass
class JobOutcome:
    succeeded: bool
    condition: str  # Complete | SuccessCriteriaMet | FailureTarget | Failed | Timeout | Deleted
    reason: str = ""
    message: str = ""

    def describe(self) -> str:
        text = f"{self.condition}"
        if self.reason:
            text += f" ({self.reason})"
        return f"{text}: {self.message}" if self.message else text


@dataclass
class PodRecord:
    name: str
    index: int | None
    phase: str
    exit_code: int | None = None
    action: str | None = None  # the podFailurePolicy action for a failed pod
    reason: str = ""


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER and (cs.get("state") or {}).get("terminated"):
            return cs["state"]["terminated"]
    return None


def _condition(pod: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def within(api: Any, remaining: float | None) -> Any:
    """`api` whose calls end by a caller's deadline (a `BoundedApi`); other API objects as they are."""
    capped = getattr(api, "capped", None)
    return capped(remaining) if capped is not None and remaining is not None else api


class JobWatcher:
    """Polls the Job's status until a terminal condition, and narrates what happens to its pods."""

    SUCCESS = ("SuccessCriteriaMet", "Complete")
    FAILURE = ("FailureTarget", "Failed")

    def __init__(
        self,
        batch: Any,
        core: Any,
        namespace: str,
        job_name: str,
        *,
        log: Any,
        poll_s: float = 5.0,
        timeout_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_api_errors: int = 10,
    ) -> None:
        self.batch, self.core = batch, core
        self.namespace, self.job_name = namespace, job_name
        self.log = log  # info/warning/error callables, e.g. context.log
        self.poll_s, self.timeout_s = poll_s, timeout_s
        self.sleep, self.clock = sleep, clock
        self.max_api_errors = max_api_errors
        self.pods: dict[str, PodRecord] = {}
        self.policy: dict[str, Any] | None = None
        self.backoff_limit: int | None = None
        self._warned: set[str] = set()

    def wait(self, timeout_s: float | None = None) -> JobOutcome:
        """Poll until the Job reaches a terminal condition, or `timeout_s` (default: the watcher's) passes.

        The deadline holds while the API fails too: an API server that stops answering ends the wait
        with a Timeout outcome naming the last error, never an endless retry loop.
        """
        limit = self.timeout_s if timeout_s is None else timeout_s
        started = self.clock()
        errors = 0
        while True:
            batch = within(self.batch, limit - (self.clock() - started) if limit else None)
            try:
                job = batch.read_namespaced_job_status(self.job_name, self.namespace)
                errors = 0
            except Exception as exc:
                if api_status(exc) == 404:
                    gone = f"Job {self.job_name} was deleted outside the launcher"
                    return JobOutcome(False, "Deleted", "NotFound", gone)
                errors += 1
                if errors > self.max_api_errors:
                    raise
                if limit and self.clock() - started > limit:
                    return JobOutcome(
                        False,
                        "Timeout",
                        "ApiUnavailable",
                        f"no status of Job {self.namespace}/{self.job_name} within {limit:.0f}s; "
                        f"the last API call failed: {exc}",
                    )
                self.log.warning(f"reading Job {self.job_name} failed ({exc}); retrying")
                self.sleep(self.poll_s)
                continue
            outcome = self.evaluate(job)
            try:
                self.observe_pods(within(self.core, limit - (self.clock() - started) if limit else None))
            except Exception as exc:  # narration only; the Job's conditions decide
                self.log.warning(f"listing the Job's pods failed ({exc})")
            if outcome is not None:
                return outcome
            if limit and self.clock() - started > limit:
                return JobOutcome(
                    False,
                    "Timeout",
                    "LauncherDeadline",
                    f"no terminal condition after {limit:.0f}s (activeDeadlineSeconds plus a grace period)",
                )
            self.sleep(self.poll_s)

    def evaluate(self, job: Any) -> JobOutcome | None:
        """A terminal outcome from the Job's conditions (not its counters), or None while it runs."""
        if self.policy is None and job.spec is not None:
            self.policy = to_dict(job.spec.pod_failure_policy)
            self.backoff_limit = job.spec.backoff_limit
        conditions = {c.type: c for c in (job.status.conditions or []) if c.status == "True"} if job.status else {}
        for kind in self.SUCCESS:
            if kind in conditions:
                c = conditions[kind]
                return JobOutcome(True, kind, c.reason or "", c.message or "")
        for kind in self.FAILURE:
            if kind in conditions:
                c = conditions[kind]
                return JobOutcome(False, kind, c.reason or "", c.message or "")
        return None

    def observe_pods(self, core: Any = None) -> None:
        for pod in list_job_pods(core or self.core, self.namespace, self.job_name):
            data = to_dict(pod)
            name = pod.metadata.name
            phase = pod.status.phase or "Pending"
            record = self.pods.get(name)
            if record is None:
                record = self.pods[name] = PodRecord(name, pod_index(pod), "")
            if phase == record.phase:
                if phase == "Pending":
                    self._warn_pending(name, data)
                continue
            record.phase = phase
            where = f"pod {name} (node {record.index})"
            if phase == "Running":
                self.log.info(f"{where} running on {pod.spec.node_name or '?'} at {pod.status.pod_ip or '?'}")
            elif phase == "Succeeded":
                self.log.info(f"{where} finished")
            elif phase == "Failed":
                self._narrate_failure(record, data, where)

    def _narrate_failure(self, record: PodRecord, data: dict[str, Any], where: str) -> None:
        terminated = _terminated(data) or {}
        record.exit_code = terminated.get("exitCode")
        record.action = pod_failure_action(self.policy, data)
        disruption = _condition(data, "DisruptionTarget")
        if disruption is not None:
            record.reason = disruption.get("reason") or "DisruptionTarget"
        else:
            record.reason = terminated.get("reason") or (data.get("status") or {}).get("reason") or ""
        limit = f" of backoffLimit={self.backoff_limit}" if self.backoff_limit is not None else ""
        if record.action == "Ignore":
            why = f"{record.reason}: {disruption.get('message', '')}" if disruption else record.reason
            self.log.warning(
                f"{where} was disrupted ({why}); the Job replaces it without counting a failure, and "
                "training resumes from the last checkpoint"
            )
        elif record.action == "Count" and record.exit_code == PEER_LOST_EXIT_CODE:
            self.log.warning(
                f"{where} lost a peer node (exit {PEER_LOST_EXIT_CODE}); the Job replaces it (a counted failure"
                f"{limit}) and training resumes from the last checkpoint"
            )
        elif record.action == "FailJob":
            self.log.error(
                f"{where} failed with exit code {record.exit_code}: an error in the training code or data; "
                "the Job fails without retrying"
            )
        else:
            self.log.warning(
                f"{where} failed ({record.reason or 'no reason'}, exit code {record.exit_code}); counted{limit}"
            )

    def _warn_pending(self, name: str, pod: dict[str, Any]) -> None:
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and name not in self._warned:
                self._warned.add(name)
                self.log.warning(f"pod {name} cannot be scheduled yet: {cond.get('message') or cond.get('reason')}")
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            key = f"{name}:{reason}"
            stuck = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError")
            if reason in stuck and key not in self._warned:
                self._warned.add(key)
                self.log.warning(f"pod {name} is waiting: {reason}: {waiting.get('message', '')}")


# ---- failure capture and cleanup ----------------------------------------------------------------------------


@dataclass
class FailureReport:
    headline: str
    error: str
    pods: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)
    saved_to: Path | None = None

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "pods": dg.MetadataValue.json(self.pods),
            "error": dg.MetadataValue.md(f"```\n{self.error}\n```"),
            "events": dg.MetadataValue.md("```\n" + ("\n".join(self.events) or "(none)") + "\n```"),
        }
        if self.saved_to is not None:
            meta["captured_logs"] = dg.MetadataValue.path(str(self.saved_to))
        return meta


def _event_line(event: Any) -> str:
    when = event.last_timestamp or event.event_time or event.first_timestamp
    obj = event.involved_object
    who = f"{obj.kind}/{obj.name}" if obj is not None else "?"
    count = f" (x{event.count})" if event.count and event.count > 1 else ""
    return f"{when} {event.type} {who} {event.reason}: {event.message}{count}"


def capture_failure(
    core: Any,
    batch: Any,
    namespace: str,
    job_name: str,
    outcome: JobOutcome,
    pods: Mapping[str, PodRecord],
    *,
    tail_lines: int = 300,
    save_dir: Path | None = None,
) -> FailureReport:
    """Pod logs, events and the Job's final status, read while the objects still exist (before any delete)."""
    logs: dict[str, str] = {}
    pod_rows: list[dict[str, Any]] = []
    names: list[str] = [job_name]
    try:
        live = list_job_pods(core, namespace, job_name)
    except Exception as exc:
        live = []
        logs["(pods)"] = f"listing pods failed: {exc}"
    for pod in live:
        data = to_dict(pod)
        name = pod.metadata.name
        names.append(name)
        terminated = _terminated(data) or {}
        record = pods.get(name)
        pod_rows.append(
            {
                "pod": name,
                "index": pod_index(pod),
                "phase": pod.status.phase,
                "exit_code": terminated.get("exitCode"),
                "reason": (record.reason if record else "") or terminated.get("reason") or "",
                "action": record.action if record else None,
                "node": pod.spec.node_name if pod.spec else None,
            }
        )
        try:
            logs[name] = core.read_namespaced_pod_log(name, namespace, container=CONTAINER, tail_lines=tail_lines)
        except Exception as exc:
            logs[name] = f"(log unavailable: {getattr(exc, 'status', '')} {getattr(exc, 'reason', exc)})"
    events: list[str] = []
    for name in names:
        try:
            found = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items or []
        except Exception as exc:
            events.append(f"(events of {name} unavailable: {exc})")
            continue
        events += [_event_line(e) for e in found]
    headline, error = _explain(outcome, pod_rows, logs)
    report = FailureReport(headline=headline, error=error, pods=pod_rows, events=events, logs=logs)
    if save_dir is not None:
        try:
            save_dir.mkdir(parents=True, exist_ok=True)
            for name, text in logs.items():
                (save_dir / f"{name}.log").write_text(text if isinstance(text, str) else str(text))
            (save_dir / "events.txt").write_text("\n".join(events) + "\n")
            status: Any = None
            try:
                status = to_dict(batch.read_namespaced_job_status(job_name, namespace))
            except Exception as exc:
                status = {"error": str(exc)}
            (save_dir / "job.yaml").write_text(yaml.safe_dump(status, sort_keys=False))
            report.saved_to = save_dir
        except OSError:
            report.saved_to = None
    return report


def _explain(outcome: JobOutcome, pods: list[dict[str, Any]], logs: Mapping[str, str]) -> tuple[str, str]:
    """One line for the failure message, and the failed rank's error text."""
    failed = [p for p in pods if p["phase"] == "Failed"]
    culprit = next((p for p in failed if p["action"] == "FailJob"), None)
    culprit = culprit or next((p for p in failed if p["exit_code"] not in (None, PEER_LOST_EXIT_CODE)), None)
    culprit = culprit or (failed[-1] if failed else None)
    error = ""
    verdict = ""
    if culprit is not None:
        text = logs.get(culprit["pod"], "")
        text = text if isinstance(text, str) else str(text)
        rank, _local, _code = parse_root_cause(text)
        error = rank_error(text, rank)
        found = _NODE_VERDICT.findall(text)
        verdict = found[-1] if found else ""
    if outcome.reason == "DeadlineExceeded":
        head = f"the Job ran past its activeDeadlineSeconds ({outcome.message})"
    elif outcome.reason == "BackoffLimitExceeded":
        head = f"pods failed more often than backoffLimit allows ({outcome.message})"
    elif outcome.condition == "Timeout":
        head = f"the launcher gave up waiting: {outcome.message}"
    else:
        head = outcome.describe()
    if culprit is not None:
        head += f"; pod {culprit['pod']} (node {culprit['index']}) exited {culprit['exit_code']}"
        if verdict:
            head += f": {verdict.removeprefix('[k8s_node] ')}"
    return head, error or "(no traceback in the captured logs)"


def delete_objects(batch: Any, core: Any, namespace: str, name: str, log: Any) -> None:
    """Delete the Job (its pods with it) and the Service; already-gone objects are fine."""
    for what, call, left in (
        (
            "Job",
            lambda: batch.delete_namespaced_job(name, namespace, propagation_policy="Background"),
            f"it ends at its activeDeadlineSeconds at the latest; to free its nodes now: "
            f"kubectl -n {namespace} delete job {name}",
        ),
        (
            "Service",
            lambda: core.delete_namespaced_service(name, namespace),
            f"it goes with its Job (ownerReference), or: kubectl -n {namespace} delete service {name}",
        ),
    ):
        try:
            call()
            log.info(f"deleted {what} {namespace}/{name}")
        except Exception as exc:
            if api_status(exc) != 404:
                log.warning(f"could not delete {what} {namespace}/{name}: {exc}; {left}")
