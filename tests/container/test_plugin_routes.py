"""Plugins' own HTTP routes under ``/_servletkit/plugins/NAME/`` (hook ``servlet_routes``):
served with Matrix errors, swapped by a reload at the same moment as the hooks (requests in
flight finish on the old version), gone after an unload; through ``servletkit run`` too."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import BaseRoute, Route

from servletkit import PluginContext, hookimpl
from servletkit.container.runtime import Container
from servletkit.dev.embedded_synapse import free_port
from servletkit.testing import (
    only_plugins,
    plugin_client,
    plugins_toml,
    python_path_env,
    running_container,
)
from servletkit.testing.container import start_container
from servletkit.testing.waiting import eventually
from tests.container.reload_support import PluginOnDisk, importable_plugin


class Hello:
    """Routes that greet with the config's word, fail on purpose, and echo a JSON body."""

    def __init__(self) -> None:
        self.destroyed = False

    @hookimpl
    def servlet_routes(self, context: PluginContext) -> list[BaseRoute]:
        async def hello(request: Request) -> JSONResponse:
            return JSONResponse({"greeting": context.config["word"],
                                 "path": request.url.path})

        async def boom(request: Request) -> JSONResponse:
            raise RuntimeError("the plugin's own bug")

        async def echo(request: Request) -> JSONResponse:
            return JSONResponse(await request.json())

        return [Route("/hello", hello, methods=["GET"]), Route("/boom", boom),
                Route("/echo", echo, methods=["POST"])]


class OwnApp:
    """A plugin that answers with a whole ASGI app of its own."""

    @hookimpl
    async def servlet_routes(self) -> Starlette:
        async def root(request: Request) -> PlainTextResponse:
            return PlainTextResponse("own app")
        return Starlette(routes=[Route("/", root)])


class Wrong:
    """A plugin whose servlet_routes answers nonsense: it must not serve."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    def servlet_init(self) -> None:
        self.events.append("init")

    @hookimpl
    def servlet_routes(self) -> Any:
        return 42

    @hookimpl
    def servlet_destroy(self) -> None:
        self.events.append("destroy")


async def test_routes_answer_under_the_plugin_prefix_with_matrix_errors() -> None:
    """Each plugin's routes under its own name; unknown paths, plugins and methods and a
    plugin's exception answer as Matrix JSON errors."""
    plugins = {"hello": Hello(), "own": OwnApp()}
    config = {"plugins": {"hello": {"word": "hi"}}}
    async with running_container(plugins, config) as container, \
            plugin_client(container, "hello") as http:
        answer = await http.get("/hello")
        assert answer.json() == {"greeting": "hi",
                                 "path": "/_servletkit/plugins/hello/hello"}
        assert (await http.post("/echo", json={"a": [1]})).json() == {"a": [1]}
        cases = [("GET", "/nothing-here", 404, "M_UNRECOGNIZED"),
                 ("POST", "/hello", 405, "M_UNRECOGNIZED"),
                 ("GET", "/boom", 500, "M_UNKNOWN"),
                 ("GET", "/_servletkit/plugins/nobody/hello", 404, "M_UNRECOGNIZED"),
                 ("GET", "/_servletkit/plugins/hello", 404, "M_UNRECOGNIZED")]
        for method, path, status, errcode in cases:
            response = await http.request(method, path)
            assert (response.status_code, response.json()["errcode"]) == (status, errcode), path
        async with plugin_client(container, "own") as own:
            assert (await own.get("/")).text == "own app"
        assert container.http.plugins == ["hello", "own"]


async def test_a_wrong_answer_fails_the_plugin_after_destroying_it() -> None:
    """servlet_routes answering 42: the plugin fails at the stage 'routes', destroyed."""
    plugin = Wrong()
    with pytest.raises(RuntimeError, match=r"(?s)failed to routes:\n.*TypeError: plugin 'wrong': "
                       r"servlet_routes must return a list of Starlette routes or an ASGI app, "
                       r"not int"):
        async with running_container({"wrong": plugin}):
            pass
    assert plugin.events == ["init", "destroy"]


