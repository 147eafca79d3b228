"""What the rendered manifests must say beyond their schemas: the rules of this deployment.

* topics: the Strimzi ``KafkaTopic`` names and partitions are exactly what the worker's settings
  give (``Settings.topics()`` with the ConfigMap's values);
* scaling: workers, KEDA's and the HPA's maximum at most the partition count, KEDA's trigger on
  the worker's own group and topic, and never a ScaledObject and an HPA on one Deployment;
* workloads: resources, a PodDisruptionBudget, a termination grace long enough to commit;
* the Ingress streams SSE (no proxy buffering, long timeouts) to a Service that exists;
* the NetworkPolicies deny by default and let in from outside only to the API;
* Services and ServiceMonitors point at ports that exist;
* Secrets hold placeholders only.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from typing import Any

from processor.settings import Settings
from tests.deploy.schemas import name_of
from tests.deploy.settings_parity import container_env, environ_of, fraudstream_containers
from tests.deploy.tools import Manifest

__all__ = ["ALL_RULES", "check_rules", "check_secret_values"]

WORKER, API = "fraudstream-worker", "fraudstream-api"
PLACEHOLDER = "REPLACE_ME"
# Text that looks like a credential, wherever it appears in k8s/.
SECRET_PATTERNS = (
    re.compile(r"sk-[A-Za-z0-9_-]{20,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"AKIA[0-9A-Z]{16}"),
)
MIN_GRACE_S = 30
SSE_TIMEOUT_S = 600


def _all(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o.get("kind") == kind]


def _one(objects: list[Manifest], kind: str, name: str) -> Manifest | None:
    return next((o for o in _all(objects, kind) if o["metadata"]["name"] == name), None)


def _worker_settings(objects: list[Manifest], template: Manifest | None) -> Settings | None:
    for obj, container in fraudstream_containers(objects):
        if obj["metadata"]["name"] == WORKER:
            env, _ = container_env(objects, container, template)
            with environ_of(env):
                return Settings()
    return None


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels", {})
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def _pod_labels(obj: Manifest) -> dict[str, str]:
    labels: dict[str, str] = obj["spec"]["template"]["metadata"].get("labels", {})
    return labels


def check_topics(objects: list[Manifest], template: Manifest | None) -> list[str]:
    """KafkaTopics = the worker's topics, with its partition counts."""
    settings = _worker_settings(objects, template)
    if settings is None:
        return [f"no Deployment/{WORKER}"]
    wanted = settings.topics()
    have = {
        str(t["spec"].get("topicName", t["metadata"]["name"])): t["spec"].get("partitions")
        for t in _all(objects, "KafkaTopic")
    }
    problems = [f"topic {n} ({p} partitions) has no KafkaTopic" for n, p in wanted.items()
                if n not in have]  # fmt: skip
    problems += [f"KafkaTopic {n} is not a topic of the worker's settings" for n in have
                 if n not in wanted]  # fmt: skip
    problems += [
        f"KafkaTopic {n}: {have[n]} partitions, the worker's settings say {p}"
        for n, p in wanted.items()
        if n in have and have[n] != p
    ]
    return problems


def _targets(objects: list[Manifest]) -> Iterator[tuple[Manifest, str, int | None]]:
    """(autoscaler, target Deployment, its maximum) for every HPA and ScaledObject."""
    for hpa in _all(objects, "HorizontalPodAutoscaler"):
        yield hpa, hpa["spec"]["scaleTargetRef"]["name"], hpa["spec"].get("maxReplicas")
    for so in _all(objects, "ScaledObject"):
        yield so, so["spec"]["scaleTargetRef"]["name"], so["spec"].get("maxReplicaCount", 100)


