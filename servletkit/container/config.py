"""``servletkit.toml``: the container's configuration, read and validated.

The container's own sections are attrs classes; :func:`load_config` checks every
key and type against them and fails with a :class:`ConfigError` that names the
file, the key and the problem. ``[plugins.NAME]`` tables mix the container's
per-plugin settings (``enabled``, ``order``, ``timeout_ms``, ``on_error``,
``threaded``) with the plugin's own keys, which are handed to the plugin untouched
as ``context.config``; a plugin key that looks like a misspelt container key
(``timeout`` for ``timeout_ms``) is logged as a warning.
"""

from __future__ import annotations

import difflib
import logging
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from servletkit.container.config_tables import ConfigError, InvalidValue, build_section, kind_of
from servletkit.hooks import specs

log = logging.getLogger("servletkit.config")

# how alike (difflib's ratio) a plugin key and a container key must be to be a likely
# typo: one edit away from any container key, e.g. 'timeout' for 'timeout_ms'
NEAR_MISS_RATIO = 0.8


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value <= 0:
        raise InvalidValue(attribute.name, f"must be positive, got {value:g}")


def _tcp_port(instance: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and not 1 <= value <= 65535:
        raise InvalidValue(attribute.name, f"must be a TCP port (1-65535), got {value}")


@attrs.frozen
class ServerConfig:
    """``[server]``: where the container listens, and how long a client may take.

    ``header_timeout_s``: a connection whose next request's headers have not
    arrived within this time (at most twice it) is closed. ``keep_alive_s``: an
    idle connection between requests is closed after this. ``metrics``: serve
    Prometheus metrics on ``GET /metrics`` (per plugin and hook: calls, time,
    decisions, failures; see :mod:`servletkit.wires.metrics`).
    """

    host: str = "127.0.0.1"
    port: int = attrs.field(default=8090, validator=_tcp_port)
    header_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    keep_alive_s: int = attrs.field(default=5, validator=_positive)
    metrics: bool = False


@attrs.frozen
class HomeserverConfig:
    """``[homeserver]``: the Matrix homeserver the container serves."""

    url: str = "http://127.0.0.1:8008"
    server_name: str = "localhost"


def _valid_regex(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{attribute.name}: {value!r} is not a valid regular expression "
                         f"({exc})") from None


def _not_empty(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise ValueError(f"{attribute.name} must not be empty")


@attrs.frozen
class Namespace:
    """One namespace entry: a regular expression and whether the appservice owns it alone.

    Matched like Synapse does, with ``re.match`` (anchored at the start only):
    write the server part explicitly, e.g. ``"@_bridge_.*:example\\.org"``.
    """

    regex: str = attrs.field(validator=_valid_regex)
    exclusive: bool = False


@attrs.frozen
class Namespaces:
    """``[appservice.namespaces]``: the users, aliases and rooms the appservice is interested in."""

    users: tuple[Namespace, ...] = ()
    aliases: tuple[Namespace, ...] = ()
    rooms: tuple[Namespace, ...] = ()


@attrs.frozen
class AppserviceConfig:
    """``[appservice]``: the appservice wire (registration, tokens, enforcement).

    ``as_token`` authenticates the container to the homeserver, ``hs_token``
    the homeserver to the container. ``url`` is how the homeserver reaches the
    container (default: derived from ``[server]``). ``enforce_vetoes``:
    ``"observe"`` only records an interception hook's Veto on a stored event;
    ``"redact"`` also redacts the event as the appservice user, with the
    reason. ``max_transaction_bytes`` is the largest transaction body accepted
    (413 ``M_TOO_LARGE`` above it). ``presence_kept``: how many users are
    remembered as online, so that their going online reaches
    ``on_connect_event_stream`` once (past it, the user seen longest ago is
    forgotten and reported again when next online). ``body_timeout_s``: how long
    a request's body may take to arrive (408 after it).
    """

    as_token: str = attrs.field(validator=_not_empty, repr=False)
    hs_token: str = attrs.field(validator=_not_empty, repr=False)
    id: str = "servletkit"
    sender_localpart: str = "servletkit"
    url: str | None = None
    namespaces: Namespaces = Namespaces()
    receive_ephemeral: bool = False
    rate_limited: bool = False
    protocols: tuple[str, ...] = ()
    enforce_vetoes: Literal["observe", "redact"] = "observe"
    max_transaction_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_positive)
    presence_kept: int = attrs.field(default=100_000, validator=_positive)
    body_timeout_s: float = attrs.field(default=30.0, validator=_positive)


@attrs.frozen
class StoreConfig:
    """``[store]``: durable state (transaction ids, plugin data, audit log).

    ``path`` is the embedded SQLite file, relative to the config file. ``url``
    names a networked store by its scheme instead: ``postgresql://USER:PASSWORD@HOST/DB``
    for PostgreSQL, shared by several container instances (see
    :func:`servletkit.store.store_from_config`; ``synchronous`` is SQLite's only).
    ``synchronous``: ``"normal"`` (a commit survives the container process crashing; the default) or
    ``"full"`` (it also survives the machine losing power, at the cost of an
    fsync per commit). ``transactions_kept``: how many processed transactions
    (id and digest) are remembered for deduplication. ``audit_kept``: how many of the
    newest audit records are kept (older ones are deleted). ``pool_size``: how many
    connections to PostgreSQL this instance opens at most (each instance its own
    pool: keep instances times ``pool_size`` under the server's ``max_connections``).
    """

    path: str = "servletkit.db"
    url: str | None = None
    synchronous: Literal["normal", "full"] = "normal"
    transactions_kept: int = attrs.field(default=10_000, validator=_positive)
    audit_kept: int = attrs.field(default=100_000, validator=_positive)
    pool_size: int = attrs.field(default=10, validator=_positive)


def _secret_when_enabled(instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if instance.enabled and not value:
        raise ValueError(
            "secret: must be set when enabled = true (a long random string; "
            "`servletkit synapse-config` copies it into homeserver.yaml)"
        )


@attrs.frozen
class CallbackPolicy:
    """One Synapse callback's time budget and failure policy (``[module.callbacks.NAME]``).

    A key left out takes the module's default (see :mod:`servletkit.synapse`).
    """

    timeout_ms: float | None = attrs.field(default=None)
    fail_open: bool | None = None

    @timeout_ms.validator
    def _positive(self, attribute: attrs.Attribute[Any], value: float | None) -> None:
        if value is not None and value <= 0:
            raise ValueError(f"timeout_ms: must be positive, got {value:g}")


ModuleCallbacks = attrs.make_class(
    "ModuleCallbacks",
    {name: attrs.field(type=CallbackPolicy, default=CallbackPolicy())
     for name in specs.HOOKS.synapse_callbacks},
    frozen=True,
)
ModuleCallbacks.__module__ = __name__
ModuleCallbacks.__doc__ = """``[module.callbacks]``: a :class:`CallbackPolicy` per Synapse
callback the module uses (fields derived from the hook table, :data:`specs.HOOKS`)."""


def _addresses(instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for index, address in enumerate(value):
        host, colon, port = address.rpartition(":")
        if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise InvalidValue(f"{attribute.name}[{index}]", "must be \"host:port\" of an "
                               f"instance's module wire, e.g. \"10.0.0.11:8091\", got {address!r}")
    if len(set(value)) != len(value):
        raise InvalidValue(attribute.name, f"an address is listed twice: {list(value)}")


@attrs.frozen
class ModuleConfig:
    """``[module]``: the module wire (``servletkit.synapse.ServletkitModule`` in Synapse).

    The container listens on ``host``:``port`` for the module's connection when
    ``enabled``; the module authenticates with ``secret``. ``callbacks`` are
    written into the module's config by ``servletkit synapse-config``.
    ``max_hello_bytes``: the longest frame accepted before the hello (an
    unauthenticated peer can make the container buffer no more).
    ``max_connections``: connections open at once, authenticated or not (Synapse
    opens one per process: the main one and each worker's).
    ``containers``: with several instances, every instance's module-wire address
    (``"host:port"``, this one's included), for ``servletkit synapse-config`` to
    print as the module's ``containers`` instead of this instance's ``host`` and
    ``port``; the container itself listens on ``host``:``port`` only.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8091, validator=_tcp_port)
    secret: str = attrs.field(default="", repr=False, validator=_secret_when_enabled)
    max_hello_bytes: int = attrs.field(default=4096, validator=_positive)
    max_connections: int = attrs.field(default=64, validator=_positive)
    callbacks: ModuleCallbacks = attrs.field(  # type: ignore[valid-type]
        factory=ModuleCallbacks)
    containers: tuple[str, ...] = attrs.field(default=(), validator=_addresses)


@attrs.frozen
class DevConfig:
    """``[dev]``: the embedded homeserver of ``servletkit dev``.

    ``homeserver_port``: Synapse's port on 127.0.0.1 (default: a free port,
    picked on the first start and kept while it stays free). ``state_dir``:
    where Synapse's database, the generated secrets and the logs live, relative
    to the config file. ``test_user``: the localpart of the account created on
    the first start.
    """

    homeserver_port: int | None = attrs.field(default=None, validator=_tcp_port)
    state_dir: str = ".servletkit/dev"
    test_user: str = attrs.field(default="dev")

    @test_user.validator
    def _localpart(self, attribute: attrs.Attribute[Any], value: str) -> None:
        if not re.fullmatch(r"[a-z0-9._=/+-]+", value):
            raise ValueError(f"test_user: {value!r} is not a Matrix user localpart (use "
                             f"lower-case letters, digits and ._=/+-), e.g. \"dev\"")


def _base_urls(instance: Any, attribute: attrs.Attribute[Any], value: Mapping[str, Any]) -> None:
    for name, url in value.items():
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidValue(f"{attribute.name}.{name}", f"must be a base URL such as "
                               f"\"http://127.0.0.1:8008\", got {url!r}")


def _server_names(instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]
                  ) -> None:
    for index, name in enumerate(value):
        if not name or name != name.strip() or "/" in name:
            raise InvalidValue(f"{attribute.name}[{index}]", "must be a server name, e.g. "
                               f"\"example.org\" or \"127.0.0.1:8448\", got {name!r}")


@attrs.frozen
class PolicyConfig:
    """``[policy]``: the policy wire, servletkit as a room's policy server (MSC4284).

    ``server_name`` is the name homeservers reach it by (``policy.example.org``,
    or ``127.0.0.1:8448`` for local use). Its federation listener (HTTPS) binds
    ``host``:``port``, with ``tls_certificate`` and ``tls_private_key`` (paths
    relative to the config file), or without them a self-signed pair generated
    once in ``state_dir`` (for local use only; the log says so loudly).
    ``state_dir`` also holds its two ed25519 keys, generated once and kept
    (mode 0600): the federation key and the policy key
    (``ed25519:policy_server``); the rooms it serves are in the store.
    ``server_urls`` maps server names to base URLs, overriding server discovery
    for those servers (loopback tests, private federations).
    ``max_key_fetches``: how many servers' keys (with their discovery) are fetched at
    once; a caller whose keys are not known while that many are being fetched is
    answered ``429 M_LIMIT_EXCEEDED`` (callers choose the server names, so this bounds
    the outbound work they can cause). ``tls_handshake_timeout_s``: a connection to the
    federation listener whose TLS handshake is not done by then is closed (then ``[server]
    header_timeout_s`` applies to its request's headers). ``invite_servers``: the servers
    whose invites of the policy user are accepted (empty: any server's; an invite is how a
    room names the servers whose keys the wire fetches first, so a public policy server
    should list the communities it serves).
    """

    server_name: str = attrs.field(validator=_not_empty)
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8448, validator=_tcp_port)
    tls_certificate: str | None = None
    tls_private_key: str | None = attrs.field(default=None)
    state_dir: str = ".servletkit/policy"
    server_urls: dict[str, str] = attrs.field(factory=dict, validator=_base_urls)
    max_key_fetches: int = attrs.field(default=16, validator=_positive)
    tls_handshake_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    invite_servers: tuple[str, ...] = attrs.field(default=(), validator=_server_names)

    @tls_private_key.validator
    def _pair(self, attribute: attrs.Attribute[Any], value: str | None) -> None:
        if (value is None) != (self.tls_certificate is None):
            raise InvalidValue("tls_private_key", "tls_certificate and tls_private_key go "
                               "together: set both (a real certificate), or neither (a "
                               "self-signed pair is generated for local use)")


@attrs.frozen
class AdminConfig:
    """``[admin]``: the admin API on the ``[server]`` listener (``servletkit reload``,
    ``servletkit plugins`` of a running container).

    Callers must be on loopback and present ``token``. Without one, a token is
    generated on the container's first start and kept in ``token_file``
    (relative to the config file, mode 0600), where the commands read it.
    ``enabled = false`` leaves the API out.
    """

    enabled: bool = True
    token: str = attrs.field(default="", repr=False)
    token_file: str = ".servletkit/admin-token"


@attrs.frozen
class LoggingConfig:
    """``[logging]``: how the container writes its log (``servletkit run`` to stderr,
    ``servletkit dev`` to its log file).

    ``format``: ``"text"``, one line per record for people, or ``"json"``, one JSON
    object per line with the record's ``plugin``, ``hook``, ``wire``,
    ``event_id``, ``room_id``, ``decision`` and failure ``kind`` where it has them
    (see :mod:`servletkit.container.logs`). ``decisions``: also log each plugin
    decision (allow, modify, veto) at INFO, as the audit log records it. Tokens and
    query strings are never logged.
    """

    format: Literal["text", "json"] = "text"
    decisions: bool = False


@attrs.frozen
class PluginSettings:
    """The container's keys in a ``[plugins.NAME]`` table; the rest is the plugin's own."""

    enabled: bool = True
    order: int = 0
    timeout_ms: float = attrs.field(default=1000.0, validator=_positive)
    on_error: Literal["allow", "deny"] = "allow"
    threaded: bool = False


@attrs.frozen
class PluginTable:
    """One ``[plugins.NAME]`` table: container settings, the plugin's own keys, its place."""

    name: str
    settings: PluginSettings
    options: Mapping[str, Any]
    position: int


@attrs.frozen
class Config:
    """The whole ``servletkit.toml``.

    ``path`` is the file it came from (relative paths inside it are resolved
    against its folder); ``plugins`` keeps the tables in file order.
    """

    path: Path
    server: ServerConfig = ServerConfig()
    homeserver: HomeserverConfig = HomeserverConfig()
    appservice: AppserviceConfig | None = None
    store: StoreConfig = StoreConfig()
    module: ModuleConfig = ModuleConfig()
    dev: DevConfig = DevConfig()
    policy: PolicyConfig | None = None
    admin: AdminConfig = AdminConfig()
    logging: LoggingConfig = LoggingConfig()
    plugins: tuple[PluginTable, ...] = ()

    def plugin(self, name: str) -> PluginTable | None:
        """The ``[plugins.NAME]`` table, or ``None`` if the file has none."""
        return next((table for table in self.plugins if table.name == name), None)

    def resolve(self, relative: str | Path) -> Path:
        """A path from the config, made absolute against the config file's folder."""
        return (self.path.parent / relative).resolve()


def _sections() -> dict[str, type]:
    """The container's top-level sections: every attrs-typed field of :class:`Config`.

    A wire adds its section by adding a field to :class:`Config`, typed with the
    section's class, or ``Class | None`` for a section that may be absent.
    """
    hints = typing.get_type_hints(Config)
    sections = {}
    for field in attrs.fields(Config):
        options = [arg for arg in typing.get_args(hints[field.name]) if arg is not type(None)]
        section = options[0] if len(options) == 1 else hints[field.name]
        if attrs.has(section):
            sections[field.name] = section
    return sections


def load_config(path: str | Path) -> Config:
    """Read and validate a ``servletkit.toml``; raise :class:`ConfigError` if it is wrong."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"is not valid TOML: {exc}") from None
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], path: str | Path = "<config>") -> Config:
    """Validate already-parsed TOML data; ``path`` is used in messages and to resolve paths."""
    path = Path(path).absolute()
    known_sections = _sections()
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key == "plugins":
            continue
        section_type = known_sections.get(key)
        if section_type is None:
            known = ", ".join(f"[{name}]" for name in [*known_sections, "plugins"])
            raise ConfigError(path, key, f"unknown section (known: {known})")
        sections[key] = build_section(section_type, value, path, key)
    plugins = _parse_plugins(data.get("plugins", {}), path)
    return Config(path=path, plugins=plugins, **sections)


def _parse_plugins(tables: Any, path: Path) -> tuple[PluginTable, ...]:
    if not isinstance(tables, Mapping):
        raise ConfigError(path, "plugins", f"must be a table, got {kind_of(tables)}")
    setting_names = [field.name for field in attrs.fields(PluginSettings)]
    result = []
    for position, (name, table) in enumerate(tables.items()):
        key = f"plugins.{name}"
        if not isinstance(table, Mapping):
            raise ConfigError(path, key, f"must be a table, got {kind_of(table)}")
        settings = build_section(
            PluginSettings, {k: v for k, v in table.items() if k in setting_names}, path, key
        )
        options = {k: v for k, v in table.items() if k not in setting_names}
        for option in options:
            _warn_if_near_miss(path, f"{key}.{option}", option, setting_names)
        result.append(PluginTable(name, settings, types.MappingProxyType(options), position))
    return tuple(result)


def _warn_if_near_miss(path: Path, key: str, option: str, setting_names: list[str]) -> None:
    """Log a warning if a plugin's own key ``option`` looks like a misspelt container key."""
    close = difflib.get_close_matches(option, setting_names, n=1, cutoff=NEAR_MISS_RATIO)
    if close:
        log.warning(
            "%s: %s: did you mean %r? A key that is not the container's is passed to the "
            "plugin as its own (context.config); the container's keys are %s. Rename it if it "
            "is meant for the container.", path, key, close[0], ", ".join(setting_names),
        )
