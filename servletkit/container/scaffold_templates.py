"""The text of a ``servletkit new`` scaffold (see :mod:`servletkit.container.scaffold`).

``MODULE`` and ``NAME`` in a template are replaced by the plugin's module and
distribution names. ``BODIES`` are the hooks' starting points (after the
docstring), ``HOOK_TESTS`` a test of each starting point.
"""

from __future__ import annotations

from typing import Final

PYPROJECT: Final = '''\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "NAME"
version = "0.1.0"
description = "A servletkit plugin"
requires-python = ">=3.11"
dependencies = ["servletkit"]

[project.optional-dependencies]
test = ["pytest>=8", "pytest-asyncio>=0.24", "ruff>=0.6"]

# How the container finds the plugin: plugin name = "module" (or "module:Class").
[project.entry-points."servletkit.plugins"]
MODULE = "MODULE"

[tool.setuptools.packages.find]
include = ["MODULE*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"

[tool.ruff]
line-length = 100
target-version = "py311"

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP", "SIM", "RUF", "ASYNC", "PT"]
'''

README: Final = '''\
# NAME

A [servletkit](https://github.com/servletkit/servletkit) plugin (hooks: HOOKS).
Its code is in `MODULE/__init__.py`; each hook is a commented starting point.

## Test

```bash
pip install -e '.[test]'
pytest
ruff check .
```

The tests (`tests/test_MODULE.py`) run the hooks through servletkit's real
dispatcher, with the plugin's config table and a store of each test's own, and
no homeserver.

## Run it against a real homeserver

Installed in the same environment as servletkit (`pip install -e .`), the
plugin is found through its `servletkit.plugins` entry point:

```bash
servletkit dev
```

starts a local Synapse wired to the container; log in with any Matrix client
(the command prints the URL and a test account) and watch the plugin's
`context.log` lines in the terminal. Edits to the code are reloaded.
Its config goes in `servletkit.toml`:

```toml
[plugins.MODULE]
blocked_words = ["spam"]
```

## Deploy and reload

Into a running container, without restarting it:

```bash
servletkit deploy .          # pip-installs this folder into the container's environment
servletkit reload MODULE     # after changing the code: calls in flight finish on the old code
servletkit undeploy MODULE   # drain, destroy and unload it
```

Keep what must survive a reload or restart in `context.store` (awaited:
`await context.store.get(key)`), not in module globals: a reload imports the
module afresh. Background tasks started in `servlet_init` must stop in
`servlet_destroy`.
'''

BODIES: Final = {
    "servlet_init": '''\
    # Open connections and start background tasks here; raising fails the plugin.
    context.log.info("%s starting with config %s", context.name, dict(context.config))
''',
    "servlet_destroy": '''\
    # Release what servlet_init acquired (stop tasks, close connections).
    context.log.info("%s stopping", context.name)
''',
    "servlet_routes": '''\
    # HTTP routes under /_servletkit/plugins/<plugin name>/ on the [server] listener
    # (provisioning APIs, webhooks); None for none. No token is checked: guard them yourself.
    async def greeting(request: Request) -> JSONResponse:
        return JSONResponse({"greeting": context.config.get("greeting", "hello")})

    return [Route("/greeting", greeting, methods=["GET"])]
''',
    "on_send_event": '''\
    # Answer Veto(reason) to refuse the event, Modify(content={...}) to change its
    # content (before it is stored), Allow() to approve it, or None for no opinion.
    body = event.content.get("body")
    if event.type == "m.room.message" and isinstance(body, str):
        for word in context.config.get("blocked_words", []):
            if word.lower() in body.lower():
                context.log.info("vetoed %s's message in %s", event.sender, event.room_id)
                return Veto(f"the word {word!r} is not allowed here")
    return None
''',
    "on_join_room": '''\
    # Veto(reason) refuses the join; Allow() or None lets it go on.
    if room_id in context.config.get("closed_rooms", []):
        return Veto("this room is closed")
    return None
''',
    "on_invite": '''\
    # Veto(reason) refuses the invite; Allow() or None lets it go on.
    if invitee_id in context.config.get("do_not_invite", []):
        return Veto(f"{invitee_id} does not take invites")
    return None
''',
    "on_create_room": '''\
    # request is the /createRoom body; Veto(reason) refuses, Allow() or None lets it go on.
    if request.get("preset") in context.config.get("forbidden_presets", []):
        return Veto("rooms of this kind cannot be created here")
    return None
''',
    "on_connect_event_stream": '''\
    # On the module wire a Veto refuses the login; Allow() or None lets it go on.
    if user_id in context.config.get("banned_users", []):
        return Veto("this account may not log in")
    return None
''',
    "on_stored_event": '''\
    # The event is stored already: relay it, count it, react to it. The store is
    # durable and its methods are awaited.
    if context.store is not None:
        seen = await context.store.get("stored_events", 0)
        await context.store.put("stored_events", seen + 1)
''',
    "on_ephemeral": '''\
    # Typing, receipts, presence, to-device messages: nothing is stored in rooms.
    context.log.debug("ephemeral data: %s", data)
''',
    "on_query_user": '''\
    # Create the virtual user if it should exist, e.g.
    #     await context.homeserver.register(localpart)
    # and return True; None or False when this plugin does not provide it.
    return user_id in context.config.get("virtual_users", [])
''',
    "on_query_alias": '''\
    # Create the room if it should exist, e.g.
    #     await context.homeserver.create_room(alias_localpart=...)
    # and return True; None or False when this plugin does not provide it.
    return alias in context.config.get("aliases", [])
''',
    "on_thirdparty_protocol": '''\
    # Describe the protocols this plugin bridges (a Matrix spec Protocol object).
    if protocol != context.config.get("protocol", "example"):
        return None
    return {"user_fields": [], "location_fields": [], "icon": "", "field_types": {},
            "instances": []}
''',
    "on_thirdparty_lookup": '''\
    # Find third-party users or locations; None when this plugin has no opinion.
    if protocol != context.config.get("protocol", "example"):
        return None
    return []
''',
}

