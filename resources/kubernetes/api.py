"""Talking to the Kubernetes API server: the clients, a bound on every call, and errors that name the fix.

The official client waits forever by default; every call the launcher makes goes through
`BoundedApi`, so a server that never answers ends the run with a message instead of hanging it.
"""

from __future__ import annotations

import functools
import math
import socket
from typing import Any

import dagster as dg

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
    """The HTTP status of a refused call (404: gone, 403: RBAC...), None when the server never answered."""
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


def within(api: Any, remaining: float | None) -> Any:
    """`api` whose calls end by a caller's deadline (a `BoundedApi`); other API objects as they are."""
    capped = getattr(api, "capped", None)
    return capped(remaining) if capped is not None and remaining is not None else api


def load_clients(kubeconfig: str = "", kube_context: str = "") -> tuple[Any, Any]:
    """(BatchV1Api, CoreV1Api) from in-cluster config, or from a kubeconfig outside a cluster.

    urllib3 would retry a timed-out GET three times on its own; one retry is kept (a stale pooled
    connection), so a call takes at most two attempts of connect + read timeout each.
    """
    from kubernetes import client, config
    from urllib3.util.retry import Retry

    configuration = client.Configuration()
    try:
        if kubeconfig or kube_context:
            config.load_kube_config(
                config_file=kubeconfig or None,
                context=kube_context or None,
                client_configuration=configuration,
            )
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                config.load_kube_config(client_configuration=configuration)
    except (config.ConfigException, OSError) as exc:
        raise dg.Failure(
            f"no Kubernetes credentials: not running in a cluster and no usable kubeconfig ({exc}). "
            "Run Dagster in the cluster (deploy/k8s) or set K8S_KUBECONFIG / K8S_CONTEXT."
        ) from exc
    configuration.retries = Retry(total=1)
    api = client.ApiClient(configuration)
    return client.BatchV1Api(api), client.CoreV1Api(api)


def refusal(what: str, namespace: str, exc: BaseException) -> str:
    """The failure message for a call the API server refused or never answered, with the likely fix."""
    if isinstance(exc, KubeApiUnavailable):  # no answer: the message names the server and the bound
        return f"{what} in namespace {namespace} failed: {exc}"
    status = api_status(exc)
    hint = {
        401: "the credentials were rejected",
        403: "RBAC forbids it: bind deploy/k8s/10-rbac.yaml's Role to the service account the Dagster run uses",
        404: f"namespace {namespace!r} does not exist",
        409: "an object with that name already exists",
        422: "the API server rejected the object (render it with `python -m resources.kubernetes render`)",
    }.get(status or 0, "see the error")
    body = getattr(exc, "body", None) or exc
    return f"{what} in namespace {namespace} failed ({status}): {hint}. {body}"
