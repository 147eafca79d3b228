"""The image's rules, read from the ``Dockerfile`` (no Docker daemon needed), plus ``hadolint``.

A multi-stage build on a pinned slim Python 3.11 base; the final stage runs as a non-root user,
has a HEALTHCHECK, carries no compiler or build tools, and its entrypoint is the ``fraudstream``
console script whose commands the manifests run.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy.tools import run_tool, tool

__all__ = ["Stage", "check_dockerfile", "hadolint", "parse_stages"]

BUILD_TOOLS = re.compile(
    r"\b(build-essential|gcc|g\+\+|clang|make|cmake|cargo|rustc|[a-z0-9.+-]+-dev)\b"
)
PINNED_PYTHON = re.compile(r"^python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?$")
ROOT_USERS = {"0", "root", "0:0", "root:root"}


@dataclass
class Stage:
    """One ``FROM`` ... up to the next ``FROM``: its base and its instructions."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def of(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def _logical_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def parse_stages(text: str) -> list[Stage]:
    """The stages of a Dockerfile, ``ARG`` defaults before the first ``FROM`` substituted."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages and "=" in rest:
            key, value = rest.split("=", 1)
            args[key.strip()] = value.strip().strip('"')
        elif keyword == "FROM":
            words = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), rest)
            parts = [w for w in words.split() if not w.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def _entrypoint(stage: Stage) -> list[str]:
    entry = stage.of("ENTRYPOINT")
    if not entry:
        return []
    text = entry[-1]
    parsed = json.loads(text) if text.startswith("[") else text.split()
    return [str(p) for p in parsed]


def check_dockerfile(path: Path, pyproject: Path) -> list[str]:
    """The rules above; each problem one line."""
    stages = parse_stages(path.read_text(encoding="utf-8"))
    if not stages:
        return [f"{path}: no FROM"]
    problems: list[str] = []
    if len(stages) < 2:
        problems.append(f"{path}: one stage; build tools would stay in the image")
    for stage in stages:
        known = {s.name for s in stages if s.name}
        if stage.base not in known and not PINNED_PYTHON.match(stage.base):
            problems.append(f"{path}: base {stage.base} is not a pinned python:3.11.N-slim")
    final = stages[-1]
    if final.base in {s.name for s in stages[:-1]}:
        problems.append(f"{path}: the final stage starts FROM {final.base}, with its build tools")
    users = final.of("USER")
    if not users or users[-1].strip() in ROOT_USERS:
        problems.append(f"{path}: the final stage does not switch to a non-root USER")
    if not final.of("HEALTHCHECK") or final.of("HEALTHCHECK")[-1].upper().startswith("NONE"):
        problems.append(f"{path}: the final stage has no HEALTHCHECK")
    for run in final.of("RUN"):
        found = BUILD_TOOLS.search(run)
        if found:
            problems.append(f"{path}: the final stage installs build tools ({found.group(0)})")
    copied = " ".join(final.of("COPY"))
    if "--from=" in copied and "/src" in copied:
        problems.append(f"{path}: the final stage copies the build tree, not the virtualenv")
    entry = _entrypoint(final)
    scripts = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["scripts"]
    if not entry or entry[0] not in scripts:
        problems.append(f"{path}: ENTRYPOINT {entry} is not a console script of {pyproject.name}")
    return problems


def hadolint(path: Path) -> list[str]:
    """``hadolint`` on the Dockerfile (its inline ignores apply); warnings count as failures."""
    done = run_tool([tool("hadolint"), "--no-color", "--failure-threshold", "warning", str(path)])
    if done.returncode == 0:
        return []
    return [f"hadolint: {line}" for line in (done.stdout + done.stderr).splitlines() if line]
