"""The plugin author's kit: run a plugin's hooks through the real dispatcher, without a server.

::

    from servletkit.testing import PluginRunner, assert_vetoed, message

    async def test_it_vetoes_spam():
        async with PluginRunner.start(my_plugin, {"words": ["spam"]}) as run:
            assert_vetoed(await run.send(message("buy spam")), reason="spam")

Under pytest the ``plugin_runner`` fixture does the starting and stopping
(:mod:`servletkit.testing.pytest_plugin`). Each runner has a container of its
own, so its plugin's ``context.store`` starts empty in every test.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import attrs
import httpx

from servletkit.container.app import build_app
from servletkit.container.plugin_routes import PREFIX
from servletkit.container.runtime import Container
from servletkit.hooks._chain import Outcome
from servletkit.hooks.context import PluginContext
from servletkit.hooks.decisions import Allow, Decision, Modify, Veto
from servletkit.hooks.events import Event
from servletkit.store import PluginStore
from servletkit.testing.factories import invite, join, message, state

__all__ = ["HookResult", "PluginRunner", "RunnerFactory", "assert_allowed", "assert_modified",
           "assert_vetoed",
           "invite", "join", "message", "plugin_client", "state"]


@attrs.frozen
class HookResult:
    """What an interception hook answered: the chain's :class:`Outcome` and what it was asked."""

    hook: str
    args: tuple[Any, ...]
    outcome: Outcome

    @property
    def decision(self) -> Decision | None:
        """The combined decision (``None``: no plugin had an opinion)."""
        return self.outcome.decision

    @property
    def vetoed(self) -> bool:
        """Whether the chain ended in a Veto."""
        return self.outcome.vetoed

    def describe(self) -> str:
        """The hook, its arguments (events as JSON) and the answer, for a failed assertion."""
        lines = [f"hook:     {self.hook}"]
        for arg in self.args:
            if isinstance(arg, Event):
                lines.append("event:    " + json.dumps(_event_json(arg), indent=2, default=repr)
                             .replace("\n", "\n          "))
            else:
                lines.append(f"argument: {arg!r}")
        lines.append(f"answer:   {self.outcome.decision!r} (decided by {self.outcome.decided_by})")
        lines.extend(f"failure:  {failure.plugin} {failure.kind}: {failure.detail}"
                     for failure in self.outcome.failures)
        return "\n".join(lines)


def _event_json(event: Event) -> dict[str, Any]:
    return {**event.to_json(), "(wire)": event.wire, "(stage)": event.stage}


def _check(result: HookResult, ok: bool, expected: str, allow_failures: bool) -> None:
    __tracebackhide__ = True
    if not allow_failures and result.outcome.failures:
        raise AssertionError(f"expected {expected}, but a plugin failed\n{result.describe()}")
    if not ok:
        raise AssertionError(f"expected {expected}\n{result.describe()}")


def assert_vetoed(result: HookResult, reason: str | None = None, errcode: str | None = None,
                  *, allow_failures: bool = False) -> Veto:
    """Assert the hook vetoed (``reason``: a part of the Veto's reason); return the Veto.

    A plugin that raised or overran fails the assertion too, unless ``allow_failures``.
    """
    __tracebackhide__ = True
    veto = result.decision
    ok = isinstance(veto, Veto) and (reason is None or reason in veto.reason) and (
        errcode is None or veto.errcode == errcode)
    wanted = "a Veto" + (f" whose reason contains {reason!r}" if reason else "") + (
        f" with errcode {errcode}" if errcode else "")
    _check(result, ok, wanted, allow_failures)
    assert isinstance(veto, Veto)
    return veto


def assert_allowed(result: HookResult, *, explicitly: bool = False,
                   allow_failures: bool = False) -> None:
    """Assert the action goes through unchanged: ``Allow()`` or no opinion (``explicitly``:
    ``Allow()`` only). A plugin failure fails it too, unless ``allow_failures``."""
    __tracebackhide__ = True
    decision = result.decision
    ok = isinstance(decision, Allow) or (decision is None and not explicitly)
    _check(result, ok, "Allow()" if explicitly else "Allow() or no opinion", allow_failures)


