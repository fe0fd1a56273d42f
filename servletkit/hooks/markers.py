"""The pluggy markers of the ``servletkit`` project.

Plugins decorate their hook implementations with :data:`hookimpl`; the hook
specifications in :mod:`servletkit.hooks.specs` use :data:`hookspec`.
"""

from typing import Final

import pluggy

PROJECT_NAME: Final = "servletkit"

hookspec: Final = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl: Final = pluggy.HookimplMarker(PROJECT_NAME)
