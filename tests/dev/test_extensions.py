"""Dev extensions: flags of ``servletkit dev`` found by entry point, imported only when asked."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from servletkit.container.cli import build_parser
from servletkit.dev import extensions
from servletkit.dev.errors import DevError

NOT_IMPORTED = EntryPoint("fake", "no_such_package_anywhere:start", extensions.GROUP)
NOT_CALLABLE = EntryPoint("plain", "servletkit.dev.extensions:GROUP", extensions.GROUP)


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two extensions 'installed': one whose module does not exist, one not callable."""
    monkeypatch.setattr(extensions, "available_extensions",
                        lambda: {"fake": NOT_IMPORTED, "plain": NOT_CALLABLE})


def test_each_installed_extension_is_a_flag_without_importing_it(installed: None) -> None:
    """Building the parser reads names only (the module of 'fake' does not even exist)."""
    args = build_parser().parse_args(["dev", "--fake", "--plain"])
    assert args.extensions == ["fake", "plain"]
    assert build_parser().parse_args(["dev"]).extensions == []


def test_a_missing_or_broken_extension_is_a_clear_error(installed: None) -> None:
    with pytest.raises(DevError, match="no dev extension 'nope' is installed"):
        extensions.load_extension("nope")
    with pytest.raises(DevError, match=r"'fake' .* cannot be imported: ModuleNotFoundError"):
        extensions.load_extension("fake")
    with pytest.raises(DevError, match=r"'plain' .* is not callable"):
        extensions.load_extension("plain")
