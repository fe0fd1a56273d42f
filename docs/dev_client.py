"""Talk to `servletkit dev` the way any Matrix client does: log in, make a room, send messages.

    .venv/bin/python docs/dev_client.py [path/to/dev.json]

(The test suite runs this file against a real `servletkit dev`.)
"""

import json
import sys
import time
from pathlib import Path

import httpx

run_file = Path(sys.argv[1] if len(sys.argv) > 1 else ".servletkit/dev/dev.json")
facts = json.loads(run_file.read_text())
user = facts["test_user"]
client = httpx.Client(base_url=facts["homeserver_url"])

login = client.post("/_matrix/client/v3/login", json={
    "type": "m.login.password",
    "identifier": {"type": "m.id.user", "user": user["localpart"]},
    "password": user["password"],
}).json()
client.headers["Authorization"] = f"Bearer {login['access_token']}"
room_id = client.post("/_matrix/client/v3/createRoom", json={"name": "servletkit demo"}).json()[
    "room_id"
]

for body in ["hello, servletkit", "this word is forbidden", "/shout make it loud"]:
    sent = client.put(
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{time.time_ns()}",
        json={"msgtype": "m.text", "body": body},
    )
    if sent.status_code != 200:  # a plugin vetoed it
        print(f"{body!r}: refused, {sent.status_code} {sent.json()['error']}")
        continue
    event_id = sent.json()["event_id"]
    stored = client.get(f"/_matrix/client/v3/rooms/{room_id}/event/{event_id}").json()
    print(f"{body!r}: stored as {stored['content']['body']!r}")
