"""Schemathesis against the live server's own /openapi.json: whatever it is sent, no 5xx.

Every operation but the two endless SSE streams gets a bounded number of generated requests,
valid ones and invalid ones, as an admin, so they get past auth to the handlers. (Schemathesis'
pytest plugin does not run on this pytest, so its strategies drive Hypothesis directly.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.integration.api.conftest import LiveApi

EXAMPLES = 50


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_no_request_makes_the_server_fail(api: LiveApi) -> None:
    schema = schemathesis.openapi.from_url(api.url("/openapi.json"), timeout=10)
    operations = [r.ok() for r in schema.exclude(path_regex=r"/stream$").get_all_operations()]
    assert len(operations) >= 7, [o.label for o in operations]
    headers = api.headers("admin")
    calls = 0

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                nonlocal calls
                response = case.call(headers={**(case.headers or {}), **headers}, timeout=10)
                calls += 1
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} {case.query} {case.body!r}: "
                    f"{response.status_code} {response.text[:300]}"
                )

            try:
                run()
            except Unsatisfiable:
                # No parameters and no body: nothing to make invalid.
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert calls >= len(operations) * 5
