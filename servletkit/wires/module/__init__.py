"""The module wire: Synapse's module callbacks, forwarded over one framed TCP connection.

:mod:`.protocol` is the framing both sides speak (stdlib only: the Synapse side
imports it); :mod:`.listener` is the container's end. The Synapse side is
:mod:`servletkit.synapse`.
"""
