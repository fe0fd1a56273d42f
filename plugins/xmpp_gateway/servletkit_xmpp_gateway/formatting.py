"""Formatted text across the gateway: Matrix HTML ↔ XHTML-IM (XEP-0071), or plain text.

Both directions run the markup through one whitelist (:class:`_Cleaner`), which
also makes it well-formed XML: Matrix HTML may say ``<br>``, XHTML-IM needs
``<br/>``. What the whitelist drops keeps its text, so nothing said is lost.
"""

from __future__ import annotations

from html import escape
from html.parser import HTMLParser

XHTML_NS = "http://www.w3.org/1999/xhtml"
# Matrix name → XHTML-IM name (XEP-0071's recommended profile has strong/em, not b/i)
TO_XHTML = {"b": "strong", "strong": "strong", "i": "em", "em": "em", "code": "code",
            "a": "a", "br": "br", "p": "p", "blockquote": "blockquote", "ul": "ul",
            "ol": "ol", "li": "li", "pre": "pre", "del": "del", "s": "del", "u": "u",
            "span": "span", "cite": "cite"}
TO_HTML = {**{v: v for v in TO_XHTML.values()}}
_VOID = {"br"}
_ATTRIBUTES = {"a": {"href"}}


class _Cleaner(HTMLParser):
    """Rewrites markup to the whitelisted, renamed tags; escapes all text."""

    def __init__(self, names: dict[str, str]) -> None:
        super().__init__(convert_charrefs=True)
        self.names = names
        self.out: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        name = self.names.get(tag)
        if name is None:
            return
        kept = "".join(f' {k}="{escape(v or "")}"' for k, v in attrs
                       if k in _ATTRIBUTES.get(name, ()) and _safe_value(k, v))
        if name in _VOID:
            self.out.append(f"<{name}{kept}/>")
        else:
            self.out.append(f"<{name}{kept}>")
            self.open.append(name)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        name = self.names.get(tag)
        if name in _VOID:
            self.out.append(f"<{name}/>")
        elif name is not None:
            self.handle_starttag(tag, attrs)
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        name = self.names.get(tag)
        if name is None or name in _VOID or name not in self.open:
            return
        while self.open:  # close what was left open inside it
            top = self.open.pop()
            self.out.append(f"</{top}>")
            if top == name:
                break

    def handle_data(self, data: str) -> None:
        self.out.append(escape(data, quote=False))

    def result(self) -> str:
        self.close()
        return "".join(self.out) + "".join(f"</{t}>" for t in reversed(self.open))


def _safe_value(key: str, value: str | None) -> bool:
    return key != "href" or (value or "").lower().startswith(("http:", "https:", "mailto:",
                                                              "xmpp:", "matrix:"))


def html_to_xhtml_body(html: str) -> str:
    """Matrix ``formatted_body`` → the well-formed inner XML of an XHTML-IM ``<body>``."""
    cleaner = _Cleaner(TO_XHTML)
    cleaner.feed(html)
    return cleaner.result()


def xhtml_to_html(xhtml: str) -> str:
    """The inner markup of an XHTML-IM ``<body>`` → Matrix ``formatted_body``."""
    cleaner = _Cleaner(TO_HTML)
    cleaner.feed(xhtml)
    return cleaner.result()


def matrix_content(body: str, html: str | None) -> dict[str, str]:
    """``m.room.message`` content: ``body``, plus ``formatted_body`` when ``html`` has markup."""
    content = {"msgtype": "m.text", "body": body}
    if html and html.strip() and html.strip() != escape(body, quote=False):
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = html
    return content
