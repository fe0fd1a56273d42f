"""Mentions as text: Matrix pills and ``m.mentions`` ↔ nicks in a body (no servers)."""

from __future__ import annotations

from servletkit_xmpp_gateway.mentions import PERMALINK, content_in, out

HUMAN = "@_xmpp_human=40localhost:localhost"
NICKS = {HUMAN: "human", "@mo:localhost": "Mo"}


def _pill(user_id: str, text: str) -> str:
    return f'<a href="{PERMALINK}{user_id}">{text}</a>'


def test_a_pill_is_named_by_the_nick() -> None:
    """The pill's text (a display name, or the user ID) becomes the occupant's nick."""
    content = {"msgtype": "m.text", "body": "Human Being: look",
               "format": "org.matrix.custom.html",
               "formatted_body": f"{_pill(HUMAN, 'Human Being')}: look"}
    changed, mentioned = out(content, NICKS)
    assert changed["body"] == "human: look"
    assert changed["formatted_body"] == "human: look"
    assert mentioned == ["human"]


def test_an_unnamed_mention_puts_the_nick_in_front() -> None:
    """``m.mentions`` alone, with a body that does not say the nick, gets ``nick: ``."""
    content = {"msgtype": "m.text", "body": "please look",
               "m.mentions": {"user_ids": [HUMAN, "@stranger:localhost"]}}
    changed, mentioned = out(content, NICKS)
    assert changed["body"] == "human: please look" and mentioned == ["human"]
    said = {"msgtype": "m.text", "body": "human, look", "m.mentions": {"user_ids": [HUMAN]}}
    assert out(said, NICKS)[0]["body"] == "human, look"


def test_a_message_without_mentions_is_unchanged() -> None:
    """No pill of someone in the MUC, no ``m.mentions``: the same content."""
    content = {"msgtype": "m.text", "body": "hi", "format": "org.matrix.custom.html",
               "formatted_body": f"hi {_pill('@else:localhost', 'else')}"}
    assert out(content, NICKS) == (content, [])


def test_a_nick_in_an_xmpp_message_mentions_its_matrix_user() -> None:
    """A Matrix user's nick as a word gets a pill and ``m.mentions``; inside a word, not."""
    changed = content_in({"msgtype": "m.text", "body": "Mo: a <b> & c, Moment"},
                         {"Mo": "@mo:localhost", "Mo (2)": "@mo2:localhost"})
    assert changed["m.mentions"] == {"user_ids": ["@mo:localhost"]}
    assert changed["formatted_body"] == (
        f"{_pill('@mo:localhost', 'Mo')}: a &lt;b&gt; &amp; c, Moment")
    assert content_in({"msgtype": "m.text", "body": "Moment"}, {"Mo": "@mo:localhost"}) == {
        "msgtype": "m.text", "body": "Moment"}


def test_formatted_xmpp_text_gets_pills_in_text_only() -> None:
    """Pills go into the text of formatted bodies, not into tags or existing links."""
    html = '<a href="https://x.org/Mo">Mo</a> <strong>Mo (2)</strong>'
    changed = content_in({"msgtype": "m.text", "body": "Mo Mo (2)", "format":
                          "org.matrix.custom.html", "formatted_body": html},
                         {"Mo": "@mo:localhost", "Mo (2)": "@mo2:localhost"})
    assert changed["formatted_body"] == (
        f'<a href="https://x.org/Mo">Mo</a> <strong>{_pill("@mo2:localhost", "Mo (2)")}</strong>')
    assert changed["m.mentions"] == {"user_ids": ["@mo2:localhost", "@mo:localhost"]}
