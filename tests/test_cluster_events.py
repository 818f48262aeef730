"""The bytes a worker's listener compares to drop its own events unparsed (cluster/events.py)."""

from __future__ import annotations

from securechat.cluster import events


def test_every_event_a_worker_publishes_starts_with_its_own_prefix():
    worker = events.worker_id("host", 41, "abc")
    published = [events.event(worker, "hello"), events.event(worker, "left", room="lobby", sid="s1"),
                 events.msg_event(worker, '{"event":"msg","id":"m1"}')]
    for data in published:
        assert data.encode().startswith(events.own_prefix(worker))
        assert events.decode(data.encode())["w"] == worker


def test_another_workers_events_do_not_match_even_when_its_id_extends_ours():
    ours = events.worker_id("host", 41, "abc")
    for other in (events.worker_id("host", 41, "abcd"), events.worker_id("host", 411, "abc")):
        for data in (events.event(other, "hello"), events.msg_event(other, '{"event":"msg"}')):
            assert not data.encode().startswith(events.own_prefix(ours))
