"""The Synapse module of the module wire: ``servletkit.synapse.ServletkitModule``.

Loaded by Synapse from homeserver.yaml (``servletkit synapse-config`` prints the
entry)::

    modules:
      - module: servletkit.synapse.ServletkitModule
        config:
          host: 127.0.0.1
          port: 8091
          secret: "<[module] secret of servletkit.toml>"

It runs inside Synapse's process and imports only the standard library,
Synapse, Twisted, :mod:`servletkit.wires.module.protocol` and servletkit's hook
values (``import servletkit`` also loads attrs and pluggy), never the
container or its web stack. Config keys, defaults and failure behaviour:
:mod:`servletkit.synapse.settings` and ``docs/module-wire.md``.
"""

from servletkit.synapse.module import ServletkitModule

__all__ = ["ServletkitModule"]
