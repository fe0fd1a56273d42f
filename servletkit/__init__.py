"""servletkit: servlets for Matrix.

The public plugin API. Everything a plugin author imports comes from here::

    from servletkit import hookimpl, Allow, Modify, Veto, Event, PluginContext
"""

from servletkit.hooks.context import PluginContext, PolicyServerInfo
from servletkit.hooks.decisions import Allow, Decision, Modify, Veto
from servletkit.hooks.events import Ephemeral, Event
from servletkit.hooks.markers import hookimpl, hookspec

__version__ = "0.1.0"

__all__ = [
    "Allow",
    "Decision",
    "Ephemeral",
    "Event",
    "Modify",
    "PluginContext",
    "PolicyServerInfo",
    "Veto",
    "__version__",
    "hookimpl",
    "hookspec",
]
