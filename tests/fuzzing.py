"""What the property-based (hypothesis) tests share: their fixed budget and JSON strategy.

``SERVLETKIT_FUZZ_EXAMPLES`` (100 by default, as CI runs it) is the number of examples
per test; derandomized, so CI runs the same cases every time.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("SERVLETKIT_FUZZ_EXAMPLES", "100"))
BUDGET = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture,
                                         HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                  max_size=4),
    max_leaves=20,
)
"""Any JSON value, small."""
