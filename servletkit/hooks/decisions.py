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
    ``content`` must be a mapping (a ``TypeError`` otherwise, raised where the
    plugin builds the decision).
    """

    content: Mapping[str, Any] = attrs.field(
        validator=attrs.validators.instance_of(Mapping)  # type: ignore[type-abstract]
    )


@attrs.frozen(slots=True)
class Veto:
    """Refuse the action. The chain stops here.

    ``reason`` is shown to the user whose action was refused; ``errcode`` is the
    Matrix error code they receive (``M_FORBIDDEN`` unless a more precise one fits).
    Both must be strings, the errcode in capitals (``M_...``, or namespaced like
    ``ORG.EXAMPLE.NOT_HERE``) (a ``TypeError``
    or ``ValueError`` otherwise, raised where the plugin builds the decision).
    """

    reason: str = attrs.field(validator=attrs.validators.instance_of(str))
    errcode: str = attrs.field(
        default="M_FORBIDDEN",
        validator=[attrs.validators.instance_of(str),
                   attrs.validators.matches_re(r"[A-Z][A-Z0-9_.]*")],
    )


Decision = Allow | Modify | Veto
