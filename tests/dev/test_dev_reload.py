"""Issue 13's "done when": while `servletkit dev` runs, a newcomer saves their plugin and a
Matrix client sees the change within a second, nothing restarted."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from servletkit.testing import python_path_env
from servletkit.testing.dev import DevProcess
from tests.container.reload_support import PluginOnDisk
from tests.dev.test_dev_command import START_TIMEOUT_S, STOP_TIMEOUT_S, Client, write_config

pytestmark = pytest.mark.integration

SAVE_TO_SERVING_LIMIT_S = 2.0  # the target is 0.5 s; a shared machine gets some slack

VETO = '''
@hookimpl
def on_send_event(event, context):
    if event.content.get("body") == "ping":
        return Veto("{answer}")
    return None
'''


def test_saving_an_editable_plugin_changes_what_the_client_sees(tmp_path: Path) -> None:
    """The client's message is refused with the old reason, then with the new one, once
    the terminal has said the plugin was reloaded; the process never restarted."""
    plugin = PluginOnDisk(tmp_path / "site", "edity", editable=True)
    plugin.write("0.1", VETO.format(answer="first answer"))
    config = write_config(tmp_path / "project", {"edity": {}})
    run = DevProcess.start(config, python_path_env(tmp_path / "site"), timeout=START_TIMEOUT_S)
    client = Client(run.facts)
    try:
        assert "watching the source of" in run.stdout and "edity" in run.stdout
        room_id = client.http.post("/_matrix/client/v3/createRoom", json={}).json()["room_id"]
        assert client.send(room_id, "ping").json()["error"].startswith("first answer")
        saved = time.monotonic()
        plugin.write("0.1", VETO.format(answer="second answer"))
        while True:
            error = client.send(room_id, "ping").json().get("error", "")
            if error.startswith("second answer"):
                break
            assert time.monotonic() - saved < SAVE_TO_SERVING_LIMIT_S, run.stdout
            time.sleep(0.02)
        assert re.search(r"servletkit dev: edity: reloaded 0\.1#1 -> 0\.1#2 in \d+ ms",
                         run.stdout), run.stdout
        assert run.facts["pids"]["servletkit"] == run.process.pid and run.process.poll() is None
    finally:
        client.close()
        run.stop(STOP_TIMEOUT_S)
        plugin.forget()
