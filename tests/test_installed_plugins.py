"""The README's test command passes whatever plugins the user has installed (issue 8).

Following the README's plugin tutorial installs a plugin into ``.venv``; the tests
that run ``servletkit`` on a config file (and so see every installed plugin) must
still pass. Here a plugin that vetoes every message is made visible to a nested
pytest run of those test modules.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from servletkit.testing import plugin_site, python_path_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
# the test modules whose servletkit subprocesses load the installed plugins (and the
# config writer that tests/dev/test_dev_restarts.py shares, left out here for its 16 s)
SENSITIVE_MODULES = ["tests/container/test_entry_points.py", "tests/dev/test_dev_command.py"]

MEDDLER = '''
from servletkit import Veto, hookimpl


@hookimpl
def on_send_event(event, context):
    return Veto("meddler vetoes every message")
'''


def test_an_extra_installed_plugin_changes_no_outcome(tmp_path: Path) -> None:
    """With a plugin that vetoes everything installed, the sensitive modules still pass."""
    env = python_path_env(plugin_site(tmp_path, "meddler", MEDDLER))
    config = tmp_path / "servletkit.toml"
    config.write_text("")
    listed = subprocess.run(
        [sys.executable, "-m", "servletkit.container.cli", "plugins", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert "meddler-plugin 0.1" in listed.stdout  # installed, as far as servletkit can tell
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--basetemp={tmp_path / 'basetemp'}", *SENSITIVE_MODULES],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
