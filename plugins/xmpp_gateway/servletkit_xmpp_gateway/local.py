"""The gateway on a local Prosody: what ``servletkit dev --xmpp`` and the tests share.

:func:`gateway_table` is the ``[plugins.xmpp_gateway]`` table that points the
gateway at a :class:`~servletkit_xmpp_gateway.prosody.ProsodyServer`;
:func:`namespaces` the appservice namespaces it needs; :func:`dev_extension`
is the ``xmpp`` dev extension (entry point group ``servletkit.dev``): it starts
a Prosody in its folder of the dev state folder, with an XMPP test account,
and wires the gateway to it.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import attrs

from servletkit.container.config import Config, Namespace, Namespaces, PluginSettings, PluginTable
from servletkit.container.snippets import appservice_url
from servletkit.dev.errors import DevError
from servletkit.dev.extensions import StartedExtension
from servletkit.files import write_private
from servletkit_xmpp_gateway.config import GatewayConfig
from servletkit_xmpp_gateway.prosody import ProsodyError, ProsodyServer, start_prosody

PLUGIN = "xmpp_gateway"
COMPONENT = "matrix.localhost"
MUC = "conference.localhost"
XMPP_USER = "dev"
TIMEOUT_MS = 10_000.0  # alias queries wait for the Matrix room and the MUC join
ALIAS_PREFIX = str(attrs.fields(GatewayConfig).alias_prefix.default)
USER_PREFIX = str(attrs.fields(GatewayConfig).user_prefix.default)


def gateway_table(prosody: ProsodyServer) -> dict[str, Any]:
    """The gateway's own keys that connect it to ``prosody`` (component, MUC service)."""
    return {"component_jid": prosody.component_jid, "component_secret": prosody.secret,
            "xmpp_host": "127.0.0.1", "xmpp_port": prosody.component_port,
            "muc_domain": prosody.muc_domain}


def namespaces(server_name: str, alias_prefix: str = ALIAS_PREFIX,
               user_prefix: str = USER_PREFIX) -> Namespaces:
    """The exclusive appservice namespaces of the gateway's virtual users and aliases."""
    server = re.escape(server_name)
    return Namespaces(
        users=(Namespace(f"@{re.escape(user_prefix)}.*:{server}", exclusive=True),),
        aliases=(Namespace(f"#{re.escape(alias_prefix)}.*:{server}", exclusive=True),))


def dev_extension(config: Config, folder: Path) -> StartedExtension:
    """``servletkit dev --xmpp``: a Prosody in ``folder`` and the gateway wired to it.

    The XMPP account's password, the component secret and the ports are kept
    in ``folder/xmpp.json`` (mode 0600), so a client set up once keeps working.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    facts_file = folder / "xmpp.json"
    saved: dict[str, Any] = json.loads(facts_file.read_text()) if facts_file.exists() else {}
    password = saved.get("password") or secrets.token_urlsafe(12)
    secret = saved.get("component_secret") or secrets.token_urlsafe(16)
    try:
        prosody = start_prosody(folder / "prosody", component_jid=COMPONENT, secret=secret,
                                muc_domain=MUC, users={XMPP_USER: password},
                                c2s_port=saved.get("c2s_port"),
                                component_port=saved.get("component_port"),
                                die_with_parent=True)
    except ProsodyError as exc:
        raise DevError(f"--xmpp: {exc}") from None
    server_name = config.homeserver.server_name
    facts = {"jid": f"{XMPP_USER}@{prosody.domain}", "password": password,
             "c2s_port": prosody.c2s_port, "component_port": prosody.component_port,
             "component_jid": COMPONENT, "component_secret": secret, "muc_domain": MUC}
    write_private(facts_file, json.dumps(facts, indent=2))
    summary = (
        ("XMPP account", f"{facts['jid']}   password {password}   server "
                         f"127.0.0.1:{prosody.c2s_port} (plain TCP, no TLS)"),
        ("XMPP chats", f"ROOM@{MUC} is the Matrix room #_xmpp_ROOM_{MUC}:{server_name}; "
                       f"@alice:{server_name} is alice@{COMPONENT}"),
    )
    return StartedExtension(config=wire_gateway(config, prosody), summary=summary,
                            facts={k: v for k, v in facts.items() if k != "component_secret"},
                            stop=prosody.stop)


def wire_gateway(config: Config, prosody: ProsodyServer) -> Config:
    """``config`` with the gateway enabled against ``prosody``, its namespaces added and
    ``receive_ephemeral`` on (typing notices); files Matrix users send are served on
    the plugin's route of the local container (``media_url``) unless the table says
    where.

    Keys of an existing ``[plugins.xmpp_gateway]`` table that do not say where
    the XMPP server is (``rooms``, ``bot_nick``, the prefixes) are kept.
    """
    table = config.plugin(PLUGIN)
    options = {"media_url": f"{appservice_url(config)}/_servletkit/plugins/{PLUGIN}",
               **(table.options if table is not None else {}), **gateway_table(prosody)}
    settings = table.settings if table is not None else PluginSettings()
    settings = attrs.evolve(settings, enabled=True,
                            timeout_ms=max(settings.timeout_ms, TIMEOUT_MS))
    position = table.position if table is not None else len(config.plugins)
    plugins = (*(t for t in config.plugins if t.name != PLUGIN),
               PluginTable(PLUGIN, settings, options, position))
    appservice = config.appservice
    assert appservice is not None  # servletkit dev's wired config always has one
    ours = namespaces(config.homeserver.server_name,
                      str(options.get("alias_prefix", ALIAS_PREFIX)),
                      str(options.get("user_prefix", USER_PREFIX)))
    have = appservice.namespaces
    wanted = attrs.evolve(have, users=_add(have.users, ours.users),
                          aliases=_add(have.aliases, ours.aliases))
    return attrs.evolve(config, plugins=plugins,
                        appservice=attrs.evolve(appservice, namespaces=wanted,
                                                receive_ephemeral=True))


def _add(have: tuple[Namespace, ...], more: tuple[Namespace, ...]) -> tuple[Namespace, ...]:
    return have + tuple(n for n in more if n.regex not in {h.regex for h in have})
