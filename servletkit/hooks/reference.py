"""The hook reference of ``docs/plugins.md``, generated from the hook specifications.

``docs/plugins.md`` holds it between :data:`BEGIN` and :data:`END`; a test
fails when the two drift apart. To regenerate it after changing ``specs.py``::

    python -m servletkit.hooks.reference docs/plugins.md
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Final

from servletkit.hooks import specs
from servletkit.hooks.specs import HOOKS

BEGIN: Final = "<!-- hook reference: generated from servletkit/hooks/specs.py -->"
END: Final = "<!-- end of hook reference -->"

_KINDS: Final = {
    "lifecycle": "Lifecycle",
    "interception": "Interception: the answer decides",
    "observation": "Observation: the answer is ignored",
    "query": "Queries: the first answer wins (appservice wire)",
}


def markdown(doc: str) -> str:
    """A docstring's reST roles and fields in Markdown."""
    doc = re.sub(r":\w+:`~?(?:[\w.]*\.)?(\w+)`", r"`\1`", doc)
    doc = re.sub(r"^:param (\w+):", r"- `\1`:", doc, flags=re.MULTILINE)
    doc = re.sub(r"^:returns:", "- returns:", doc, flags=re.MULTILINE)
    return re.sub(r"::$", ":", doc, flags=re.MULTILINE)


def _hook(name: str) -> str:
    spec = getattr(specs, name)
    signature = inspect.signature(spec)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    facts = HOOKS.facts[name]
    lines = [f"### `{name}`", "", "```python", f"def {name}({params}) -> "
             f"{signature.return_annotation}", "```", ""]
    notes = [f"kind: {facts.kind}"]
    if facts.modifiable:
        notes.append("`Modify` may change its event")
    if facts.module is not None:
        notes.append("Synapse callbacks: " + ", ".join(
            f"`{callback.name}`" + (" (fails open)" if callback.fail_open else "")
            for callback in facts.module.callbacks))
    lines += ["*" + "; ".join(notes) + "*", "", markdown(inspect.getdoc(spec) or ""), ""]
    return "\n".join(lines)


def render() -> str:
    """The reference: every hook of the table, by kind, in the specs' order."""
    parts = [BEGIN, ""]
    for kind, title in _KINDS.items():
        parts += [f"## {title}", ""]
        parts += [_hook(name) for name, facts in HOOKS.facts.items() if facts.kind == kind]
    parts.append(END)
    return "\n".join(parts)


def extract(text: str) -> str:
    """The reference part of a guide's ``text`` (``""`` if it has none)."""
    if BEGIN not in text or END not in text:
        return ""
    return text[text.index(BEGIN):text.index(END) + len(END)]


def update(path: Path) -> bool:
    """Rewrite the reference in the guide at ``path``; whether it changed."""
    text = path.read_text()
    current = extract(text)
    if not current:
        raise ValueError(f"{path} has no {BEGIN!r} … {END!r} section")
    fresh = text.replace(current, render())
    path.write_text(fresh)
    return fresh != text


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(f"{argument}: {'updated' if update(Path(argument)) else 'up to date'}")