ROUTES = '''
from starlette.responses import JSONResponse
from starlette.routing import Route
import asyncio

release = asyncio.Event()


@hookimpl
def servlet_routes(context):
    async def version(request):
        if request.query_params.get("wait"):
            await release.wait()
        return JSONResponse({"version": VERSION})
    return [Route("/version", version)]
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginOnDisk]:
    on_disk = importable_plugin(tmp_path, monkeypatch, "routy")
    on_disk.write("1.0", ROUTES)
    yield on_disk
    on_disk.forget()


@pytest.fixture
async def container(plugin: PluginOnDisk) -> AsyncIterator[Container]:
    async with running_container({}, {"plugins": only_plugins({plugin.name: {}})},
                                 include_installed=True) as c:
        c.drain_timeout_s = 5.0
        yield c


async def test_a_reload_swaps_the_routes_and_waits_for_requests_in_flight(
    container: Container, plugin: PluginOnDisk
) -> None:
    """A request in flight when the reload swaps finishes on the old version, which is
    destroyed only then; new requests reach the new version; an unload takes them away."""
    old_module = sys.modules[plugin.name]
    async with plugin_client(container, plugin.name) as http:
        held = asyncio.create_task(http.get("/version", params={"wait": "1"}))
        await eventually(lambda: container.version(plugin.name).requests,  # type: ignore[union-attr]
                         interval=0.005)
        plugin.write("2.0", ROUTES)
        assert (await container.reload(plugin.name)).ok
        assert (await http.get("/version")).json() == {"version": "2.0"}
        await asyncio.sleep(0.05)
        assert plugin.events == [("init", "1.0"), ("init", "2.0")]  # 1.0 still serves one
        old_module.release.set()
        assert (await held).json() == {"version": "1.0"}
        await container.drained()
        assert plugin.events[-1] == ("destroy", "1.0")
        plugin.write("3.0", "def broken(:\n")
        assert not (await container.reload(plugin.name)).ok
        assert (await http.get("/version")).json() == {"version": "2.0"}
        assert (await container.unload(plugin.name)).ok
        gone = await http.get("/version")
        assert (gone.status_code, gone.json()["errcode"]) == (404, "M_UNRECOGNIZED")


def admin(port: int, path: str) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}/_servletkit/admin/v1/plugins/routy/{path}",
                      headers={"Authorization": "Bearer admin-token-for-routes-test"},
                      timeout=30)


@pytest.mark.integration
def test_routes_through_servletkit_run(tmp_path: Path) -> None:
    """``servletkit run`` serves the plugin's route on [server]; an admin reload replaces
    it, an unload removes it."""
    plugin = PluginOnDisk(tmp_path / "site", "routy")
    plugin.write("1.0", ROUTES)
    port = free_port()
    config = tmp_path / "servletkit.toml"
    config.write_text(f'[server]\nport = {port}\n[admin]\ntoken = '
                      f'"admin-token-for-routes-test"\n' + plugins_toml(only_plugins({})))
    url = f"http://127.0.0.1:{port}"
    server = start_container(config, url, workdir=tmp_path,
                             env=python_path_env(tmp_path / "site"))
    route = f"{url}/_servletkit/plugins/routy/version"
    try:
        assert httpx.get(route).json() == {"version": "1.0"}
        plugin.write("1.1", ROUTES)
        assert admin(port, "reload").json()["new"] == "1.1#2"
        assert httpx.get(route).json() == {"version": "1.1"}
        assert admin(port, "unload").json()["ok"]
        gone = httpx.get(route)
        assert (gone.status_code, gone.json()["errcode"]) == (404, "M_UNRECOGNIZED")
    finally:
        server.terminate()
        server.wait(timeout=20)
