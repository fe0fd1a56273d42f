"""Malformed transactions: their malformed items logged once per transaction, in summary."""

from __future__ import annotations

import logging

from tests.appservice.support import AUTH, Counts, new_event


async def test_malformed_items_are_logged_once_in_summary(make_wire, caplog):
    """1,000 malformed events and 1,000 malformed ephemeral items make one warning each,
    with the count and the first three problems; a long transaction id is truncated."""
    plugin = Counts()
    _, client = await make_wire({"counts": plugin})
    txn_id = "t" * 64 + "x" * 4_000
    body = {"events": [new_event(), *(["not an event"] * 1_000)],
            "ephemeral": [{"type": 5}] * 1_000}
    caplog.set_level(logging.WARNING, logger="servletkit.appservice")
    answer = await client.put(f"/_matrix/app/v1/transactions/{txn_id}", json=body,
                              headers=AUTH)
    assert answer.status_code == 200
    assert plugin.stored == 1
    warnings = [record.getMessage() for record in caplog.records
                if record.name == "servletkit.appservice"]
    assert len(warnings) == 2, warnings
    events, ephemeral = warnings
    assert events.startswith(f"transaction {'t' * 64}: skipped 1000 malformed events (item 1: ")
    assert ephemeral.startswith(f"transaction {'t' * 64}: skipped 1000 malformed ephemeral")
    for message in warnings:
        assert "x" not in message.partition(":")[0]
        assert message.count("item ") == 3 and message.endswith("; ...)")
