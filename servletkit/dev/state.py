"""The state folder of `servletkit dev`: where things live, what is made once, who owns it."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TextIO

import attrs

from servletkit.container.config import Config
from servletkit.dev.errors import DevError
from servletkit.files import FolderBusy, claim_lock, write_private


@attrs.frozen
class DevPaths:
    """Where ``servletkit dev`` keeps things, all under ``root`` (the state folder)."""

    root: Path

    @classmethod
    def for_config(cls, config: Config) -> DevPaths:
        """The state folder ``[dev] state_dir`` of ``config``, made absolute."""
        return cls(config.resolve(config.dev.state_dir))

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def run_file(self) -> Path:
        return self.root / "dev.json"

    @property
    def synapse(self) -> Path:
        return self.root / "synapse"

    @property
    def lock(self) -> Path:
        return self.root / "dev.lock"

    @property
    def registration(self) -> Path:
        return self.root / "appservice-registration.yaml"

    @property
    def container_log(self) -> Path:
        return self.root / "servletkit.log"

    @property
    def synapse_log(self) -> Path:
        return self.synapse / "synapse.log"


def _secret() -> str:
    return secrets.token_urlsafe(32)


@attrs.frozen
class DevState:
    """What ``servletkit dev`` generates once and reuses on every later start."""

    as_token: str = attrs.field(factory=_secret, repr=False)
    hs_token: str = attrs.field(factory=_secret, repr=False)
    module_secret: str = attrs.field(factory=_secret, repr=False)
    registration_shared_secret: str = attrs.field(factory=_secret, repr=False)
    macaroon_secret_key: str = attrs.field(factory=_secret, repr=False)
    form_secret: str = attrs.field(factory=_secret, repr=False)
    test_password: str = attrs.field(factory=lambda: secrets.token_urlsafe(12), repr=False)
    homeserver_port: int | None = None
    policy_port: int | None = None  # the policy wire's; part of its server name, so kept

    @classmethod
    def load(cls, path: Path) -> DevState:
        """The state saved at ``path``, or a fresh one if there is none.

        Keys a newer or older version does not know are dropped or generated.
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise DevError(f"{path}: cannot be read ({exc}); delete it to generate new "
                           f"secrets (the homeserver's users and rooms are kept)") from None
        known = {field.name for field in attrs.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def save(self, path: Path) -> None:
        """Write the state to ``path``, readable by its owner only."""
        write_private(path, json.dumps(attrs.asdict(self), indent=2))


def claim_state_folder(paths: DevPaths) -> TextIO:
    """Lock the state folder for this process; raise :class:`DevError` if another holds it.

    Returns the open lock file: the folder is this process's until it is
    closed (or the process ends). Of two ``servletkit dev`` started at the same
    moment, exactly one gets it. The folder must exist.
    """
    try:
        return claim_lock(paths.lock)
    except FolderBusy as busy:
        owner, kill = (f"pid {busy.owner}", f", or kill {busy.owner}") if busy.owner else (
            "just starting", "")
        raise DevError(f"servletkit dev is already running for {paths.root} ({owner}): "
                       f"stop it first (Ctrl-C in its terminal{kill})") from None
