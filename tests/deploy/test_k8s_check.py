"""The deployment checker passes on the repository and fails on a broken copy of it.

Each broken case edits one file of a copy of ``k8s/`` (and the Dockerfile) and runs the whole
checker on the copy, as ``make k8s-check`` does; the rules that need no rendering are also
exercised on altered copies of the rendered objects.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy import rules
from tests.deploy.check import ROOT, Report, load_template, run
from tests.deploy.schemas import CUSTOM_KINDS
from tests.deploy.tools import Manifest


@pytest.fixture(scope="module")
def prod(report: Report) -> list[Manifest]:
    return report.rendered["prod"]


def tree_copy(dest: Path) -> Path:
    """The files the checker reads, copied under ``dest``."""
    shutil.copytree(ROOT / "k8s", dest / "k8s")
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def test_the_repository_passes_every_check(report: Report) -> None:
    assert report.lines() == []
    assert sorted(report.rendered) == ["dev", "prod"]


def test_every_overlay_has_the_whole_shape(report: Report) -> None:
    wanted = {"Deployment": 2, "StatefulSet": 1, "KafkaTopic": 8, "PrometheusRule": 1,
              "ServiceMonitor": 2, "PodDisruptionBudget": 2, "Ingress": 1}  # fmt: skip
    for name, objects in report.rendered.items():
        counts = {kind: sum(o["kind"] == kind for o in objects) for kind in wanted}
        assert counts == wanted, name
    kinds = {o["kind"] for objects in report.rendered.values() for o in objects}
    assert {"ScaledObject", "HorizontalPodAutoscaler", "NetworkPolicy"} <= kinds
    assert {k for _, k in CUSTOM_KINDS} & kinds == {k for _, k in CUSTOM_KINDS}


def test_keda_in_prod_and_the_cpu_hpa_in_dev_never_both(report: Report) -> None:
    def worker_scalers(objects: list[Manifest]) -> list[str]:
        return sorted(o["kind"] for o in objects
                      if o["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
                      and o["spec"]["scaleTargetRef"]["name"] == "fraudstream-worker")  # fmt: skip

    assert worker_scalers(report.rendered["prod"]) == ["ScaledObject"]
    assert worker_scalers(report.rendered["dev"]) == ["HorizontalPodAutoscaler"]


BROKEN = [
    # (file under the copy, text, replacement, what the checker must say)
    ("k8s/base/worker.yaml", "GracePeriodSeconds: 60", "GracePeriodSeconds: sixty",
     "spec/template/spec/terminationGracePeriodSeconds"),
    ("k8s/base/api.yaml", "terminationGracePeriodSeconds: 30", "terminationGracePeriod: 30",
     "Additional properties"),
    ("k8s/base/topics.yaml", "  partitions: 4\n", "  partitionz: 4\n", "KafkaTopic/transactions"),
    ("k8s/overlays/prod/config.yaml", 'FRAUD_PARTITIONS: "12"', 'FRAUD_PARTITIONS: "8"',
     "12 partitions, the worker's settings say 8"),
    ("k8s/observability/prometheusrule.yaml", "> 0.25", "> > 0.25", "promtool"),
    ("k8s/observability/prometheusrule.yaml", "fraudstream_dead_letters_total",
     "fraudstream_dlq_total", "fraudstream_dlq_total is exported by no code"),
    ("k8s/base/config.yaml", "  FRAUD_GROUP: fraudstream\n",
     "  FRAUD_GROUP: fraudstream\n  FRAUD_WORKERS: \"3\"\n", "FRAUD_WORKERS is not a setting"),
    ("k8s/base/secret.yaml", "redis-password: REPLACE_ME", "redis-password: s3cr3t-passw0rd",
     "redis-password is not a placeholder"),
    ("k8s/overlays/dev/kustomization.yaml", "  - namespace.yaml\n", "  - namespaces.yaml\n",
     "kustomize"),
    ("Dockerfile", "USER 10001:10001\n", "", "non-root USER"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "old", "new", "said"), BROKEN, ids=lambda v: str(v)[:24])
def test_a_broken_copy_fails(tmp_path: Path, path: str, old: str, new: str, said: str) -> None:
    root = tree_copy(tmp_path)
    edit(root / path, old, new)
    broken = run(root)
    assert not broken.ok
    assert any(said in line for line in broken.lines()), broken.lines()


def test_the_command_exits_non_zero_on_a_broken_copy(tmp_path: Path) -> None:
    # The unbroken tree passes in-process (the session's report); here the command line's verdict.
    root = tree_copy(tmp_path)
    edit(root / "k8s/base/worker.yaml", "apiVersion: apps/v1", "apiVersion: apps/v9")
    bad = subprocess.run(
        [sys.executable, "-m", "tests.deploy.check", "--root", str(root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Deployment/fraudstream-worker: no schema for apps/v9 Deployment" in bad.stdout
    assert "k8s-check: FAILED" in bad.stdout


def test_two_autoscalers_on_the_worker_fail(prod: list[Manifest]) -> None:
    objects = copy.deepcopy(prod)
    objects.append({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": "extra"},
                    "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "fraudstream-worker"},
                             "maxReplicas": 4}})  # fmt: skip
    found = rules.check_scaling(objects, load_template(ROOT / "k8s"))
    assert any("two autoscalers" in p for p in found), found


def test_more_workers_than_partitions_fail(prod: list[Manifest]) -> None:
    objects = copy.deepcopy(prod)
    find(objects, "ScaledObject", "fraudstream-worker")["spec"]["maxReplicaCount"] = 13
    find(objects, "Deployment", "fraudstream-worker")["spec"]["replicas"] = 20
    found = rules.check_scaling(objects, load_template(ROOT / "k8s"))
    assert len(found) == 2, found


def test_sse_needs_unbuffered_long_lived_proxying(prod: list[Manifest]) -> None:
    objects = copy.deepcopy(prod)
    notes = find(objects, "Ingress", "fraudstream-api")["metadata"]["annotations"]
    notes["nginx.ingress.kubernetes.io/proxy-buffering"] = "on"
    del notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]
    assert len(rules.check_ingress(objects, None)) == 2


def test_only_the_api_is_reachable_from_outside(prod: list[Manifest]) -> None:
    assert rules.check_network(prod, None) == []
    objects = copy.deepcopy(prod)
    worker = find(objects, "NetworkPolicy", "fraudstream-worker")
    worker["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    assert rules.check_network(objects, None) == [
        "NetworkPolicy/fraudstream-worker: admits anywhere to a non-API pod"
    ]
    deny = [o for o in objects if o["metadata"]["name"] != "fraudstream-default-deny"]
    assert "no default-deny" in rules.check_network(deny, None)[0]


def test_a_pod_without_budget_or_limits_fails(prod: list[Manifest]) -> None:
    objects = [o for o in copy.deepcopy(prod) if o["kind"] != "PodDisruptionBudget"]
    api = find(objects, "Deployment", "fraudstream-api")
    del api["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    found = rules.check_workloads(objects, None)
    assert sum("no PodDisruptionBudget" in p for p in found) == 2
    assert any("api: no memory limit" in p for p in found)


def test_secret_values_are_placeholders_and_no_credential_is_in_k8s() -> None:
    template = load_template(ROOT / "k8s")
    assert template is not None
    assert rules.check_secret_values([], template) == []
    assert set(template["stringData"]) >= {"FRAUD_REDIS_URL", "redis-password", "api-tokens"}
    texts = {str(p): p.read_text("utf-8") for p in (ROOT / "k8s").rglob("*") if p.is_file()}
    assert rules.scan_for_credentials(texts) == []
    assert rules.scan_for_credentials({"x": "OPENAI_API_KEY: sk-" + "a1B2" * 8}) != []
