"""Several securechat processes as one server, joined through Redis pub/sub.

Imported only when `[cluster] redis_url` is configured: without it nothing here loads and the
server is today's single process. `bridge.Cluster` ties one process's Hub to Redis (events
out, events in, membership with heartbeats); `workers` runs `serve --workers N`.
"""