TEST_HEADER: Final = '''\
"""Tests for the MODULE plugin: its hooks run through servletkit's real dispatcher.

``plugin_runner`` is a fixture of servletkit's pytest plugin: each test gets the
plugin in a container of its own, with the config table below and an empty store.
"""

from __future__ import annotations

IMPORTS

import MODULE

CONFIG = {
    "blocked_words": ["spam"],
    "closed_rooms": ["!closed:localhost"],
    "do_not_invite": ["@bot:localhost"],
    "forbidden_presets": ["public_chat"],
    "banned_users": ["@mallory:localhost"],
    "virtual_users": ["@_example_bob:localhost"],
    "aliases": ["#_example_lobby:localhost"],
    "protocol": "example",
    "greeting": "good morning",
}
'''

_START: Final = '    run = await plugin_runner(MODULE, CONFIG, name="MODULE")\n'

_LIFECYCLE: Final = '''

async def test_it_starts_with_its_config(plugin_runner: RunnerFactory) -> None:
START    assert run.context.config == CONFIG  # plugin_runner raises if servlet_init fails
'''

HOOK_TESTS: Final = {hook: text.replace("START", _START) for hook, text in {
    "servlet_init": _LIFECYCLE,
    "servlet_destroy": _LIFECYCLE,
    "servlet_routes": '''

async def test_servlet_routes_serves_a_greeting(plugin_runner: RunnerFactory) -> None:
START    async with run.http() as http:  # an HTTP client of its routes, in process
        answer = await http.get("/greeting")
    assert answer.json() == {"greeting": CONFIG["greeting"]}
''',
    "on_send_event": '''

async def test_on_send_event_vetoes_a_blocked_word(plugin_runner: RunnerFactory) -> None:
START    assert_vetoed(await run.send(message("buy SPAM now")), reason="spam")
    assert_allowed(await run.send(message("hello")))
''',
    "on_join_room": '''

async def test_on_join_room_refuses_a_closed_room(plugin_runner: RunnerFactory) -> None:
START    assert_vetoed(await run.join_room("@alice:localhost", "!closed:localhost"))
    assert_allowed(await run.join_room("@alice:localhost", "!open:localhost"))
''',
    "on_invite": '''

async def test_on_invite_refuses_who_takes_no_invites(plugin_runner: RunnerFactory) -> None:
START    assert_vetoed(await run.invite("@alice:localhost", "@bot:localhost", "!room:localhost"))
    assert_allowed(await run.invite("@alice:localhost", "@bob:localhost", "!room:localhost"))
''',
    "on_create_room": '''

async def test_on_create_room_refuses_a_forbidden_preset(plugin_runner: RunnerFactory) -> None:
START    public = {"preset": "public_chat"}
    assert_vetoed(await run.intercept("on_create_room", "@alice:localhost", public))
    private = {"preset": "private_chat"}
    assert_allowed(await run.intercept("on_create_room", "@alice:localhost", private))
''',
    "on_connect_event_stream": '''

async def test_on_connect_event_stream_refuses_a_banned_user(
    plugin_runner: RunnerFactory,
) -> None:
START    hook = "on_connect_event_stream"
    assert_vetoed(await run.intercept(hook, "@mallory:localhost", "DEVICE"))
    assert_allowed(await run.intercept(hook, "@alice:localhost", None))
''',
    "on_stored_event": '''

async def test_on_stored_event_counts_events_in_the_store(plugin_runner: RunnerFactory) -> None:
START    for body in ("one", "two"):
        await run.observe("on_stored_event", message(body, wire="appservice"))
    assert await run.store.get("stored_events") == 2
''',
    "on_ephemeral": '''

async def test_on_ephemeral_observes_typing(plugin_runner: RunnerFactory) -> None:
START    typing = Ephemeral(type="m.typing", content={"user_ids": ["@alice:localhost"]})
    await run.observe("on_ephemeral", typing)  # raises if the hook raised
''',
    "on_query_user": '''

async def test_on_query_user_provides_its_virtual_users(plugin_runner: RunnerFactory) -> None:
START    assert await run.query("on_query_user", "@_example_bob:localhost") is True
    assert not await run.query("on_query_user", "@_example_eve:localhost")
''',
    "on_query_alias": '''

async def test_on_query_alias_provides_its_aliases(plugin_runner: RunnerFactory) -> None:
START    assert await run.query("on_query_alias", "#_example_lobby:localhost") is True
    assert not await run.query("on_query_alias", "#elsewhere:localhost")
''',
    "on_thirdparty_protocol": '''

async def test_on_thirdparty_protocol_describes_its_protocol(plugin_runner: RunnerFactory) -> None:
START    assert "user_fields" in await run.query("on_thirdparty_protocol", "example")
    assert await run.query("on_thirdparty_protocol", "irc") is None
''',
    "on_thirdparty_lookup": '''

async def test_on_thirdparty_lookup_answers_for_its_protocol(plugin_runner: RunnerFactory) -> None:
START    found = await run.query("on_thirdparty_lookup", "user", "example", {"name": "bob"})
    assert found == []
''',
}.items()}
