"""What the property-based tests (hypothesis) of every wire share: the budget, the client
that calls an app from synchronous hypothesis tests, the check of one answer, and JSON.

The budget is fixed per endpoint: ``SERVLETKIT_FUZZ_EXAMPLES`` (100 by default, as CI
runs it); a longer run sets it higher (``SERVLETKIT_FUZZ_EXAMPLES=5000 .venv/bin/pytest
-s tests/appservice/test_properties.py tests/policy/test_properties.py``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from typing import Any

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("SERVLETKIT_FUZZ_EXAMPLES", "100"))
BUDGET = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.too_slow])
ANSWER_WITHIN_S = 10.0


class Client:
    """A started container's app, called from synchronous hypothesis tests on one loop."""

    def __init__(self, runner: asyncio.Runner, http: httpx.AsyncClient) -> None:
        self.runner, self.http = runner, http

    def __getattr__(self, method: str) -> Any:
        call = getattr(self.http, method)
        return lambda *args, **kwargs: self.runner.run(call(*args, **kwargs))


def check(cases: collections.Counter[str], kind: str, send: Any) -> httpx.Response:
    """Send one request (``send()``), counted in ``cases``; its answer must be a Matrix
    answer (never a 5xx nor a redirect; an error is JSON with an errcode), in time."""
    cases[kind] += 1
    started = time.monotonic()
    answer: httpx.Response = send()
    assert time.monotonic() - started < ANSWER_WITHIN_S
    assert answer.status_code < 500 and not 300 <= answer.status_code < 400, answer.text
    if answer.status_code >= 400:
        assert answer.headers["content-type"].startswith("application/json"), answer.text
        assert isinstance(answer.json().get("errcode"), str), answer.text
    return answer


def _json(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
            st.text(max_size=10), inner, max_size=4),
        max_leaves=20,
    )


json_values = _json(st.none() | st.booleans() | st.integers() | st.text(max_size=20)
                    | st.floats(allow_nan=False, allow_infinity=False))
"""Any JSON value."""
canonical_json_values = _json(st.none() | st.booleans() | st.text(max_size=20)
                              | st.integers(-(2**53) + 1, 2**53 - 1))
"""JSON a Matrix server can sign: Matrix's canonical JSON has no floats and no integers
beyond 2^53."""
