"""A Synapse module that registers the callbacks ServletkitModule uses and answers in-process.

The floor for ``module_wire_latency.py``: what registering the callbacks costs
Synapse with no forwarding at all.
"""

from typing import Any

from synapse.module_api import NOT_SPAM, ModuleApi


class NoopModule:
    """Allows everything, in-process."""

    def __init__(self, config: Any, api: ModuleApi) -> None:
        api.register_third_party_rules_callbacks(check_event_allowed=self.check_event_allowed)
        api.register_spam_checker_callbacks(
            check_event_for_spam=self.allow,
            user_may_join_room=self.allow,
            user_may_invite=self.allow,
            user_may_create_room=self.allow,
            check_login_for_spam=self.allow,
        )

    async def check_event_allowed(self, event: Any, state_events: Any) -> tuple[bool, None]:
        """Allow the event unchanged."""
        return True, None

    async def allow(self, *args: Any, **kwargs: Any) -> str:
        """Not spam."""
        return NOT_SPAM
