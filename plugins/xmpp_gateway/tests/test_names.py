"""Names across the gateway: aliases, virtual users, puppet JIDs, nicks (pure, no servers)."""

from __future__ import annotations

import pytest
from servletkit_xmpp_gateway import names


class TestAliases:
    def test_an_alias_names_a_room_of_the_muc_service(self) -> None:
        """#_xmpp_lobby_conference.localhost:localhost is lobby@conference.localhost."""
        alias = "#" + names.alias_localpart("_xmpp_", "lobby", "conference.localhost")
        assert names.room_of_alias(alias + ":localhost", "_xmpp_",
                                   "conference.localhost") == "lobby@conference.localhost"

    @pytest.mark.parametrize("alias", [
        "#_xmpp__conference.localhost:localhost",   # no room
        "#_xmpp_lobby_other.example:localhost",     # another MUC service
        "#lobby_conference.localhost:localhost",    # not our prefix
    ])
    def test_other_aliases_are_not_ours(self, alias: str) -> None:
        """Aliases without a room, for another service or another prefix give None."""
        assert names.room_of_alias(alias, "_xmpp_", "conference.localhost") is None


class TestVirtualUsers:
    @pytest.mark.parametrize("address", ["human@localhost", "Room@muc.example/Nick Name",
                                         "zoë@example.org", "a=b@x"])
    def test_the_localpart_round_trips(self, address: str) -> None:
        """Any XMPP address maps to a valid localpart and back."""
        localpart = names.virtual_localpart("_xmpp_", address)
        assert all(c.isdigit() or c in "abcdefghijklmnopqrstuvwxyz._=-" for c in localpart)
        assert names.xmpp_address_of("_xmpp_", localpart) == address

    def test_a_bare_jid_reads_well(self) -> None:
        """human@localhost becomes _xmpp_human=40localhost."""
        assert names.virtual_localpart("_xmpp_", "human@localhost") == "_xmpp_human=40localhost"


class TestPuppets:
    def test_local_users_get_plain_jids(self) -> None:
        """@alice:localhost is alice@matrix.localhost, and back."""
        jid = names.puppet_jid("@alice:localhost", "localhost", "matrix.localhost")
        assert jid == "alice@matrix.localhost"
        assert names.user_of_puppet(jid + "/matrix", "localhost",
                                    "matrix.localhost") == "@alice:localhost"

    def test_remote_users_keep_their_server(self) -> None:
        """@bob/x:other.org is escaped and keeps its server, reversibly."""
        jid = names.puppet_jid("@bob/x:other.org", "localhost", "matrix.localhost")
        assert jid == r"bob\2fx%other.org@matrix.localhost"
        assert names.user_of_puppet(jid, "localhost", "matrix.localhost") == "@bob/x:other.org"

    def test_jids_elsewhere_are_not_puppets(self) -> None:
        """A JID on another domain is nobody's puppet."""
        assert names.user_of_puppet("alice@localhost", "localhost", "matrix.localhost") is None


class TestNicks:
    def test_control_characters_and_spaces_are_tidied(self) -> None:
        """Control characters go, runs of white space become one space."""
        assert names.sanitise_nick(" Ann\u200b\n  Lee\x07 ", "ann") == "Ann Lee"

    def test_an_empty_name_falls_back_to_the_localpart(self) -> None:
        """No display name: the localpart."""
        assert names.sanitise_nick(None, "ann") == "ann"
        assert names.sanitise_nick("\u200b", "ann") == "ann"

    def test_long_names_are_cut(self) -> None:
        """At most NICK_MAX characters."""
        assert len(names.sanitise_nick("x" * 100, "x")) == names.NICK_MAX

    def test_a_taken_nick_gets_the_first_free_suffix(self) -> None:
        """Carol, Carol (2), Carol (3)…"""
        assert names.free_nick("Carol", set()) == "Carol"
        assert names.free_nick("Carol", {"Carol"}) == "Carol (2)"
        assert names.free_nick("Carol", {"Carol", "Carol (2)"}) == "Carol (3)"
