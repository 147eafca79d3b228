"""The Dockerfile's rules: multi-stage, pinned slim Python 3.11, non-root, HEALTHCHECK, no build
tools in the final stage, the ``fraudstream`` entrypoint; and hadolint's verdict."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.deploy.check import ROOT
from tests.deploy.dockerfile import check_dockerfile, hadolint, parse_stages

DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"


def variant(tmp_path: Path, old: str, new: str) -> Path:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert old in text, old
    path = tmp_path / "Dockerfile"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def test_the_dockerfile_keeps_every_rule() -> None:
    assert check_dockerfile(DOCKERFILE, PYPROJECT) == []
    assert hadolint(DOCKERFILE) == []


def test_stages_and_the_final_image() -> None:
    stages = parse_stages(DOCKERFILE.read_text(encoding="utf-8"))
    assert [s.name for s in stages] == ["build", "runtime"]
    assert all(re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", s.base) for s in stages)
    final = stages[-1]
    assert final.of("USER") == ["10001:10001"]
    assert final.of("RUN") and not any("apt-get install" in r for r in final.of("RUN"))
    assert json.loads(final.of("ENTRYPOINT")[0]) == ["fraudstream"]
    assert any("--from=build /opt/fraudstream" in c for c in final.of("COPY"))


def test_dockerignore_keeps_data_and_environments_out() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert lines[lines.index("*") :][:1] == ["*"]
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "models", "processor", "api", "replay"}


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ("USER 10001:10001", "USER root", "non-root USER"),
        ("HEALTHCHECK --interval", "# HEALTHCHECK --interval", "no HEALTHCHECK"),
        ("python:3.11.14-slim-bookworm", "python:3.11", "not a pinned"),
        ("python:3.11.14-slim-bookworm", "python:latest", "not a pinned"),
        (
            "RUN groupadd",
            "RUN apt-get update && apt-get install -y --no-install-recommends gcc "
            "&& rm -rf /var/lib/apt/lists/*\nRUN groupadd",
            "build tools (gcc)",
        ),
        ('ENTRYPOINT ["fraudstream"]', 'ENTRYPOINT ["fraudstream-cli"]', "not a console script"),
        ("FROM ${PYTHON_IMAGE} AS runtime", "FROM build AS runtime", "FROM build, with its build"),
        ("COPY --from=build /opt/fraudstream", "COPY --from=build /src", "copies the build tree"),
    ],
)
def test_a_broken_rule_fails(tmp_path: Path, old: str, new: str, said: str) -> None:
    found = check_dockerfile(variant(tmp_path, old, new), PYPROJECT)
    assert any(said in p for p in found), found


def test_one_stage_fails(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    single = tmp_path / "Dockerfile"
    single.write_text(text[text.index("FROM ${PYTHON_IMAGE} AS runtime") :], encoding="utf-8")
    single.write_text("ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm\n" + single.read_text())
    assert any("one stage" in p for p in check_dockerfile(single, PYPROJECT))


def test_hadolint_flags_what_it_should(tmp_path: Path) -> None:
    found = hadolint(variant(tmp_path, "WORKDIR /var/lib/fraudstream", "WORKDIR var/lib"))
    assert any("DL3000" in p for p in found), found
