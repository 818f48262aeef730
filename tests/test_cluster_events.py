"""What a worker publishes (cluster/events.py, cluster/bridge.py's batches) and the bytes its
listener compares to drop its own events unparsed."""

from __future__ import annotations

import asyncio
import json

from securechat.cluster import events
from securechat.cluster.bridge import _MSG, _pack


def test_every_event_a_worker_publishes_starts_with_its_own_prefix():
    worker = events.worker_id("host", 41, "abc")
    published = [events.event(worker, "hello"), events.event(worker, "left", room="lobby", sid="s1"),
                 events.msgs_event(worker, ['{"event":"msg","id":"m1"}', '{"event":"msg","id":"m2"}'])]
    for data in published:
        assert data.encode().startswith(events.own_prefix(worker))
        assert events.decode(data.encode())["w"] == worker


def test_another_workers_events_do_not_match_even_when_its_id_extends_ours():
    ours = events.worker_id("host", 41, "abc")
    for other in (events.worker_id("host", 41, "abcd"), events.worker_id("host", 411, "abc")):
        for data in (events.event(other, "hello"), events.msgs_event(other, ['{"event":"msg"}'])):
            assert not data.encode().startswith(events.own_prefix(ours))


def test_a_run_of_messages_is_published_as_one_event_in_order_between_the_other_commands():
    worker = events.worker_id("host", 41, "abc")
    loop = asyncio.new_event_loop()
    try:
        futures = [loop.create_future() for _ in range(6)]
        queued = [((_MSG, '{"event":"msg","id":"m1"}'), futures[0]), ((_MSG, '{"event":"msg","id":"m2"}'), futures[1]),
                  (("PUBLISH", events.CHANNEL, events.event(worker, "left", room="lobby", sid="s1")), futures[2]),
                  (("HSET", "k", "f", "v"), futures[3]),
                  ((_MSG, '{"event":"msg","id":"m3"}'), futures[4]), ((_MSG, '{"event":"msg","id":"m4"}'), None)]
        batch = _pack(worker, queued)
    finally:
        loop.close()
    assert [args[0] for args, _, _ in batch] == ["PUBLISH", "PUBLISH", "HSET", "PUBLISH"]
    first, left, hset, last = batch
    # One reply settles every message of a run; a message queued without a future still goes.
    assert first[1] == futures[:2] and left[1] == [futures[2]] and hset[1] == [futures[3]]
    assert last[1] == [futures[4], None]
    assert [r["id"] for r in events.decode(first[0][2])["lines"]] == ["m1", "m2"]
    assert [r["id"] for r in events.decode(last[0][2])["lines"]] == ["m3", "m4"]
    assert json.loads(left[0][2])["e"] == "left"
    # What comes back to our own subscription, to the byte: what the echo lag counts.
    assert [echo for _, _, echo in batch] == [len(first[0][2]), len(left[0][2]), 0, len(last[0][2])]
