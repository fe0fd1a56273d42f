"""A real Synapse on loopback for tests: re-exported from the container's embedded Synapse.

The implementation lives in :mod:`servletkit.dev.embedded_synapse`
(``servletkit dev`` runs the same homeserver); tests import it from here.
"""

from servletkit.dev.embedded_synapse import (
    SynapseError,
    SynapseServer,
    free_port,
    homeserver_config,
    register_user,
    start_synapse,
)

__all__ = ["SynapseError", "SynapseServer", "free_port", "homeserver_config", "register_user",
           "start_synapse"]
