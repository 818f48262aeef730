"""Refusals are logged quietly: at most one line a minute per kind, however hard someone tries.

A refused request costs the attacker a packet and would cost us a log line: 1,000 malformed
requests made 1,000 INFO lines, and an accept loop out of descriptors wrote 600,000 lines in
15 s. Every refusal the server makes (caps, timeouts, bad hosts, malformed requests, failed
TLS handshakes) goes through a Throttled logger instead; the next line that does get written
says how many it stands for. Kinds are fixed strings, never an address, so the table of kinds
stays small whatever the traffic.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

EVERY = 60.0


class Throttled:
    def __init__(self, logger: logging.Logger, every: float = EVERY,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.every = every
        self.clock = clock
        self._kinds: dict[str, list] = {}  # kind -> [time of the last line, lines held back since]

    def note(self, kind: str, level: int, message: str, *args) -> bool:
        """Log message unless a line of this kind went out less than `every` seconds ago."""
        now = self.clock()
        state = self._kinds.get(kind)
        if state is not None and now - state[0] < self.every:
            state[1] += 1
            return False
        held = state[1] if state is not None else 0
        self._kinds[kind] = [now, 0]
        if held:
            message += " (and %d more like it since the last such line)"
            args = (*args, held)
        self.logger.log(level, message, *args)
        return True


class QuietTornado(logging.Filter):
    """Throttles what Tornado itself logs about misbehaving peers, below ERROR.

    "Malformed HTTP message from …", "Timeout reading body from …", TLS handshake failures and
    read errors are each one line per request; keyed by their format string.
    """

    def __init__(self, every: float = EVERY, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.every = every
        self.clock = clock
        self._kinds: dict[str, list] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True  # a real fault: always logged
        kind = str(record.msg)[:80]
        now = self.clock()
        state = self._kinds.get(kind)
        if state is not None and now - state[0] < self.every:
            state[1] += 1
            return False
        held = state[1] if state is not None else 0
        if len(self._kinds) >= 256:
            self._kinds.clear()  # Tornado's formats are few; this only bounds a surprise
        self._kinds[kind] = [now, 0]
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it since the last such line)"
            record.args = ()
        return True


def install() -> None:
    """Put the filter on Tornado's general logger once per process."""
    logger = logging.getLogger("tornado.general")
    if not any(isinstance(f, QuietTornado) for f in logger.filters):
        logger.addFilter(QuietTornado())
