"""After a burst of joins the server hands its freed heap back to the OS, once (relay/heap.py)."""

from __future__ import annotations

import asyncio
import platform

import pytest

from securechat.relay.heap import HeapTrimmer

pytestmark = pytest.mark.gen_test(timeout=30)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_on_glibc_the_real_malloc_trim_is_found_and_runs():
    trimmer = HeapTrimmer()
    assert trimmer.available
    assert trimmer._trim(0) in (0, 1)  # 1: memory was released, 0: there was none to release


async def test_a_burst_of_joins_trims_once_when_the_joins_have_stopped():
    calls = []
    trimmer = HeapTrimmer(burst=5, quiet=0.2, trim=calls.append)
    for _ in range(4):
        trimmer.joined()
    await asyncio.sleep(0.4)
    assert calls == []  # four joins are not a burst
    for _ in range(6):  # a burst that goes on past `quiet`: no trim while joins keep coming
        trimmer.joined()
        await asyncio.sleep(0.1)
    assert calls == []
    await asyncio.sleep(0.35)
    assert calls == [0] and trimmer.trims == 1
    await asyncio.sleep(0.4)
    assert calls == [0]  # once per burst, not again and again


async def test_stopping_cancels_a_pending_trim():
    calls = []
    trimmer = HeapTrimmer(burst=1, quiet=0.1, trim=calls.append)
    trimmer.joined()
    trimmer.stop()
    await asyncio.sleep(0.3)
    assert calls == []


async def test_the_servers_joins_feed_the_trimmer(connect, hub):
    calls = []
    hub.heap = HeapTrimmer(burst=3, quiet=0.2, trim=calls.append)
    for name in ("alice", "bob", "carol"):
        await connect(name)
    for _ in range(100):
        if calls:
            break
        await asyncio.sleep(0.05)
    assert calls == [0]
