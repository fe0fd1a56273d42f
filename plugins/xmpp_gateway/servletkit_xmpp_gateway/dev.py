"""``python -m servletkit_xmpp_gateway.dev``: ``servletkit dev`` with a local Prosody.

Starts a throw-away Prosody on loopback (component, MUC service, an XMPP test
account), writes a ``servletkit.toml`` that enables the gateway against it,
and runs ``servletkit dev`` on that file, so a plugin author can chat between
any Matrix client and any XMPP client. Ctrl-C (or SIGTERM) stops everything.
Everything lives in ``--state-dir`` (default ``.servletkit/xmpp``); the XMPP
facts are also written to ``xmpp.json`` there, for scripts and tests.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from servletkit_xmpp_gateway.prosody import free_port, start_prosody

MUC = "conference.localhost"
COMPONENT = "matrix.localhost"
XMPP_USER = "xmpp"

CONFIG = """\
[server]
host = "127.0.0.1"
port = {port}

[homeserver]
url = "http://127.0.0.1:8008"
server_name = "localhost"

[module]
port = {module_port}

[dev]
state_dir = "dev"
test_user = "dev"

[appservice]
id = "xmpp-gateway"
as_token = "replaced-by-servletkit-dev"
hs_token = "replaced-by-servletkit-dev"
sender_localpart = "xmppbot"

[[appservice.namespaces.users]]
regex = "@_xmpp_.*:localhost"
exclusive = true

[[appservice.namespaces.aliases]]
regex = "#_xmpp_.*:localhost"
exclusive = true

[plugins.xmpp_gateway]
timeout_ms = 10000
component_jid = "{component}"
component_secret = "{secret}"
xmpp_host = "127.0.0.1"
xmpp_port = {component_port}
muc_domain = "{muc}"
reconnect_max = 5.0
"""


def main(argv: list[str] | None = None) -> int:
    """Start Prosody, then ``servletkit dev`` in the foreground; stop both at the end."""
    parser = argparse.ArgumentParser(prog="python -m servletkit_xmpp_gateway.dev",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--state-dir", default=".servletkit/xmpp", type=Path)
    args = parser.parse_args(argv)
    root: Path = args.state_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    facts_file = root / "xmpp.json"
    facts: dict[str, Any] = (json.loads(facts_file.read_text()) if facts_file.exists()
                             else {"password": secrets.token_urlsafe(12),
                                   "secret": secrets.token_urlsafe(16),
                                   "port": free_port(), "module_port": free_port()})
    prosody = start_prosody(root / "prosody", component_jid=COMPONENT, secret=facts["secret"],
                            muc_domain=MUC, users={XMPP_USER: facts["password"]})
    config = root / "servletkit.toml"
    config.write_text(CONFIG.format(
        port=facts["port"], module_port=facts["module_port"], component=COMPONENT,
        secret=facts["secret"], muc=MUC, component_port=prosody.component_port))
    facts |= {"jid": f"{XMPP_USER}@{prosody.domain}", "c2s_port": prosody.c2s_port,
              "component_port": prosody.component_port, "muc_domain": MUC,
              "config": str(config), "dev_json": str(root / "dev" / "dev.json")}
    facts_file.write_text(json.dumps(facts, indent=2))
    facts_file.chmod(0o600)
    print(f"""XMPP side (Prosody on 127.0.0.1, plain TCP, no TLS):

  XMPP account  {facts['jid']}   password {facts['password']}   server 127.0.0.1:{prosody.c2s_port}
  Group chats   ROOM@{MUC}   is the Matrix room #_xmpp_ROOM_{MUC}:localhost
  Matrix users  @alice:localhost is alice@{COMPONENT} on XMPP
""", flush=True)
    # its own session: a terminal's Ctrl-C reaches only us, and we pass it on once
    child = subprocess.Popen([sys.executable, "-m", "servletkit.container.cli", "dev",
                              "--config", str(config)], start_new_session=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda num, _frame: child.send_signal(num))
    try:
        return child.wait()
    finally:
        prosody.stop()


if __name__ == "__main__":
    sys.exit(main())
