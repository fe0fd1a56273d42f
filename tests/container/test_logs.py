"""``[logging] format = "json"`` and ``decisions``: one JSON object per line, with the
plugin, hook, wire, event and room where a record has them, and never a token."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import httpx

from servletkit.container.config import LoggingConfig
from servletkit.container.logs import JsonLines, formatter
from servletkit.hooks._chain import PluginFailure
from servletkit.hooks.context import PLUGIN_LOGGER_PREFIX
from servletkit.hooks.dispatcher import FAILURE_RECORD_ATTRIBUTE
from tests.appservice.support import new_event
from tests.container.test_run_hardening import HS_TOKEN, run, stop


def record(name: str, message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.WARNING, __file__, 1, message, (), None)
    made.__dict__.update(extra)
    return made


def test_json_lines_carry_the_failure_and_the_plugin() -> None:
    """A plugin failure's record gives plugin, hook and kind; a plugin's own record its name;
    an exception its traceback; each is one line of JSON."""
    failure = PluginFailure("word_filter", "on_send_event", "raised", "boom")
    lines = [
        JsonLines().format(record("servletkit.dispatcher", "failed",
                                  **{FAILURE_RECORD_ATTRIBUTE: failure})),
        JsonLines().format(record(PLUGIN_LOGGER_PREFIX + "formatter", "made it")),
    ]
    try:
        raise ValueError("bad")
    except ValueError:
        with_exception = record("servletkit.x", "oops", exc_info=sys.exc_info())
    lines.append(JsonLines().format(with_exception))
    assert all("\n" not in line for line in lines)
    first, second, third = (json.loads(line) for line in lines)
    assert first["plugin"] == "word_filter" and first["hook"] == "on_send_event"
    assert first["kind"] == "raised" and first["level"] == "WARNING"
    assert second["plugin"] == "formatter" and second["message"] == "made it"
    assert "ValueError: bad" in third["exception"]
    assert type(formatter(LoggingConfig())) is logging.Formatter


def test_servletkit_run_logs_json_lines_with_decisions(tmp_path: Path) -> None:
    """Every line `servletkit run` writes is JSON; the veto is one line naming the plugin,
    hook, wire, decision, event and room; the access log has no query string."""
    process, url = run(tmp_path, sections='[logging]\nformat = "json"\ndecisions = true',
                       plugins={"word_filter": {"words": ["spam"]}})
    event = new_event(room_id="!logged:localhost", body="buy spam")
    try:
        answer = httpx.put(f"{url}/_matrix/app/v1/transactions/t1?access_token={HS_TOKEN}",
                           json={"events": [event]})
        assert answer.status_code == 200
    finally:
        output = stop(process, tmp_path)
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert "SECRET" not in output
    decisions = [line for line in lines if line["logger"] == "servletkit.decisions"]
    assert [{key: line.get(key) for key in
             ("plugin", "hook", "wire", "decision", "event_id", "room_id")}
            for line in decisions] == [{
                "plugin": "word_filter", "hook": "on_send_event", "wire": "appservice",
                "decision": "veto", "event_id": event["event_id"],
                "room_id": "!logged:localhost"}]
    own = [line for line in lines if line.get("plugin") == "word_filter"
           and line["logger"].startswith(PLUGIN_LOGGER_PREFIX)]
    assert own and "vetoed" in own[0]["message"]
    assert any(line["logger"] == "uvicorn.access"
               and '"PUT /_matrix/app/v1/transactions/t1 HTTP/1.1" 200' in line["message"]
               for line in lines)