def check_scaling(objects: list[Manifest], template: Manifest | None) -> list[str]:
    """Worker count within the partitions; one autoscaler per Deployment; KEDA on our group."""
    settings = _worker_settings(objects, template)
    worker = _one(objects, "Deployment", WORKER)
    if settings is None or worker is None:
        return [f"no Deployment/{WORKER}"]
    parts = settings.partitions
    problems: list[str] = []
    if worker["spec"].get("replicas", 1) > parts:
        problems.append(f"{name_of(worker)}: replicas above the {parts} partitions")
    owners: dict[str, list[str]] = {}
    for scaler, target, maximum in _targets(objects):
        owners.setdefault(target, []).append(name_of(scaler))
        if target == WORKER and (maximum or 0) > parts:
            problems.append(f"{name_of(scaler)}: scales the worker to {maximum} > {parts} parts")
    problems += [
        f"Deployment/{target} has two autoscalers: {', '.join(names)}"
        for target, names in owners.items()
        if len(names) > 1
    ]
    for so in _all(objects, "ScaledObject"):
        for trig in so["spec"].get("triggers", []):
            if trig.get("type") != "kafka":
                continue
            meta = trig.get("metadata", {})
            expected = {
                "consumerGroup": settings.group,
                "topic": settings.topic_transactions,
                "bootstrapServers": settings.kafka_bootstrap,
            }
            problems += [
                f"{name_of(so)}: kafka trigger {k} {meta.get(k)!r}, the worker uses {v!r}"
                for k, v in expected.items()
                if meta.get(k) != v
            ]
    return problems


