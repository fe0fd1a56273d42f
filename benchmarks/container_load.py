"""One ``servletkit run`` with the appservice and module wires on, and a module-wire
client, for the benchmarks that load both wires (soak.py, multi_instance.py); the HTTP
side of their load is :mod:`raw_http`.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from servletkit.testing import only_plugins, plugins_toml
from servletkit.testing.container import start_container
from servletkit.testing.synapse import free_port
from servletkit.wires.module.protocol import HEADER, PROTOCOL_VERSION, decode, encode

HS_TOKEN = "bench-hs-token"
SECRET = "bench-module-secret-0123456789"
READ_TIMEOUT_S = 30  # a frame's wait: a load generator never hangs
HEADERS = {"Authorization": f"Bearer {HS_TOKEN}", "Content-Type": "application/json"}


def start_instance(workdir: Path, store: str, plugin: str, env: dict[str, str]
                   ) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start ``servletkit run`` in ``workdir`` with ``store`` (a ``[store]`` table as TOML
    lines) and only ``plugin``, on free loopback ports; return once it answers, with
    its process, HTTP port and module-wire port."""
    port, module_port = free_port(), free_port()
    config = workdir / "servletkit.toml"
    config.write_text("\n".join([
        f'[server]\nhost = "127.0.0.1"\nport = {port}',
        store,
        f'[appservice]\nas_token = "bench-as"\nhs_token = "{HS_TOKEN}"',
        f'[module]\nenabled = true\nport = {module_port}\nsecret = "{SECRET}"',
        plugins_toml(only_plugins({plugin: {}})),
    ]))
    process = start_container(config, f"http://127.0.0.1:{port}", workdir=workdir, env=env)
    return process, port, module_port


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next module-wire frame's message (at most ``READ_TIMEOUT_S`` seconds)."""
    async with asyncio.timeout(READ_TIMEOUT_S):
        (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
        return decode(await reader.readexactly(length))


async def module_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A module-wire connection to the instance on ``port``, past its hello."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode({"op": "hello", "protocol": PROTOCOL_VERSION, "secret": SECRET}))
    answer = await read_frame(reader)
    assert answer.get("op") == "hello", answer
    return reader, writer
