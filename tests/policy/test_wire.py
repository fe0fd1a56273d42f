"""The policy wire as a part of the container: config, keys kept, its own TLS listener."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from servletkit.container.app import container_wires
from servletkit.container.config import parse_config
from servletkit.container.config_tables import ConfigError
from servletkit.container.runtime import Container
from servletkit.testing import only_plugins
from servletkit.wires.policy.keys import load_keys
from servletkit.wires.policy.wire import PolicyWire


def config(tmp_path: Path, **policy: Any) -> Any:
    return parse_config({"policy": {"server_name": "127.0.0.1:1", **policy},
                         "plugins": only_plugins({})}, tmp_path / "servletkit.toml")


def test_policy_section_defaults(tmp_path: Path) -> None:
    """[policy] with a server_name only: loopback 8448, keys under .servletkit/policy."""
    settings = config(tmp_path).policy
    assert (settings.host, settings.port, settings.state_dir) == (
        "127.0.0.1", 8448, ".servletkit/policy")
    assert settings.server_urls == {} and settings.tls_certificate is None
    assert settings.max_key_fetches == 16 and settings.tls_handshake_timeout_s == 10.0
    assert settings.invite_servers == ()


@pytest.mark.parametrize(("policy", "key", "problem"), [
    ({"server_name": ""}, "policy", "must not be empty"),
    ({"port": 0}, "policy.port", "TCP port"),
    ({"tls_certificate": "a.crt"}, "policy.tls_private_key", "go together"),
    ({"server_urls": {"localhost": "127.0.0.1:8008"}}, "policy.server_urls.localhost",
     "base URL"),
    ({"signing_key": "x"}, "policy.signing_key", "unknown key"),
    ({"max_key_fetches": 0}, "policy.max_key_fetches", "positive"),
    ({"invite_servers": ["ok.test", " spaced.test"]}, "policy.invite_servers[1]",
     "server name"),
    ({"invite_servers": "one.test"}, "policy.invite_servers", "must be an array"),
])
def test_policy_section_errors(tmp_path: Path, policy: dict[str, Any], key: str,
                               problem: str) -> None:
    """A wrong [policy] key names the key and the problem."""
    with pytest.raises(ConfigError, match=problem) as info:
        config(tmp_path, **policy)
    assert info.value.key == key


def test_keys_generated_once_and_private(tmp_path: Path) -> None:
    """Two different keys, files 0600, the same keys on the next load."""
    first = load_keys(tmp_path)
    assert first.policy.version == "policy_server"
    assert first.federation_public_key != first.policy_public_key
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    again = load_keys(tmp_path)
    assert (again.policy_public_key, again.federation_key_id) == (
        first.policy_public_key, first.federation_key_id)


def test_off_without_section(tmp_path: Path) -> None:
    """No [policy] section: no policy wire, and no ``context.policy``."""
    container = Container(parse_config({"plugins": only_plugins({})},
                                       tmp_path / "servletkit.toml"), [])
    assert not [w for w in container_wires(container) if w.name == "policy"]
    assert container.make_context("p", {}).policy is None


def test_plugins_learn_the_policy_server_from_their_context(tmp_path: Path) -> None:
    """``context.policy`` names the wire's server, user and policy key: the
    ``m.room.policy`` content that protects a room."""
    config = {"plugins": only_plugins({}), "policy": {"server_name": "policy.example.org"}}
    container = Container(parse_config(config, tmp_path / "servletkit.toml"), [])
    policy = container.make_context("p", {}).policy
    assert policy is not None
    assert policy.user_id == "@policy:policy.example.org"
    assert policy.state_content() == {"via": "policy.example.org", "public_keys": {
        "ed25519": load_keys(tmp_path / ".servletkit" / "policy").policy_public_key}}


async def test_listener_serves_https_with_a_self_signed_pair(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The wire's lifespan serves HTTPS on its own port (127.0.0.1) with a self-signed
    pair generated once and said loudly; the pair is reused on the next start."""
    container = Container(config(tmp_path, port=1), [])
    container.load()
    [wire] = [w for w in container_wires(container) if w.name == "policy"]
    assert isinstance(wire, PolicyWire) and wire.honours_modify is False and wire.tls
    assert "SELF-SIGNED" in caplog.text
    certificate, private_key = wire.tls
    assert stat.S_IMODE(private_key.stat().st_mode) == 0o600
    wire.port = 0  # a free port for the test
    async with wire.lifespan():
        async with httpx.AsyncClient(verify=False) as client:
            response = await client.get(f"https://127.0.0.1:{wire.port}/_matrix/key/v2/server")
        assert response.status_code == 200 and response.json()["server_name"] == "127.0.0.1:1"
    before = certificate.read_bytes()
    caplog.clear()
    container_wires(container)
    assert certificate.read_bytes() == before and "SELF-SIGNED" not in caplog.text


