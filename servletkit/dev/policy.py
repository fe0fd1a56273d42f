"""``servletkit policy protect ROOM_ID``: make the running ``servletkit dev``'s policy wire
the policy server of a room of its homeserver, in one command.

As the dev test account (it must be allowed to set state in the room, e.g. its
creator), it sets the room's ``m.room.policy`` to name the dev policy server and
invites the policy user; the running policy wire accepts the invite and joins the
room over federation. From then on the dev Synapse asks
the container's plugins (``event.wire == "policy"``) about every event in the room.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx

from servletkit.container.config import Config
from servletkit.dev.errors import DevError
from servletkit.dev.state import DevPaths
from servletkit.wires.policy.join import server_info
from servletkit.wires.policy.keys import load_keys

JOIN_TIMEOUT_S: Final = 30.0


def protect(config: Config, room_id: str) -> dict[str, Any]:
    """Protect ``room_id`` of the running dev homeserver; what was done, as facts."""
    run_file = DevPaths.for_config(config).run_file
    try:
        facts = json.loads(run_file.read_text(encoding="utf-8"))
        policy = facts["policy_server"]
    except FileNotFoundError:
        raise DevError(f"servletkit dev is not running for {config.path} ({run_file} is "
                       "missing): start it first") from None
    except (OSError, ValueError, KeyError) as exc:
        raise DevError(f"{run_file}: cannot be read ({exc}); restart servletkit dev") from None
    return asyncio.run(_protect(facts, policy, room_id))


async def _protect(facts: dict[str, Any], policy: dict[str, Any], room_id: str
                   ) -> dict[str, Any]:
    state_dir = Path(policy["state_dir"])
    keys = load_keys(state_dir)
    info = server_info(policy["server_name"], keys)
    content = info.state_content()
    homeserver = facts["homeserver_url"]
    async with httpx.AsyncClient(base_url=homeserver, timeout=60) as http:
        user = facts["test_user"]
        login = await http.post("/_matrix/client/v3/login", json={
            "type": "m.login.password", "password": user["password"],
            "identifier": {"type": "m.id.user", "user": user["localpart"]}})
        if login.status_code != 200:
            raise DevError(f"logging in {user['user_id']} failed: {login.status_code} "
                           f"{login.text}")
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        room = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}"
        user_id = info.user_id
        try:
            response = await http.put(f"{room}/state/m.room.policy/", json=content,
                                      headers=auth)
            if response.status_code != 200:
                raise DevError(f"{user['user_id']} cannot set m.room.policy in {room_id}: "
                               f"{response.status_code} {response.text} (it must be allowed "
                               "to set state there, e.g. be the room's creator)")
            # the running policy wire accepts the invite and joins (over federation)
            if not await _joined(http, room, auth, user_id):
                invited = await http.post(f"{room}/invite", json={"user_id": user_id},
                                          headers=auth)
                if invited.status_code != 200:
                    raise DevError(f"inviting {user_id} into {room_id} failed: "
                                   f"{invited.status_code} {invited.text}")
            deadline = time.monotonic() + JOIN_TIMEOUT_S
            while not await _joined(http, room, auth, user_id):
                if time.monotonic() > deadline:
                    raise DevError(f"{user_id} did not join {room_id} within "
                                   f"{JOIN_TIMEOUT_S:g} s (see the container's log)")
                await asyncio.sleep(0.1)
            create = await http.get(f"{room}/state/m.room.create/", headers=auth)
            version = (create.json().get("room_version", "1") if create.status_code == 200
                       else None)
        finally:
            await http.post("/_matrix/client/v3/logout", headers=auth)
    return {"room_id": room_id, "policy_user": user_id, "room_version": version,
            "m.room.policy": content}


async def _joined(http: httpx.AsyncClient, room: str, auth: dict[str, str], user_id: str
                  ) -> bool:
    response = await http.get(f"{room}/joined_members", headers=auth)
    return response.status_code == 200 and user_id in response.json().get("joined", {})
