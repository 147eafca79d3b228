"""``make k8s-check``: render every overlay, validate it, check the image and the settings.

    python -m tests.deploy.check              # the repository's k8s/ and Dockerfile
    python -m tests.deploy.check --root DIR   # another tree with the same layout (the tests'
                                              # broken copies)

For each overlay under ``k8s/overlays``: ``kubectl kustomize``; every object against the
Kubernetes schemas (two versions) or, for custom resources, ``k8s/schemas``; the PrometheusRule
and the Grafana dashboard's queries through ``promtool`` and against the series the code
exports; settings parity; the deployment rules of :mod:`tests.deploy.rules`. Then the Dockerfile's
rules and ``hadolint``, and a scan of ``k8s/`` for anything that looks like a credential. Prints
one line per problem and exits 1 if there is any; a missing tool is a problem, not a skip.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.dockerfile import check_dockerfile, hadolint
from tests.deploy.metric_names import check_metric_names, exported_series
from tests.deploy.rules import check_rules, scan_for_credentials
from tests.deploy.schemas import check_promql, check_schemas, dashboard_exprs, rule_exprs
from tests.deploy.settings_parity import check_settings_parity
from tests.deploy.tools import Manifest, ToolMissing, overlays, render

__all__ = ["ROOT", "Report", "check_overlay", "main", "run"]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = Path("observability") / "fraudstream-dashboard.json"


@dataclass
class Report:
    """Problems by where they were found; empty means every check passed."""

    problems: dict[str, list[str]] = field(default_factory=dict)
    rendered: dict[str, list[Manifest]] = field(default_factory=dict)

    def add(self, where: str, found: list[str]) -> None:
        if found:
            self.problems.setdefault(where, []).extend(found)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        return [f"{where}: {p}" for where, found in self.problems.items() for p in found]


def load_template(k8s_dir: Path) -> Manifest | None:
    """The Secret template of the base (what the keys are, when an overlay leaves it out)."""
    path = k8s_dir / "base" / "secret.yaml"
    if not path.is_file():
        return None
    docs: list[Manifest] = [d for d in yaml.safe_load_all(path.read_text("utf-8")) if d]
    return next((d for d in docs if d.get("kind") == "Secret"), None)


def check_overlay(
    objects: list[Manifest],
    k8s_dir: Path,
    dashboard: dict[str, Any] | None,
    exported: frozenset[str],
) -> list[str]:
    """Every check of one rendered overlay."""
    template = load_template(k8s_dir)
    exprs = rule_exprs(objects)
    problems = check_schemas(objects, k8s_dir / "schemas")
    problems += check_promql(objects, dashboard)
    problems += check_metric_names(exprs, "PrometheusRule", exported)
    if not exprs:
        problems.append("no PrometheusRule with alerts")
    problems += check_settings_parity(objects, template)
    problems += check_rules(objects, template)
    return problems


def _load_dashboard(k8s_dir: Path) -> tuple[dict[str, Any] | None, list[str]]:
    path = k8s_dir / DASHBOARD
    try:
        return json.loads(path.read_text(encoding="utf-8")), []
    except (OSError, ValueError) as exc:
        return None, [f"{path}: {exc}"]


def run(root: Path = ROOT) -> Report:
    """Every check on the tree at ``root`` (``k8s/``, ``Dockerfile``, ``pyproject.toml``)."""
    report = Report()
    k8s_dir = root / "k8s"
    exported = exported_series()
    dashboard, problems = _load_dashboard(k8s_dir)
    report.add("dashboard", problems)
    if dashboard is not None:
        report.add("dashboard", check_metric_names(dashboard_exprs(dashboard), "panel", exported))
    for overlay in overlays(k8s_dir):
        where = f"overlays/{overlay.name}"
        try:
            objects = render(overlay)
            report.rendered[overlay.name] = objects
            report.add(where, check_overlay(objects, k8s_dir, dashboard, exported))
        except (ValueError, ToolMissing) as exc:
            report.add(where, [str(exc)])
    if not report.rendered and "overlays" not in report.problems:
        report.add("overlays", ["no overlay rendered"])
    try:
        report.add("Dockerfile", check_dockerfile(root / "Dockerfile", root / "pyproject.toml"))
        report.add("Dockerfile", hadolint(root / "Dockerfile"))
    except ToolMissing as exc:
        report.add("Dockerfile", [str(exc)])
    texts = {str(p.relative_to(root)): p.read_text("utf-8", "replace")
             for p in sorted(k8s_dir.rglob("*")) if p.is_file()}  # fmt: skip
    report.add("k8s", scan_for_credentials(texts))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the image and the Kubernetes manifests.")
    parser.add_argument("--root", type=Path, default=ROOT, help="tree to check (default: repo)")
    args = parser.parse_args(argv)
    report = run(args.root.resolve())
    for line in report.lines():
        print(line)
    rendered = ", ".join(f"{k} ({len(v)} objects)" for k, v in report.rendered.items())
    print(f"k8s-check: {'ok' if report.ok else 'FAILED'}; rendered {rendered or 'nothing'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
