"""pip, run in the running container's Python, for ``servletkit deploy`` and ``undeploy``.

The container names its interpreter in the admin API (``GET .../plugins``), so a
plugin is installed where the container imports from, whichever Python runs the
command. Failures are :class:`PipFailed`, with pip's last lines.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

PIP_TIMEOUT_S: Final = 600.0


class PipFailed(Exception):
    """pip could not install or uninstall; the message ends with what pip said."""


def _run(python: str, args: Sequence[str], what: str) -> None:
    command = [python, "-m", "pip", *args, "--disable-pip-version-check"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PipFailed(f"could not run pip in {python} to {what}: {exc}") from None
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if line.strip()][-5:]
        raise PipFailed(f"pip could not {what} (exit status {done.returncode}):\n  "
                        + "\n  ".join(said))


def install(python: str, target: str, *, no_deps: bool = False,
            no_build_isolation: bool = False) -> list[str]:
    """``pip install target`` into ``python``'s environment; the distributions it installed.

    ``target`` is a path to a project or wheel, or a requirement (``quiet-room==0.2``).
    An empty list means pip found it already installed.
    """
    if Path(target).exists():
        target = str(Path(target).resolve())
    with tempfile.TemporaryDirectory(prefix="servletkit-deploy-") as folder:
        report = Path(folder) / "report.json"
        args = ["install", "--quiet", "--report", str(report), target]
        args += ["--no-deps"] if no_deps else []
        args += ["--no-build-isolation"] if no_build_isolation else []
        _run(python, args, f"install {target}")
        installed = json.loads(report.read_text(encoding="utf-8")).get("install", [])
    return [str(item["metadata"]["name"]) for item in installed]


def uninstall(python: str, distribution: str) -> None:
    """``pip uninstall -y distribution`` in ``python``'s environment."""
    _run(python, ["uninstall", "--yes", "--quiet", distribution], f"uninstall {distribution}")
