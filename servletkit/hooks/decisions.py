"""What an interception hook may answer: :class:`Allow`, :class:`Modify` or :class:`Veto`.

Returning ``None`` means "no opinion": the next plugin decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen(slots=True)
class Allow:
    """Let the action through unchanged. Later plugins still run and may veto."""


@attrs.frozen(slots=True)
class Modify:
    """Let the event through with ``content`` as its new content.

    Later plugins see the modified event. Only hooks that receive an event can
    be answered with ``Modify``; elsewhere it is treated as a plugin error.
    """

    content: Mapping[str, Any]


@attrs.frozen(slots=True)
class Veto:
    """Refuse the action. The chain stops here.

    ``reason`` is shown to the user whose action was refused; ``errcode`` is the
    Matrix error code they receive (``M_FORBIDDEN`` unless a more precise one fits).
    """

    reason: str
    errcode: str = "M_FORBIDDEN"


Decision = Allow | Modify | Veto
