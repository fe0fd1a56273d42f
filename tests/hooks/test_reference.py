"""docs/plugins.md's hook reference is the one generated from the hook specifications."""

from __future__ import annotations

from pathlib import Path

import pytest

from servletkit.hooks import reference
from servletkit.hooks.specs import HOOKS

GUIDE = Path(__file__).parents[2] / "docs" / "plugins.md"


def test_the_guide_reference_matches_the_specs() -> None:
    documented = reference.extract(GUIDE.read_text())
    assert documented, f"{GUIDE} lost its generated hook reference section"
    assert documented == reference.render(), (
        "docs/plugins.md's hook reference drifted from servletkit/hooks/specs.py: run "
        "python -m servletkit.hooks.reference docs/plugins.md")


def test_every_hook_has_a_section_with_its_signature() -> None:
    documented = reference.extract(GUIDE.read_text())
    for name in HOOKS.names:
        assert f"### `{name}`\n\n```python\ndef {name}(" in documented


def test_a_changed_docstring_is_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    from servletkit.hooks import specs

    monkeypatch.setattr(specs.on_join_room, "__doc__", "Something else entirely.")
    assert reference.extract(GUIDE.read_text()) != reference.render()


def test_update_rewrites_only_the_reference(tmp_path: Path) -> None:
    guide = tmp_path / "plugins.md"
    guide.write_text(f"# Intro\n\n{reference.BEGIN}\nstale\n{reference.END}\n\nOutro\n")
    assert reference.update(guide) is True
    text = guide.read_text()
    assert text.startswith("# Intro\n\n") and text.endswith("\n\nOutro\n")
    assert reference.extract(text) == reference.render()
    assert reference.update(guide) is False