async def test_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    """A port in use: an OSError naming [policy] host and port."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        container = Container(config(tmp_path, port=port), [])
        [wire] = [w for w in container_wires(container) if w.name == "policy"]
        with pytest.raises(OSError, match=r"\[policy\] host and port"):
            async with wire.lifespan():
                pass


async def test_one_container_per_state_dir(tmp_path: Path) -> None:
    """A second container on the same state_dir (same keys, same rooms) is refused with a
    clear error naming it and the holder's pid; once the first stops, it may start. The
    lock is the kernel's (flock): a crashed container leaves nothing stale."""
    import os

    from servletkit.wires.policy.wire import StateDirBusy

    first, second = (Container(config(tmp_path, port=1), []) for _ in range(2))
    [wire1] = [w for w in container_wires(first) if w.name == "policy"]
    [wire2] = [w for w in container_wires(second) if w.name == "policy"]
    wire1.port = wire2.port = 0
    async with wire1.lifespan():
        with pytest.raises(StateDirBusy, match=rf"state_dir.*pid {os.getpid()}"):
            async with wire2.lifespan():
                pass
    async with wire2.lifespan():
        pass


async def test_listener_closes_silent_connections_and_keeps_logging_as_set_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The federation listener has the container's header deadline (``[server]
    header_timeout_s``): a connection that completes TLS and then says nothing is closed
    within two of it. Its requests go to the access log without their query strings, and
    starting it leaves uvicorn's shared loggers as the container set them up."""
    import asyncio
    import logging
    import ssl
    import time

    container = Container(parse_config({
        "server": {"header_timeout_s": 0.5, "keep_alive_s": 60},
        "policy": {"server_name": "127.0.0.1:1", "port": 1},
        "plugins": only_plugins({})}, tmp_path / "servletkit.toml"), [])
    [wire] = [w for w in container_wires(container) if w.name == "policy"]
    assert isinstance(wire, PolicyWire)
    wire.port = 0
    access = logging.getLogger("uvicorn.access")
    monkeypatch.setattr(access, "propagate", True)
    monkeypatch.setattr(access, "level", logging.NOTSET)
    caplog.set_level(logging.INFO)
    async with wire.lifespan():
        assert (access.propagate, access.level) == (True, logging.NOTSET)
        async with httpx.AsyncClient(verify=False) as client:
            keys = await client.get(
                f"https://127.0.0.1:{wire.port}/_matrix/key/v2/server?secret=SECRET-9f3")
        assert keys.status_code == 200
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", wire.port, ssl=context)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing said
        assert time.monotonic() - started < 1.5
        writer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any('"GET /_matrix/key/v2/server HTTP/1.1" 200' in line for line in lines), lines
    assert not [r for r in caplog.records if "SECRET" in r.getMessage() and r.name != "httpx"]


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(20)],
                         ids=["nothing", "partial ClientHello"])
async def test_listener_closes_connections_that_never_finish_tls(
        tmp_path: Path, sent: bytes) -> None:
    """A TCP connection that never completes its TLS handshake (silent, or a ClientHello cut
    short) is closed after ``[policy] tls_handshake_timeout_s``, not asyncio's 60 s; the
    header deadline, far longer here, cannot be what closes it."""
    import asyncio
    import time

    container = Container(parse_config({
        "server": {"header_timeout_s": 30.0},
        "policy": {"server_name": "127.0.0.1:1", "port": 1, "tls_handshake_timeout_s": 0.5},
        "plugins": only_plugins({})}, tmp_path / "servletkit.toml"), [])
    [wire] = [w for w in container_wires(container) if w.name == "policy"]
    assert isinstance(wire, PolicyWire) and wire.tls_handshake_timeout_s == 0.5
    wire.port = 0
    async with wire.lifespan():
        reader, writer = await asyncio.open_connection("127.0.0.1", wire.port)
        writer.write(sent)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing said
        assert 0.4 < time.monotonic() - started < 3
        writer.close()
        async with httpx.AsyncClient(verify=False) as client:  # a real handshake still works
            keys = await client.get(f"https://127.0.0.1:{wire.port}/_matrix/key/v2/server")
        assert keys.status_code == 200