def assert_modified(result: HookResult, content: Mapping[str, Any] | None = None,
                    *, allow_failures: bool = False) -> Mapping[str, Any]:
    """Assert the hook modified the event (to ``content``, if given); return the new content."""
    __tracebackhide__ = True
    decision = result.decision
    ok = isinstance(decision, Modify) and (content is None or dict(decision.content) == content)
    _check(result, ok, "a Modify" + (f" to {content!r}" if content is not None else ""),
           allow_failures)
    assert isinstance(decision, Modify)
    return decision.content


def plugin_client(container: Container, name: str, *,
                  client: tuple[str, int] = ("127.0.0.1", 40000)) -> httpx.AsyncClient:
    """An HTTP client of plugin ``name``'s routes (``servlet_routes``) in ``container``.

    No server: requests go to the container's app in process, from ``client``
    (host, port), and answer as ``servletkit run`` would (Matrix JSON errors, a
    500 for an exception). Relative URLs are under the plugin's prefix::

        async with plugin_client(container, "github") as http:
            assert (await http.get("/status")).status_code == 200
    """
    transport = httpx.ASGITransport(app=build_app(container, []), client=client,
                                    raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport,
                             base_url=f"http://servletkit{PREFIX}/{name}/")


@attrs.define
class PluginRunner:
    """One plugin in a started container of its own, with helpers to call its hooks."""

    name: str
    container: Container

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, plugin: Any, config: Mapping[str, Any] | None = None, *,
                    name: str = "plugin",
                    container_config: Mapping[str, Any] | None = None,
                    ) -> AsyncIterator[PluginRunner]:
        """Start ``plugin`` (a module or object) as ``name`` with its config table ``config``.

        ``container_config`` is the rest of a parsed ``servletkit.toml``. Raises if
        the plugin fails to load or ``servlet_init`` raises.
        """
        from servletkit.testing import running_container

        settings = dict(container_config or {})
        settings["plugins"] = {**settings.get("plugins", {}), name: dict(config or {})}
        async with running_container({name: plugin}, settings) as container:
            yield cls(name, container)

    @property
    def context(self) -> PluginContext:
        """The plugin's context (its config, log, store)."""
        return self.container.make_context(self.name, self._options())

    @property
    def store(self) -> PluginStore:
        """The plugin's own store, as ``context.store`` (methods are awaited)."""
        return PluginStore(self.container.store, self.name)

    def _options(self) -> Mapping[str, Any]:
        table = self.container.config.plugin(self.name)
        return table.options if table else {}

    def http(self) -> httpx.AsyncClient:
        """An HTTP client of the plugin's routes (see :func:`plugin_client`)::

            async with run.http() as http:
                response = await http.get("status")
        """
        return plugin_client(self.container, self.name)

    async def intercept(self, hook: str, *args: Any) -> HookResult:
        """Run interception ``hook`` with ``args`` (``context`` aside)."""
        return HookResult(hook, args, await self.container.dispatcher.intercept(hook, *args))

    async def send(self, event: Event) -> HookResult:
        """Run ``on_send_event``."""
        return await self.intercept("on_send_event", event)

    async def join_room(self, user_id: str, room_id: str) -> HookResult:
        """Run ``on_join_room``."""
        return await self.intercept("on_join_room", user_id, room_id)

    async def invite(self, inviter_id: str, invitee_id: str, room_id: str) -> HookResult:
        """Run ``on_invite``."""
        return await self.intercept("on_invite", inviter_id, invitee_id, room_id)

    async def observe(self, hook: str, *args: Any) -> None:
        """Run observation ``hook``; raise if the plugin failed (observation failures are
        otherwise only logged)."""
        failures = await self.container.dispatcher.observe(hook, *args)
        if failures:
            raise AssertionError("\n".join(f"{f.plugin} failed in {hook}: {f.kind}: {f.detail}"
                                           for f in failures))

    async def query(self, hook: str, *args: Any) -> Any:
        """Ask query ``hook``; the plugin's answer (``None`` if it gave none)."""
        _, answer = await self.container.dispatcher.first_answer(hook, *args)
        return answer


RunnerFactory = Callable[..., Awaitable[PluginRunner]]
"""The type of the ``plugin_runner`` fixture: ``await plugin_runner(plugin, config, name=...)``."""
