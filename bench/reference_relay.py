"""The reference relay: the practical limit of this stack (Python + Tornado WebSocket).

A bare tornado.websocket.WebSocketHandler that speaks just enough of protocol v2 for the load
generator: a hello, then a join registers the connection under its sid (hashed from the session
key, as securechat does) and gets a minimal welcome; a msg is parsed with json.loads and each
recipient gets what any relay of per-recipient-wrapped messages must forward — the sender's
shared fields and that recipient's wrapped key (serialised once, the key appended), in the
layout securechat sends — then acked. No validation, no rate limit, no log, no roster frames,
no recipient-list store. Same Tornado settings as securechat (ping interval, max message size).

Run: python -m bench.reference_relay --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import json
import signal
import time

import tornado.web
import tornado.websocket

ROOM = "lobby"
members: dict[str, "RelaySocket"] = {}


def _encode(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class RelaySocket(tornado.websocket.WebSocketHandler):
    sid = None
    sender = None

    def open(self):
        self.set_nodelay(True)
        self.write_message('{"v":2,"type":"hello","room":"lobby","challenge":"00000000000000000000000000000000"}')

    def on_message(self, message):
        frame = json.loads(message)
        kind = frame.get("type")
        if kind == "msg":
            keys = frame["keys"]
            shared = _encode({
                "v": 2, "type": "msg", "from": self.sid, "id": frame["id"], "ts": frame["ts"],
                "iv": frame["iv"], "ct": frame["ct"], "to": frame["to"], "sig": frame["sig"],
            })
            head = shared[:-1] + ',"key":'
            sent = 0
            for sid, wrapped in keys.items():
                peer = members.get(sid)
                if peer is not None:
                    try:
                        peer.write_message(head + json.dumps(wrapped) + "}")
                        sent += 1
                    except tornado.websocket.WebSocketClosedError:
                        pass
            self.write_message(_encode({"v": 2, "type": "ack", "id": frame["id"], "recipients": sent}))
        elif kind == "join":
            self.sid = hashlib.sha256(base64.b64decode(frame["session_key"])).hexdigest()[:32]
            fingerprint = hashlib.sha256(base64.b64decode(frame["identity_key"])).hexdigest()
            self.sender = {"sid": self.sid, "username": frame["username"], "fingerprint": fingerprint}
            members[self.sid] = self
            self.write_message(_encode({"v": 2, "type": "welcome", "room": ROOM, "you": self.sender}))

    def on_close(self):
        if self.sid is not None and members.get(self.sid) is self:
            del members[self.sid]


class Health(tornado.web.RequestHandler):
    def get(self):
        self.write({"status": "ok", "connections": len(members)})


async def main(port: int) -> None:
    app = tornado.web.Application(
        [(r"/ws", RelaySocket), (r"/healthz", Health)],
        websocket_max_message_size=1024 * 1024,
        websocket_ping_interval=20.0,
        websocket_ping_timeout=30.0,
    )
    app.listen(port, address="127.0.0.1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gc-thresholds", help="gc.set_threshold() values, e.g. 10000,10,10 "
                        "(default: Python's own)")
    args = parser.parse_args()
    if args.gc_thresholds:
        gc.set_threshold(*(int(x) for x in args.gc_thresholds.split(",")))
    asyncio.run(main(args.port))
