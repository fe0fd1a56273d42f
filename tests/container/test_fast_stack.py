"""`servletkit run` serves on uvloop and httptools when they are importable (they are
servletkit's dependencies where the platform has wheels), and on asyncio and h11 when not."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

import httpx
import pytest

from servletkit.testing.container import start_container
from servletkit.testing.synapse import free_port

BLOCKED = ("uvloop", "httptools")


def _serving_stack(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    port = free_port()
    config = tmp_path / "servletkit.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n')
    url = f"http://127.0.0.1:{port}"
    process = start_container(config, url, workdir=tmp_path, env=env)
    try:
        stack: dict[str, str] = httpx.get(f"{url}/_servletkit/health").json()["server"]
        return stack
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


def test_installed_container_runs_on_uvloop_and_httptools(tmp_path: Path) -> None:
    for name in BLOCKED:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} has no wheel for this platform")
    assert _serving_stack(tmp_path, dict(os.environ)) == {"loop": "uvloop", "http": "httptools"}


def test_falls_back_to_asyncio_and_h11_when_not_importable(tmp_path: Path) -> None:
    """A platform without their wheels: both imports fail, and the container still serves."""
    shadow = tmp_path / "shadow"
    for name in BLOCKED:
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    pythonpath = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    assert _serving_stack(tmp_path, env) == {"loop": "asyncio", "http": "h11"}


def test_a_plain_install_requires_them() -> None:
    """``pip install servletkit`` (no extra) brings both where the platform has wheels: the
    fast path needs no extra step."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    plain = {
        requirement.name
        for requirement in map(Requirement, requires("servletkit") or [])
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""})
    }
    assert set(BLOCKED) <= plain
