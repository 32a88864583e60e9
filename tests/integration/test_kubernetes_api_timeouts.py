"""No hang without a bound: the training launcher's Kubernetes API calls against servers that stop answering.

The real `kubernetes` client talks to local servers over HTTP: one that accepts connections and never
answers (a wedged API server, a black-holing proxy), and a scripted one that answers some requests and
goes silent on others. Every wait ends within a generous bound (a thread join timeout, never a tight
timing), with an error that names the server and the bound.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import dagster as dg
import pytest
from support.k8s_policy import RecordingLog

from resources.kubernetes import (
    COMPLETION_INDEX_ANNOTATION,
    JobWatcher,
    KubeApiUnavailable,
    KubernetesTrainingLauncher,
    Rank0LogFollower,
)

pytestmark = pytest.mark.kubernetes

BOUND_S = 15.0  # generous: the calls below are bounded by 1-2 s timeouts each


_Log = RecordingLog


def kubeconfig(tmp_path: Path, server: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: c\n  cluster: {{server: '{server}'}}\n"
        "users:\n- name: u\n  user: {token: not-a-real-token}\n"
        "contexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n"
    )
    return str(path)


def launcher_for(tmp_path: Path, server: str) -> KubernetesTrainingLauncher:
    return KubernetesTrainingLauncher(
        namespace="training",
        image="registry.example.com/catalog-posttrain:0.1.0",
        artifacts_mount_path=str(tmp_path / "artifacts"),
        kubeconfig=kubeconfig(tmp_path, server),
        api_connect_timeout_s=1,
        api_read_timeout_s=2,
        poll_interval_s=0.2,
    )


def within_bound(fn: Callable[[], Any]) -> Any:
    """fn() run in a thread; fails if it is still running after BOUND_S. Returns its result or its exception."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    assert not thread.is_alive(), f"still blocked after {BOUND_S:.0f}s"
    return box.get("result", box.get("error"))


