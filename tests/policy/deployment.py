"""A real Synapse that federates (over loopback TLS) with a ``servletkit run`` subprocess
serving the policy wire, started once per test session."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from servletkit.container.config import load_config
from servletkit.container.snippets import dump_yaml, module_entry, registration
from servletkit.dev.embedded_synapse import stop_process
from servletkit.testing import only_plugins, plugins_toml
from servletkit.testing.container import start_container
from servletkit.testing.synapse import SynapseServer, free_port, start_synapse

REASON = "policy test: that word is not allowed in this room"
FORBIDDEN = "policy-forbidden"
SYNAPSE_FEDERATION = {
    # the policy server is an IP literal with a self-signed certificate on loopback:
    # Synapse checks only its blocklist for IP literals (reference §7.14)
    "federation_verify_certificates": False,
    "federation_ip_range_blacklist": [],
    "ip_range_blacklist": [],
}


class PolicyDeployment:
    """Synapse (server name ``localhost``) and the container as its rooms' policy server.

    ``plugins`` (name → config table) replaces the default word filter; ``extra``
    is more of the container's TOML (an ``[appservice]`` section is registered
    with the Synapse, an enabled ``[module]`` is loaded into it).
    """

    def __init__(self, workdir: Path, plugins: Mapping[str, Mapping[str, Any]] | None = None,
                 extra: str = "") -> None:
        self.workdir = workdir
        self.hs_port, self.port, self.policy_port = free_port(), free_port(), free_port()
        self.server_name = f"127.0.0.1:{self.policy_port}"
        self.policy_user = f"@policy:{self.server_name}"
        self.config_path = workdir / "servletkit.toml"
        self.config_path.write_text("\n".join([
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}',
            f'[homeserver]\nurl = "http://127.0.0.1:{self.hs_port}"',
            f'[policy]\nserver_name = "{self.server_name}"\nport = {self.policy_port}',
            f'[policy.server_urls]\nlocalhost = "http://127.0.0.1:{self.hs_port}"',
            extra,
            plugins_toml(only_plugins(plugins or {"word_filter": {"words": [FORBIDDEN],
                                                                  "reason": REASON}})),
        ]))
        self.process: subprocess.Popen[bytes] | None = None
        self.synapse: SynapseServer | None = None

    @property
    def hs_url(self) -> str:
        return f"http://127.0.0.1:{self.hs_port}"

    @property
    def policy_url(self) -> str:
        return f"https://127.0.0.1:{self.policy_port}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``servletkit ARGS --config ...`` and return its result."""
        return subprocess.run(
            [sys.executable, "-m", "servletkit.container.cli", *args, "--config",
             str(self.config_path)], capture_output=True, text=True, timeout=60,
            cwd=self.workdir)

    def start_container(self, timeout: float = 30.0) -> None:
        """``servletkit run``; returns once its plugins are live and /sign answers."""
        self.process = start_container(self.config_path, f"http://127.0.0.1:{self.port}",
                                       workdir=self.workdir, timeout=timeout)

    def stop_container(self) -> None:
        if self.process is not None:
            stop_process(self.process, 10)
            self.process = None

    def start_synapse(self) -> None:
        config = load_config(self.config_path)
        registrations = []
        if config.appservice is not None:
            registrations.append(self.workdir / "registration.yaml")
            registrations[0].write_text(dump_yaml(registration(config)))
        self.synapse = start_synapse(self.workdir / "synapse", port=self.hs_port,
                                     extra_config=SYNAPSE_FEDERATION,
                                     app_service_config_files=registrations,
                                     modules=[module_entry(config)] if config.module.enabled
                                     else [])

    def stop(self) -> None:
        self.stop_container()
        if self.synapse is not None:
            self.synapse.stop()


class Client:
    """A registered user of the Synapse (localpart ``prefix`` and a random tail), over the
    client-server API."""

    def __init__(self, deployment: PolicyDeployment, prefix: str = "pol") -> None:
        assert deployment.synapse is not None
        account = deployment.synapse.register(f"{prefix}{uuid.uuid4().hex[:8]}")
        self.user_id = account["user_id"]
        self.http = httpx.Client(base_url=deployment.hs_url, timeout=60, headers={
            "Authorization": f"Bearer {account['access_token']}"})

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.http.request(method, f"/_matrix/client/v3{path}", json=body)

    def create_room(self) -> str:
        response = self.call("POST", "/createRoom", {"preset": "public_chat"})
        assert response.status_code == 200, response.text
        return str(response.json()["room_id"])

    def set_policy(self, room_id: str, content: Any) -> None:
        response = self.call("PUT", f"/rooms/{quote(room_id)}/state/m.room.policy/", content)
        assert response.status_code == 200, response.text

    def send(self, room_id: str, body: str) -> httpx.Response:
        return self.call("PUT", f"/rooms/{quote(room_id)}/send/m.room.message/"
                         f"{uuid.uuid4().hex}", {"msgtype": "m.text", "body": body})
