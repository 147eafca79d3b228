"""One run of the whole deployment check per test session, shared by the test modules."""

from __future__ import annotations

import pytest

from tests.deploy.check import ROOT, Report, run


@pytest.fixture(scope="session")
def report() -> Report:
    """The checker's report on the repository itself (its rendered overlays included)."""
    return run(ROOT)
