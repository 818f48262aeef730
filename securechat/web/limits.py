"""HTTP body limits: small everywhere, larger only where a route asks for it after auth.

The HTTPServer refuses bodies over `limits.max_body_bytes` (64 KiB by default) and cuts a
body that takes longer than `limits.body_timeout`. A route that needs more (an upload, a
large frame over the HTTP transport) is a `@tornado.web.stream_request_body` handler that
authenticates in prepare() and only then calls allow_body(): nothing of the body has been
read at that point, so an unauthenticated client never gets to send more than the default.
"""

from __future__ import annotations

import tornado.web


def allow_body(handler: tornado.web.RequestHandler, max_bytes: int, timeout: float | None = None) -> None:
    """Accept a body of up to max_bytes (and take up to `timeout` seconds) on this request.

    Call it from prepare() of a stream_request_body handler, after the auth check. A
    Content-Length over max_bytes is then refused with 400 before any byte is read.
    """
    if not getattr(type(handler), "_stream_request_body", False):
        raise TypeError(f"{type(handler).__name__} must be a @stream_request_body handler to raise its body limit")
    connection = handler.request.connection
    connection.set_max_body_size(max_bytes)
    if timeout is not None:
        connection.set_body_timeout(timeout)
