"""The policy wire: servletkit as a Matrix room's policy server (MSC4284).

:mod:`~servletkit.wires.policy.wire` is the wire; the other modules are its
parts: the PDU format (``pdu``), keys (``keys``), X-Matrix (``xmatrix``),
federation requests and caller keys (``federation``), joining rooms
(``join``), the rooms served (``rooms``), the verdicts (``verdicts``) and the
HTTP endpoints (``endpoints``).
"""
