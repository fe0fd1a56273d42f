"""Matrix HTML ↔ XHTML-IM (pure)."""

from __future__ import annotations

from servletkit_xmpp_gateway.formatting import html_to_xhtml_body, matrix_content, xhtml_to_html


def test_matrix_html_becomes_well_formed_xhtml_im() -> None:
    """b/i become strong/em, <br> is closed, unknown tags keep their text."""
    assert html_to_xhtml_body("<b>a</b> <i>b</i><br><font color=red>c</font>") == (
        "<strong>a</strong> <em>b</em><br/>c")


def test_unsafe_links_and_attributes_are_dropped() -> None:
    """Only http(s)/mailto/xmpp/matrix hrefs survive; other attributes go."""
    assert html_to_xhtml_body('<a href="javascript:x()" onclick="y">t</a>') == "<a>t</a>"
    assert html_to_xhtml_body('<a href="https://x.org/?a=1&b=2">t</a>') == (
        '<a href="https://x.org/?a=1&amp;b=2">t</a>')


def test_unclosed_tags_are_closed_and_text_escaped() -> None:
    """The result always parses as XML."""
    assert html_to_xhtml_body("<b>1 < 2 & <i>3") == "<strong>1 &lt; 2 &amp; <em>3</em></strong>"


def test_xhtml_im_becomes_matrix_html() -> None:
    """XHTML-IM markup is kept (whitelisted) for formatted_body."""
    assert xhtml_to_html('<p>hi <em>you</em><script>x</script></p>') == "<p>hi <em>you</em>x</p>"


def test_plain_text_gets_no_formatted_body() -> None:
    """HTML that says no more than the body is left out."""
    assert matrix_content("a < b", "a &lt; b") == {"msgtype": "m.text", "body": "a < b"}
    assert matrix_content("a", "<em>a</em>")["formatted_body"] == "<em>a</em>"