def check_workloads(objects: list[Manifest], template: Manifest | None) -> list[str]:
    """Resources on every container; a PDB for every Deployment; the worker's grace period."""
    problems: list[str] = []
    pdbs = _all(objects, "PodDisruptionBudget")
    for obj in _all(objects, "Deployment") + _all(objects, "StatefulSet"):
        spec = obj["spec"]["template"]["spec"]
        for c in spec.get("containers", []):
            res = c.get("resources", {})
            if not {"cpu", "memory"} <= set(res.get("requests", {})):
                problems.append(f"{name_of(obj)} {c['name']}: no cpu and memory requests")
            if "memory" not in res.get("limits", {}):
                problems.append(f"{name_of(obj)} {c['name']}: no memory limit")
        if obj["kind"] == "Deployment" and not any(
            _selects(p["spec"].get("selector", {}), _pod_labels(obj)) for p in pdbs
        ):
            problems.append(f"{name_of(obj)}: no PodDisruptionBudget selects it")
    worker = _one(objects, "Deployment", WORKER)
    grace = (
        worker["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30) if worker else 0
    )
    settings = _worker_settings(objects, template)
    floor = max(MIN_GRACE_S, 2 * settings.session_timeout_s) if settings else MIN_GRACE_S
    if grace < floor:
        problems.append(f"Deployment/{WORKER}: terminationGracePeriodSeconds {grace} < {floor:g}")
    return problems


def check_ingress(objects: list[Manifest], template: Manifest | None) -> list[str]:
    """The API's Ingress: SSE-safe annotations, a backend Service that exists."""
    ingresses = _all(objects, "Ingress")
    if not ingresses:
        return ["no Ingress for the API"]
    problems: list[str] = []
    services = {s["metadata"]["name"] for s in _all(objects, "Service")}
    for ing in ingresses:
        notes = ing["metadata"].get("annotations", {})
        if notes.get("nginx.ingress.kubernetes.io/proxy-buffering") != "off":
            problems.append(f"{name_of(ing)}: proxy buffering is not off (SSE would stall)")
        for key in ("proxy-read-timeout", "proxy-send-timeout"):
            value = notes.get(f"nginx.ingress.kubernetes.io/{key}", "60")
            if not value.isdigit() or int(value) < SSE_TIMEOUT_S:
                problems.append(f"{name_of(ing)}: {key} {value} < {SSE_TIMEOUT_S} s")
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                backend = path["backend"]["service"]["name"]
                if backend != API or backend not in services:
                    problems.append(f"{name_of(ing)}: routes to {backend}, not Service/{API}")
    return problems


def _from_outside(rule: dict[str, Any]) -> list[str]:
    """The peers of an ingress rule outside this namespace, other than the monitoring one."""
    outside = []
    for peer in rule.get("from", []) or [{}]:
        ns = peer.get("namespaceSelector")
        if "ipBlock" in peer or ns == {} or (peer == {}):
            outside.append("anywhere")
        elif ns is not None:
            name = ns.get("matchLabels", {}).get("kubernetes.io/metadata.name", "?")
            if name != "monitoring":
                outside.append(name)
    return outside


def check_network(objects: list[Manifest], template: Manifest | None) -> list[str]:
    """Default deny in and out; only the API admits peers from outside the namespace."""
    policies = _all(objects, "NetworkPolicy")
    deny = [
        p for p in policies
        if p["spec"].get("podSelector") == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]  # fmt: skip
    problems = [] if deny else ["no default-deny NetworkPolicy (ingress and egress)"]
    for pol in policies:
        selector = pol["spec"].get("podSelector", {})
        is_api = selector.get("matchLabels", {}).get("app.kubernetes.io/name") == API
        for rule in pol["spec"].get("ingress", []):
            outside = _from_outside(rule)
            if outside and not is_api:
                problems.append(f"{name_of(pol)}: admits {', '.join(outside)} to a non-API pod")
    return problems


def check_ports(objects: list[Manifest], template: Manifest | None) -> list[str]:
    """Services select pods and name ports they have; ServiceMonitors select Services' ports."""
    problems: list[str] = []
    workloads = _all(objects, "Deployment") + _all(objects, "StatefulSet")
    services = _all(objects, "Service")
    for svc in services:
        pods = [w for w in workloads if _selects({"matchLabels": svc["spec"]["selector"]},
                                                 _pod_labels(w))]  # fmt: skip
        ports = {p.get("name") for w in pods for c in w["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}  # fmt: skip
        if not pods:
            problems.append(f"{name_of(svc)}: selects no pods")
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            if isinstance(target, str) and target not in ports:
                problems.append(f"{name_of(svc)}: targetPort {target} is not a container port")
    for mon in _all(objects, "ServiceMonitor"):
        chosen = [
            s
            for s in services
            if _selects(mon["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        names = {p.get("name") for s in chosen for p in s["spec"].get("ports", [])}
        if not chosen:
            problems.append(f"{name_of(mon)}: selects no Service")
        for ep in mon["spec"].get("endpoints", []):
            if ep.get("port") not in names:
                problems.append(f"{name_of(mon)}: port {ep.get('port')} is on no selected Service")
    return problems


def _secret_items(secret: Manifest) -> Iterator[tuple[str, str]]:
    yield from ((str(k), str(v)) for k, v in (secret.get("stringData") or {}).items())
    for k, v in (secret.get("data") or {}).items():
        yield str(k), base64.b64decode(str(v)).decode("utf-8", "replace")


def check_secret_values(objects: list[Manifest], template: Manifest | None = None) -> list[str]:
    """Every Secret value is empty or holds the placeholder: no real secret in k8s/."""
    secrets = _all(objects, "Secret") + ([template] if template else [])
    return [
        f"{name_of(s)}: {key} is not a placeholder (empty or containing {PLACEHOLDER})"
        for s in secrets
        for key, value in _secret_items(s)
        if value and PLACEHOLDER not in value
    ]


def scan_for_credentials(texts: dict[str, str]) -> list[str]:
    """Files whose text looks like a credential (API keys, private keys)."""
    return [
        f"{path}: looks like a credential ({pattern.pattern})"
        for path, text in texts.items()
        for pattern in SECRET_PATTERNS
        if pattern.search(text)
    ]


Rule = Callable[[list[Manifest], Manifest | None], list[str]]
ALL_RULES: tuple[Rule, ...] = (
    check_topics,
    check_scaling,
    check_workloads,
    check_ingress,
    check_network,
    check_ports,
    check_secret_values,
)


def check_rules(objects: list[Manifest], template: Manifest | None) -> list[str]:
    """Every rule of this module on one rendered overlay.

    A rule that meets an object its schema check already refused (a string where a number
    goes, a missing field) reports that it could not run instead of stopping the others.
    """
    problems: list[str] = []
    for rule in ALL_RULES:
        try:
            problems += rule(objects, template)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            problems.append(f"{rule.__name__} could not run: {type(exc).__name__}: {exc}")
    return problems
