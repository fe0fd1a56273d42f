"""The example plugins, through servletkit's test kit (the ``plugin_runner`` fixture)."""

from __future__ import annotations

from typing import Any

from servletkit_examples import word_filter
from servletkit_examples.formatter import Formatter

from servletkit.testing import assert_allowed, assert_modified, assert_vetoed, message, state


async def test_word_filter_vetoes_configured_words(plugin_runner: Any) -> None:
    run = await plugin_runner(word_filter, {"words": ["Spam"], "reason": "no spam here"},
                              name="word_filter")
    assert_vetoed(await run.send(message("buy SPAM now")), reason="no spam here")
    assert_allowed(await run.send(message("hello")))
    assert_allowed(await run.send(state("m.room.topic", {"topic": "spam"})))


async def test_word_filter_has_a_default_word(plugin_runner: Any) -> None:
    run = await plugin_runner(word_filter, name="word_filter")
    assert_vetoed(await run.send(message("this is forbidden")), reason="'forbidden'")


async def test_formatter_shouts(plugin_runner: Any) -> None:
    run = await plugin_runner(Formatter(), name="formatter")
    assert_modified(await run.send(message("/shout make it loud")),
                    {"msgtype": "m.text", "body": "MAKE IT LOUD"})
    assert_allowed(await run.send(message("quiet")))


async def test_formatter_prefix_is_configurable(plugin_runner: Any) -> None:
    run = await plugin_runner(Formatter(), {"prefix": "!loud "}, name="formatter")
    assert_modified(await run.send(message("!loud hi")), {"msgtype": "m.text", "body": "HI"})
    assert_allowed(await run.send(message("/shout hi")))
