"""stop_process: the one SIGTERM → wait → SIGKILL sequence for child processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from servletkit.dev.embedded_synapse import stop_process

IGNORES_SIGTERM = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('ready', flush=True); time.sleep(60)")


def python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_a_process_that_obeys_sigterm_ends_with_it() -> None:
    """A sleeping child ends on SIGTERM; its status says so."""
    process = python("import time; time.sleep(60)")
    try:
        assert stop_process(process, timeout=10) == -signal.SIGTERM
    finally:
        process.kill()
        process.communicate()


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    """SIGKILL follows once the timeout has passed, not before, and the process is reaped."""
    process = python(IGNORES_SIGTERM)
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        start = time.monotonic()
        assert stop_process(process, timeout=0.3) == -signal.SIGKILL
        assert time.monotonic() - start >= 0.3
        assert process.returncode == -signal.SIGKILL
    finally:
        process.kill()
        process.communicate()


def test_an_exited_process_is_only_reaped() -> None:
    """A child that has ended keeps its own status."""
    process = python("raise SystemExit(3)")
    process.wait(10)
    assert stop_process(process, timeout=10) == 3
    process.communicate()
