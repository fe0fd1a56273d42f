"""scripts/bootstrap says what it does while pip is busy, and fails when pip fails.

It runs on a copy of the script whose ``.venv/bin/python`` is a stub standing in
for pip (the real installation takes about a minute; the README's commands run it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

STUB_PYTHON = """#!/bin/sh
if [ "$1" = "-m" ]; then
  shift 2
  echo "pip $*"
  echo "WARNING: Location 'file:///index/x/' is ignored" >&2
  exit "$PIP_STATUS"
fi
exit 0
"""


def bootstrap(tmp_path: Path, pip_status: int) -> subprocess.CompletedProcess[str]:
    """Run a copy of scripts/bootstrap in ``tmp_path`` with the stub pip exiting ``pip_status``."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "bootstrap", tmp_path / "scripts" / "bootstrap")
    (tmp_path / "plugins" / "examples").mkdir(parents=True)
    (tmp_path / "plugins" / "examples" / "pyproject.toml").write_text("")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STUB_PYTHON)
    python.chmod(0o755)
    return subprocess.run(
        [str(tmp_path / "scripts" / "bootstrap")], env={"PATH": "/usr/bin:/bin",
                                                      "PIP_STATUS": str(pip_status)},
        capture_output=True, text=True, timeout=30, check=False,
    )


def test_it_announces_the_installation_before_pip_and_done_after(tmp_path: Path) -> None:
    """A line naming what is installed and how long it takes, pip, then 'done'."""
    result = bootstrap(tmp_path, 0)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("bootstrap: installing servletkit with the pinned Synapse")
    assert "bundled plugins (examples)" in lines[0] and "about a minute" in lines[0]
    assert lines[1].startswith("pip install --quiet")
    assert lines[-1].startswith("bootstrap: done")
    assert "is ignored" not in result.stdout + result.stderr


@pytest.mark.parametrize("status", [1, 2])
def test_it_exits_with_pips_status(tmp_path: Path, status: int) -> None:
    """pip failing ends bootstrap with pip's exit status and a line saying so; no 'done'."""
    result = bootstrap(tmp_path, status)
    assert result.returncode == status
    assert f"bootstrap: pip failed (exit status {status})" in result.stderr
    assert "bootstrap: done" not in result.stdout
