"""The NetworkPolicies in deploy/k8s select the pods they mean, and admit exactly the connections the platform needs.

The pods are the real ones: the Deployments and the StatefulSet from the manifests, the run workers as
the K8sRunLauncher builds them from the instance config (its standard labels plus ours), and the trainer
pods as KubernetesTrainingLauncher builds them from the platform settings ConfigMap. A small evaluator of
the NetworkPolicy rules (label selectors, namespace selectors, ports, policy types; the semantics of
networking.k8s.io/v1) decides each connection.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from support.deploy_manifests import by_kind, platform_env, trainer_launcher

pytestmark = pytest.mark.kubernetes

NAMESPACE = "catalog-posttrain"


# ---- label selectors and policy evaluation -------------------------------------------------------------------


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics: every matchLabels pair and every matchExpressions requirement holds."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req["key"], req["operator"], set(req.get("values") or [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


@dataclass(frozen=True)
class Endpoint:
    name: str
    namespace: str | None  # None: an address outside the cluster's pods
    labels: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace} if self.namespace else {}


def peer_matches(peer: dict[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        return other.namespace is None  # only non-pod addresses are modelled for ipBlock
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], other.namespace_labels)
    else:
        in_namespace = other.namespace == policy_namespace
    return in_namespace and ("podSelector" not in peer or selects(peer["podSelector"], other.labels))


def port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        if p["port"] == port or (p.get("endPort") and p["port"] <= port <= p["endPort"]):
            return True
    return False


def policy_types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def direction_allows(
    policies: list[dict[str, Any]], kind: str, subject: Endpoint, other: Endpoint, port: int, protocol: str
) -> bool:
    """Whether the policies selecting `subject` for `kind` (Ingress/Egress) admit traffic with `other`."""
    if subject.namespace is None:
        return True  # outside the cluster: no policy applies
    key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == subject.namespace
        and kind in policy_types(p)
        and selects(p["spec"]["podSelector"], subject.labels)
    ]
    if not selecting:
        return True  # not isolated in this direction
    return any(
        port_matches(rule.get("ports"), port, protocol)
        and (
            peers_key not in rule
            or any(peer_matches(peer, p["metadata"]["namespace"], other) for peer in rule[peers_key])
        )
        for p in selecting
        for rule in p["spec"].get(key) or []
    )


def allowed(policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
    return direction_allows(policies, "Egress", src, dst, port, protocol) and direction_allows(
        policies, "Ingress", dst, src, port, protocol
    )


# ---- the pods ------------------------------------------------------------------------------------------------


# What dagster-k8s puts on every run worker pod it creates (merged with run_k8s_config's labels).
DAGSTER_K8S_LABELS = {
    "app.kubernetes.io/name": "dagster",
    "app.kubernetes.io/instance": "dagster",
    "app.kubernetes.io/part-of": "dagster",
    "app.kubernetes.io/component": "run_worker",
}


@pytest.fixture(scope="module")
def pods() -> Iterator[dict[str, Endpoint]]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _pods(monkeypatch)


def _pods(monkeypatch: pytest.MonkeyPatch) -> dict[str, Endpoint]:
    out: dict[str, Endpoint] = {}
    for kind in ("Deployment", "StatefulSet"):
        for doc in by_kind(kind).values():
            labels = doc["spec"]["template"]["metadata"]["labels"]
            out[labels["app.kubernetes.io/component"]] = Endpoint(doc["metadata"]["name"], NAMESPACE, labels)
    instance = yaml.safe_load(by_kind("ConfigMap")["dagster-instance"]["data"]["dagster.yaml"])
    launcher = instance["run_launcher"]["config"]
    run_labels = launcher["run_k8s_config"].get("pod_template_spec_metadata", {}).get("labels", {})
    out["run-worker"] = Endpoint("run-worker", launcher["job_namespace"], {**DAGSTER_K8S_LABELS, **run_labels})
    trainer = trainer_launcher(monkeypatch, platform_env())
    template = trainer.job_spec(
        "sft-abc12345-xyz01", "/platform/artifact-cache/x/c.json", config_key="x/config-1"
    ).job()["spec"]["template"]
    out["trainer"] = Endpoint("sft-abc12345-xyz01-0", trainer.namespace, template["metadata"]["labels"])
    # Not ours: an authenticating proxy (labelled as 50-dagster.yaml says), cluster DNS, strangers, the internet.
    out["proxy"] = Endpoint("oauth2-proxy", "auth", {"catalog-posttrain/webserver-access": "true"})
    out["kube-dns"] = Endpoint("coredns", "kube-system", {"k8s-app": "kube-dns"})
    out["debug-pod"] = Endpoint("debug", NAMESPACE, {"run": "debug"})
    out["other-namespace"] = Endpoint("app", "shop", {"app.kubernetes.io/component": "webserver"})
    out["internet"] = Endpoint("203.0.113.9", None)
    assert {"code", "webserver", "daemon", "postgresql", "run-worker", "trainer"} <= set(out)
    return out


@functools.cache
def policies() -> list[dict[str, Any]]:
    return list(by_kind("NetworkPolicy").values())


# ---- the tests -----------------------------------------------------------------------------------------------


def test_each_policy_selects_the_pods_it_means(pods: dict[str, Endpoint]) -> None:
    ours = {k: v for k, v in pods.items() if v.namespace == NAMESPACE}
    by_name = {p["metadata"]["name"]: p for p in policies()}

    def selected(policy: str) -> set[str]:
        return {k for k, pod in ours.items() if selects(by_name[policy]["spec"]["podSelector"], pod.labels)}

    def sources(policy: str, direction: str = "ingress", peers: str = "from") -> set[str]:
        spec = by_name[policy]["spec"]
        return {
            k
            for k, pod in pods.items()
            for rule in spec.get(direction) or []
            for peer in rule.get(peers) or []
            if peer_matches(peer, NAMESPACE, pod)
        }

    assert selected("catalog-posttrain-default-deny-ingress") == set(ours)  # every pod of the namespace
    assert selected("catalog-posttrain-postgresql") == {"postgresql"}
    assert sources("catalog-posttrain-postgresql") == {"webserver", "daemon", "code", "run-worker"}
    assert selected("catalog-posttrain-code") == {"code"}
    assert sources("catalog-posttrain-code") == {"webserver", "daemon"}
    assert selected("catalog-posttrain-webserver") == {"webserver"}
    assert sources("catalog-posttrain-webserver") == {"proxy"}
    assert selected("catalog-posttrain-trainer") == {"trainer"}
    assert sources("catalog-posttrain-trainer") == {"trainer"}
    assert sources("catalog-posttrain-trainer", "egress", "to") == {"trainer"}


ALLOWED = [
    ("webserver", "postgresql", 5432, "TCP"),
    ("daemon", "postgresql", 5432, "TCP"),
    ("code", "postgresql", 5432, "TCP"),
    ("run-worker", "postgresql", 5432, "TCP"),
    ("webserver", "code", 3030, "TCP"),
    ("daemon", "code", 3030, "TCP"),
    ("proxy", "webserver", 3000, "TCP"),
    ("trainer", "trainer", 29500, "TCP"),  # the c10d rendezvous on pod 0
    ("trainer", "trainer", 43117, "TCP"),  # gloo/NCCL connections on ports chosen at run time
    ("trainer", "kube-dns", 53, "UDP"),
    ("trainer", "kube-dns", 53, "TCP"),
    ("run-worker", "internet", 443, "TCP"),  # the API server (address differs per cluster): egress stays open
    ("trainer", "internet", 443, "TCP"),  # the object store the artifacts live on (narrow it to the store's range)
]
DENIED = [
    ("trainer", "postgresql", 5432, "TCP"),
    ("trainer", "code", 3030, "TCP"),
    ("trainer", "webserver", 3000, "TCP"),
    ("trainer", "internet", 80, "TCP"),  # nothing but the object store's HTTPS
    ("trainer", "internet", 22, "TCP"),
    ("run-worker", "code", 3030, "TCP"),  # run workers load the code from the image
    ("run-worker", "trainer", 29500, "TCP"),
    ("webserver", "trainer", 29500, "TCP"),
    ("debug-pod", "trainer", 29500, "TCP"),
    ("debug-pod", "postgresql", 5432, "TCP"),
    ("other-namespace", "postgresql", 5432, "TCP"),
    ("other-namespace", "webserver", 3000, "TCP"),  # same component label, other namespace, no access label
    ("internet", "webserver", 3000, "TCP"),
    ("proxy", "webserver", 3030, "TCP"),
    ("proxy", "postgresql", 5432, "TCP"),
    ("webserver", "daemon", 3000, "TCP"),
    ("code", "run-worker", 3030, "TCP"),
]


@pytest.mark.parametrize("src,dst,port,protocol", ALLOWED)
def test_the_platform_connections_are_admitted(
    pods: dict[str, Endpoint], src: str, dst: str, port: int, protocol: str
) -> None:
    assert allowed(policies(), pods[src], pods[dst], port, protocol)


@pytest.mark.parametrize("src,dst,port,protocol", DENIED)
def test_everything_else_is_refused(pods: dict[str, Endpoint], src: str, dst: str, port: int, protocol: str) -> None:
    assert not allowed(policies(), pods[src], pods[dst], port, protocol)


def test_the_evaluator_follows_the_networkpolicy_rules() -> None:
    """The matcher itself, on the cases the policies above rely on."""
    a = Endpoint("a", "ns", {"role": "a"})
    b = Endpoint("b", "ns", {"role": "b"})
    elsewhere = Endpoint("c", "other", {"role": "a"})
    assert selects({}, {"x": "1"}) and selects(None, {})
    assert selects({"matchExpressions": [{"key": "role", "operator": "In", "values": ["a"]}]}, a.labels)
    assert not selects({"matchExpressions": [{"key": "role", "operator": "DoesNotExist"}]}, a.labels)
    deny = {"metadata": {"namespace": "ns"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    assert allowed([], b, a, 1) and not allowed([deny], b, a, 1)
    admit_a = {
        "metadata": {"namespace": "ns"},
        "spec": {
            "podSelector": {"matchLabels": {"role": "b"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "a"}}}], "ports": [{"port": 80}]}],
        },
    }
    assert allowed([deny, admit_a], a, b, 80) and not allowed([deny, admit_a], a, b, 81)
    assert not allowed([deny, admit_a], elsewhere, b, 80)  # a bare podSelector means the policy's namespace
    any_namespace = {**admit_a, "spec": {**admit_a["spec"]}}
    any_namespace["spec"]["ingress"] = [
        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "a"}}}]}
    ]
    assert allowed([deny, any_namespace], elsewhere, b, 80)
