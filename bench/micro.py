"""Per-message server work without sockets: parse + room.prepare + log append, and the
fan-out frame building, timed with time.process_time (robust on a shared machine).

python -m bench.micro [N ...]   -> microseconds per message for each step
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from securechat.relay import protocol
from securechat.relay.room import Participant, Room
from securechat.storage.ciphertext_log import CiphertextLog

from . import keys as bench_keys
from .runner import FrameFactory


def measure(n: int, count: int = 300) -> dict:
    members = bench_keys.members(n)
    factory = FrameFactory(members[0], members, 200)
    texts = []
    for _ in range(count):
        _, frame = factory.build()
        texts.append(frame[frame.index(b"{"):].decode())
    room = Room("lobby", max_participants=1024)
    wrapped_len = len(next(iter(json.loads(texts[0])["keys"].values())))
    for m in members:
        room.add(Participant(sid=m.sid, username=m.username, fingerprint=m.fingerprint,
                             identity_key=m.identity_b64, session_key=m.session_b64, session_sig="",
                             wrapped_key_length=wrapped_len, joined=0))
    sender = room.members[members[0].sid]
    out = {"n": n}
    t = time.process_time()
    msgs = [protocol.parse_frame(text, max_recipients=1024) for text in texts]
    out["parse_us"] = (time.process_time() - t) / count * 1e6
    now = time.time_ns() // 1_000_000
    t = time.process_time()
    relays = []
    for msg in msgs:
        relay = room.prepare(sender, msg, now)
        room.commit(relay, now)
        for _recipient, _frame in relay.deliveries():  # built and dropped, as the hub does
            pass
        relays.append(relay)
    out["prepare_us"] = (time.process_time() - t) / count * 1e6
    with tempfile.TemporaryDirectory() as tmp:
        with CiphertextLog(Path(tmp), fsync="never") as log:
            t = time.process_time()
            for relay in relays:
                log.append_line(relay.log_line)
            out["log_append_us"] = (time.process_time() - t) / count * 1e6
    return out


if __name__ == "__main__":
    for n in [int(a) for a in sys.argv[1:]] or [10, 50, 250]:
        r = measure(n)
        print(f"N={n:4d}  parse {r['parse_us']:8.1f} µs   prepare+route {r['prepare_us']:8.1f} µs   "
              f"log append {r['log_append_us']:8.1f} µs   total {r['parse_us'] + r['prepare_us'] + r['log_append_us']:8.1f} µs")
