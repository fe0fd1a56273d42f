"""How ``servletkit dev`` fails: one :class:`DevError` with what failed and the fix."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import httpx


class DevError(Exception):
    """``servletkit dev`` cannot go on; the message says what failed and how to fix it."""


@contextlib.contextmanager
def step(what: str, hint: str) -> Iterator[None]:
    """Turn an OS, HTTP or JSON error raised in the block into a :class:`DevError`.

    The message says ``what`` failed and why, then ``hint`` (the log to read,
    or the fix), so ``servletkit dev`` ends with one message, not a traceback.
    """
    try:
        yield
    except OSError as exc:
        reason = str(exc)
    except httpx.RequestError as exc:
        reason = (f"no answer from {exc.request.method} {exc.request.url} "
                  f"({type(exc).__name__}{f': {exc}' if str(exc) else ''})")
    except json.JSONDecodeError as exc:
        reason = f"the answer is not JSON ({exc})"
    else:
        return
    raise DevError(f"{what} failed: {reason}; {hint}")
