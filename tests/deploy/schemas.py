"""Schema checks: Kubernetes objects against the bundled OpenAPI schemas, custom resources against
the minimal JSON schemas in ``k8s/schemas``, and PromQL through ``promtool``.

Built-in kinds go through ``kubernetes-validate`` in strict mode (an unknown field is an error)
for each Kubernetes version in :data:`KUBERNETES_VERSIONS`. The custom resources (Strimzi
``KafkaTopic``, KEDA ``ScaledObject``, Prometheus Operator ``ServiceMonitor`` and
``PrometheusRule``) have no bundled schema: ``k8s/schemas`` holds one per kind with the fields
the manifests use. A kind with neither is an error, so nothing is let through unchecked.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import yaml

from tests.deploy.tools import Manifest, run_tool, tool

__all__ = [
    "KUBERNETES_VERSIONS",
    "check_promql",
    "check_schemas",
    "dashboard_exprs",
    "name_of",
    "rule_exprs",
]

# The oldest Kubernetes the manifests support (the preStop sleep action is 1.30) and the newest.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
CUSTOM_KINDS = {
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): "kafkatopic.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
}
GRAFANA_RANGE = re.compile(r"\$__(rate_)?interval|\$__range")

# kubernetes-validate reads and parses its schema files (the shared definitions are megabytes)
# again for every object; they never change within a run, so each is parsed once.
if not hasattr(kubernetes_validate.utils.schema_contents, "cache_info"):
    kubernetes_validate.utils.schema_contents = cache(kubernetes_validate.utils.schema_contents)


def name_of(obj: Manifest) -> str:
    """``Kind/name`` of an object, for messages."""
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


@cache
def _custom_schema(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def _custom_problems(obj: Manifest, schema_dir: Path) -> list[str]:
    key = (obj.get("apiVersion"), obj.get("kind"))
    schema = _custom_schema(schema_dir / CUSTOM_KINDS[key])  # type: ignore[index]
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{name_of(obj)}: {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
    ]


def _builtin_problems(obj: Manifest, version: str) -> list[str]:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{name_of(obj)}: no schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(map(str, exc.path)) or "(top)"
        return [f"{name_of(obj)}: Kubernetes {version}: {path}: {exc.message}"]
    return []


def check_schemas(objects: Iterable[Manifest], schema_dir: Path) -> list[str]:
    """Every object against its schema, offline."""
    problems: list[str] = []
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) in CUSTOM_KINDS:
            problems += _custom_problems(obj, schema_dir)
            continue
        for version in KUBERNETES_VERSIONS:
            problems += _builtin_problems(obj, version)
    return problems


def rule_exprs(objects: Iterable[Manifest]) -> list[str]:
    """The expressions of every PrometheusRule's rules."""
    return [
        str(rule["expr"])
        for obj in objects
        if obj.get("kind") == "PrometheusRule"
        for group in obj.get("spec", {}).get("groups", [])
        for rule in group.get("rules", [])
        if "expr" in rule
    ]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every panel query of a Grafana dashboard, Grafana's range variables set to ``5m``."""
    panels = list(dashboard.get("panels", []))
    for panel in list(panels):
        panels += panel.get("panels", [])
    return [
        GRAFANA_RANGE.sub("5m", target["expr"])
        for panel in panels
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def _promtool_rules(groups: list[dict[str, Any]], label: str) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="fraudstream-rules-") as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
        done = run_tool([tool("promtool"), "check", "rules", str(path)])
    if done.returncode == 0:
        return []
    lines = (done.stdout + done.stderr).strip().splitlines()
    return [f"{label}: promtool: {line}" for line in lines if line.strip()]


def check_promql(objects: list[Manifest], dashboard: dict[str, Any] | None) -> list[str]:
    """``promtool check rules`` on each PrometheusRule's spec, and on the dashboard's queries
    (each wrapped in a recording rule, since promtool checks only rule files)."""
    problems: list[str] = []
    for obj in objects:
        if obj.get("kind") == "PrometheusRule":
            problems += _promtool_rules(obj.get("spec", {}).get("groups", []), name_of(obj))
    if dashboard is not None:
        rules = [
            {"record": f"fraudstream:dashboard_query_{n}", "expr": expr}
            for n, expr in enumerate(dashboard_exprs(dashboard))
        ]
        problems += _promtool_rules([{"name": "dashboard", "rules": rules}], "dashboard")
    return problems
