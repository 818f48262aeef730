"""Per-connection budgets: a token bucket for frames and a strike counter for rejected ones."""

from __future__ import annotations

from collections import deque


class TokenBucket:
    """`rate` frames per second on average, bursts of up to `burst`."""

    # One per connection: without a __dict__ each costs ~100 bytes less (idle connections).
    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float):
        self.rate = rate
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds from now until take() would succeed."""
        tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        return max(0.0, (1.0 - tokens) / self.rate)


class Strikes:
    """Counts rejections; a client past `limit` within `window` seconds is treated as abusive."""

    # One per connection, and most connections are never rejected: the deque (~600 bytes, a
    # third of what securechat kept per idle connection beyond a bare relay) waits for the first.
    __slots__ = ("limit", "window", "_times")

    def __init__(self, limit: int = 20, window: float = 10.0):
        self.limit = limit
        self.window = window
        self._times: deque[float] | None = None

    def add(self, now: float) -> bool:
        """Record one rejection; True when the client should be disconnected."""
        times = self._times
        if times is None:
            times = self._times = deque()
        times.append(now)
        while times and times[0] < now - self.window:
            times.popleft()
        return len(times) >= self.limit

    def __len__(self) -> int:
        """Rejections within the window as of the last add()."""
        return len(self._times) if self._times is not None else 0


class SlidingWindow:
    """At most `limit` events per key in the last `window` seconds (joins per address)."""

    def __init__(self, limit: int, window: float = 60.0):
        self.limit = limit
        self.window = window
        self._events: dict[str, deque[float]] = {}

    def allow(self, key: str, now: float) -> bool:
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) >= self.limit:
            return False
        events.append(now)
        return True

    def __len__(self) -> int:
        """Keys (addresses) remembered."""
        return len(self._events)

    def forget_idle(self, now: float) -> None:
        for key in [k for k, e in self._events.items() if not e or e[-1] <= now - self.window]:
            del self._events[key]
