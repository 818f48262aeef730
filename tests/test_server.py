"""server.py pieces that need no socket."""

from __future__ import annotations

import asyncio
import logging

from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from securechat.server import quiet_closed_writes


def test_writes_to_vanished_peers_are_not_logged_but_real_errors_are(caplog):
    loop = asyncio.new_event_loop()
    try:
        quiet_closed_writes(loop)
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for exc in (WebSocketClosedError(), StreamClosedError()):
                loop.call_exception_handler({"message": "Task exception was never retrieved", "exception": exc})
            assert caplog.records == []
            loop.call_exception_handler({"message": "boom", "exception": ValueError("real bug")})
        assert [r.getMessage() for r in caplog.records] == ["boom"]
    finally:
        loop.close()
