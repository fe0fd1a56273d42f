"""The container's log set-up: ``[logging] format`` (text or JSON lines) and ``decisions``.

``servletkit run`` logs to stderr (:func:`run_log_config`, uvicorn's own loggers
included); ``servletkit dev`` to its log file (:func:`servletkit.dev.terminal.route_logs`,
through :func:`formatter`). In JSON, each record is one object on one line::

    {"time": "2026-11-28T10:41:07.532Z", "level": "WARNING", "logger": "servletkit.dispatcher",
     "message": "...", "plugin": "word_filter", "hook": "on_send_event", "kind": "raised"}

with whichever of the fields :data:`FIELDS` the record has: a plugin failure
(the dispatcher's), a plugin's own ``context.log`` (``plugin``), a decision
(``[logging] decisions``: :data:`servletkit.store.units.DECISIONS_LOGGER`). Tokens
are never in them: no log line of the container names one, and the access
log's query strings are dropped (:class:`~servletkit.wires.http.WithoutQueryString`).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import Any, Final

from servletkit.container.config import LoggingConfig
from servletkit.hooks.context import PLUGIN_LOGGER_PREFIX
from servletkit.hooks.dispatcher import FAILURE_RECORD_ATTRIBUTE, PluginFailure
from servletkit.store.units import DECISIONS_LOGGER

FIELDS: Final = ("plugin", "hook", "wire", "event_id", "room_id", "decision", "kind")
"""Record attributes (``extra=``) copied into a JSON line when present."""

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    """One JSON object per record, on one line (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name.startswith(PLUGIN_LOGGER_PREFIX):
            line["plugin"] = record.name.removeprefix(PLUGIN_LOGGER_PREFIX)
        failure: PluginFailure | None = getattr(record, FAILURE_RECORD_ATTRIBUTE, None)
        if failure is not None:
            line.update(plugin=failure.plugin, hook=failure.hook, kind=failure.kind)
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(config: LoggingConfig) -> logging.Formatter:
    """The formatter ``[logging] format`` names."""
    return JsonLines() if config.format == "json" else logging.Formatter(TEXT_FORMAT)


def apply_decisions(config: LoggingConfig) -> None:
    """Log each decision at INFO (``[logging] decisions``), or not (the default)."""
    level = logging.INFO if config.decisions else logging.WARNING
    logging.getLogger(DECISIONS_LOGGER).setLevel(level)


def run_log_config(config: LoggingConfig) -> dict[str, Any]:
    """``servletkit run``'s logging: uvicorn's set-up, and every other record (the
    container's: plugins, wires, failures) at INFO on stderr, all in ``[logging] format``."""
    from uvicorn.config import LOGGING_CONFIG

    setup = copy.deepcopy(LOGGING_CONFIG)
    if config.format == "json":
        for name in setup["formatters"]:
            setup["formatters"][name] = {"()": JsonLines}
        setup["formatters"]["servletkit"] = {"()": JsonLines}
    else:
        setup["formatters"]["servletkit"] = {"format": TEXT_FORMAT}
    setup["handlers"]["servletkit"] = {"class": "logging.StreamHandler",
                                       "formatter": "servletkit", "stream": "ext://sys.stderr"}
    setup["root"] = {"handlers": ["servletkit"], "level": "INFO"}
    return setup