@pytest.fixture
def silent_api() -> Iterator[str]:
    """An address that accepts TCP connections and never sends a byte back."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    for conn in held:
        conn.close()


# ---- a server that answers some requests and goes silent on others -----------------------------------------------


class ScriptedApi:
    """A tiny stand-in for the API server: `routes` map (method, path) to a handler; `silent` paths never answer."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.release = threading.Event()  # set at teardown: silent handlers return
        self.routes: dict[tuple[str, str], Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]] = {}
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def _handle(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                api.requests.append((self.command, url.path, parse_qs(url.query)))
                route = api.routes.get((self.command, url.path))
                if route is None:
                    self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404})
                    return
                route(self, {"body": body, "query": parse_qs(url.query)})

            def reply(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def silent(self, handler: BaseHTTPRequestHandler, _req: dict[str, Any]) -> None:
        self.release.wait(60)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted_api() -> Iterator[ScriptedApi]:
    api = ScriptedApi()
    yield api
    api.close()


# ---- the tests -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_job_watcher_ends_within_its_bound_against_a_silent_api_server(silent_api: str, tmp_path: Path) -> None:
    """With the default API timeouts (10 s / 60 s): the watcher's own deadline caps each call it makes."""
    launcher = KubernetesTrainingLauncher(image="i", kubeconfig=kubeconfig(tmp_path, silent_api))
    batch, core = launcher.api_clients()
    watcher = JobWatcher(batch, core, "training", "sft-x-abcde", log=_Log(), poll_s=0.2)
    outcome = within_bound(lambda: watcher.wait(timeout_s=3))
    assert not isinstance(outcome, BaseException), outcome
    assert not outcome.succeeded and outcome.condition == "Timeout"
    assert outcome.message.startswith("no status of Job training/sft-x-abcde within 3s")
    assert f"the Kubernetes API server at {silent_api} did not answer read_namespaced_job_status" in outcome.message
    assert "connect 3s, read 3s" in outcome.message and "K8S_API_READ_TIMEOUT_SECONDS" in outcome.message


def test_creating_the_job_against_a_silent_api_server_fails_naming_the_server_and_the_bound(
    silent_api: str, tmp_path: Path
) -> None:
    launcher = launcher_for(tmp_path, silent_api)
    batch, core = launcher.api_clients()
    spec = launcher.job_spec("sft-x-abcde", f"{launcher.artifacts_mount_path}/x/train_config.json")
    context = type("Context", (), {"log": _Log()})()
    error = within_bound(lambda: launcher._submit(batch, core, spec.job(), spec.service(), context))
    assert isinstance(error, dg.Failure), error
    text = str(error.description)
    assert text.startswith("creating the Job in namespace training failed")
    assert f"the Kubernetes API server at {silent_api} did not answer create_namespaced_job(training)" in text
    assert "connect 1s, read 2s" in text


def test_a_silent_service_create_fails_naming_the_server_and_deletes_the_job(
    scripted_api: ScriptedApi, tmp_path: Path
) -> None:
    jobs = "/apis/batch/v1/namespaces/training/jobs"

    def create_job(handler: Any, req: dict[str, Any]) -> None:
        created = {**req["body"], "metadata": {**req["body"]["metadata"], "uid": "uid-1"}}
        handler.reply(201, created)

    scripted_api.routes[("POST", jobs)] = create_job
    scripted_api.routes[("POST", "/api/v1/namespaces/training/services")] = scripted_api.silent
    scripted_api.routes[("DELETE", f"{jobs}/sft-x-abcde")] = lambda h, _r: h.reply(
        200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
    )
    launcher = launcher_for(tmp_path, scripted_api.url)
    batch, core = launcher.api_clients()
    spec = launcher.job_spec("sft-x-abcde", f"{launcher.artifacts_mount_path}/x/train_config.json")
    context = type("Context", (), {"log": _Log()})()
    error = within_bound(lambda: launcher._submit(batch, core, spec.job(), spec.service(), context))
    assert isinstance(error, dg.Failure), error
    text = str(error.description)
    assert text.startswith("creating the headless Service in namespace training failed")
    assert f"{scripted_api.url} did not answer create_namespaced_service(training)" in text
    assert ("DELETE", f"{jobs}/sft-x-abcde") in [(m, p) for m, p, _ in scripted_api.requests]  # no Job left behind


def test_a_quiet_log_stream_is_reopened_after_the_read_timeout_without_losing_or_repeating_lines(
    scripted_api: ScriptedApi, tmp_path: Path
) -> None:
    """A pod log followed through the API: the trainer prints nothing for longer than the read timeout."""
    pods = "/api/v1/namespaces/training/pods"
    lines = [f"2026-03-01T12:00:0{i}.000000001Z line {i}\n".encode() for i in range(3)]
    phase = ["Running"]
    opened: list[dict[str, list[str]]] = []

    def list_pods(handler: Any, _req: dict[str, Any]) -> None:
        pod = {
            "metadata": {
                "name": "sft-x-0-a",
                "annotations": {COMPLETION_INDEX_ANNOTATION: "0"},
                "creationTimestamp": "2026-03-01T12:00:00Z",
            },
            "status": {"phase": phase[0]},
        }
        handler.reply(200, {"kind": "PodList", "apiVersion": "v1", "items": [pod]})

    def follow_log(handler: Any, req: dict[str, Any]) -> None:
        opened.append(req["query"])
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        if len(opened) == 1:  # line 0, then the trainer is quiet for longer than the read timeout
            handler.chunk(lines[0])
            scripted_api.release.wait(60)
            return
        window = int(req["query"]["sinceSeconds"][0])
        for line in lines:
            if (datetime.now(UTC) - datetime.fromisoformat(line.decode()[:19] + "+00:00")).total_seconds() <= window:
                handler.chunk(line)
        phase[0] = "Succeeded"
        handler.wfile.write(b"0\r\n\r\n")
        handler.close_connection = True

    scripted_api.routes[("GET", pods)] = list_pods
    scripted_api.routes[("GET", f"{pods}/sft-x-0-a/log")] = follow_log
    _, core = launcher_for(tmp_path, scripted_api.url).api_clients()
    seen: list[str] = []
    notes: list[str] = []
    got_all = threading.Event()

    def on_line(_pod: str, line: str) -> None:
        seen.append(line)
        if len(seen) == len(lines):
            got_all.set()

    follower = Rank0LogFollower(core, "training", "sft-x", on_line, poll_s=0.05, log=notes.append)
    follower.start()
    try:
        assert got_all.wait(BOUND_S), f"the follower is stuck on the quiet stream; lines so far: {seen}"
        assert follower.finish(BOUND_S)
    finally:
        follower.stop()
    assert seen == ["line 0", "line 1", "line 2"]
    assert opened[0].get("follow") == ["True"] and "sinceSeconds" not in opened[0]
    reaches_back = (datetime.now(UTC) - datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)).total_seconds()
    assert int(opened[1]["sinceSeconds"][0]) >= reaches_back  # reopened back to the last line seen
    assert not [n for n in notes if "dropped" in n], notes  # a quiet pod is not reported as an error


def test_api_timeouts_are_bounded_settings(tmp_path: Path) -> None:
    launcher = launcher_for(tmp_path, "http://127.0.0.1:1").model_copy(update={"api_read_timeout_s": 0})
    with pytest.raises(dg.Failure, match=r"api_read_timeout_s \(K8S_API_READ_TIMEOUT_SECONDS\)=0 must be above 0"):
        launcher.api_clients()


def test_a_refused_connection_names_the_server(tmp_path: Path) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    probe.close()  # nothing listens there now
    batch, _ = launcher_for(tmp_path, closed).api_clients()
    error = within_bound(lambda: batch.read_namespaced_job_status("sft-x", "training"))
    assert isinstance(error, KubeApiUnavailable), error
    assert str(error).startswith(
        f"could not reach the Kubernetes API server at {closed} for read_namespaced_job_status"
    )
