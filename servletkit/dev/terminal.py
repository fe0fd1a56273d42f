"""What ``servletkit dev`` shows in its terminal: the plugins' own log lines and their failures.

Everything goes to the log file; the terminal gets one line per record of a
plugin's ``context.log`` and per plugin failure (rate-limited).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final, TextIO

from servletkit.container.config import LoggingConfig
from servletkit.container.logs import apply_decisions, formatter
from servletkit.hooks.context import PLUGIN_LOGGER_PREFIX
from servletkit.hooks.dispatcher import FAILURE_RECORD_ATTRIBUTE, PluginFailure
from servletkit.throttle import Throttle

FAILURE_LINE_INTERVAL_S: Final = 5.0


class _ForTerminal(logging.Filter):
    """What the terminal shows: the plugins' own records (``context.log``), and plugin
    failures (from the dispatcher), at most one line per plugin and hook every
    :data:`FAILURE_LINE_INTERVAL_S` seconds; the next line shown counts the ones held back.
    """

    def __init__(self, throttle: Throttle) -> None:
        super().__init__()
        self._throttle = throttle

    def filter(self, record: logging.LogRecord) -> bool:
        failure: PluginFailure | None = getattr(record, FAILURE_RECORD_ATTRIBUTE, None)
        if failure is None:
            return record.name.startswith(PLUGIN_LOGGER_PREFIX)
        held_back = self._throttle.allow((failure.plugin, failure.hook))
        if held_back is None:
            return False
        record.held_back = held_back  # for _PluginLines
        return True


class _PluginLines(logging.Formatter):
    """``  [word_filter] message`` for the terminal; tracebacks stay in the log file."""

    def __init__(self, log_file: Path) -> None:
        super().__init__()
        self._log_file = log_file

    def format(self, record: logging.LogRecord) -> str:
        failure: PluginFailure | None = getattr(record, FAILURE_RECORD_ATTRIBUTE, None)
        if failure is None:
            line = f"  [{record.name.removeprefix(PLUGIN_LOGGER_PREFIX)}] {record.getMessage()}"
        else:
            line = f"  [{failure.plugin}] failed in {failure.hook}: {failure.detail}"
        notes = []
        if record.exc_info:
            notes.append(f"traceback in {self._log_file}")
        if held_back := getattr(record, "held_back", 0):
            notes.append(f"{held_back} more since the last line")
        return f"{line} ({'; '.join(notes)})" if notes else line


def route_logs(
    log_file: Path, out: TextIO, config: LoggingConfig | None = None
) -> Callable[[], None]:
    """Every log record to ``log_file`` in ``[logging] format``; the plugins' own
    (``context.log``) and plugin failures also to ``out`` (one line each, see
    :class:`_ForTerminal`). ``config``: ``[logging]``, its defaults if ``None``.

    Returns a function that puts the previous logging set-up back.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    config = config or LoggingConfig()
    to_file.setFormatter(formatter(config))
    apply_decisions(config)
    to_terminal = logging.StreamHandler(out)
    to_terminal.addFilter(_ForTerminal(Throttle(FAILURE_LINE_INTERVAL_S)))
    to_terminal.setFormatter(_PluginLines(log_file))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [to_file, to_terminal]
    root.setLevel(logging.INFO)

    def undo() -> None:
        root.handlers[:], level = saved
        root.setLevel(level)
        to_file.close()

    return undo
