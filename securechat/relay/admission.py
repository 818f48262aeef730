"""Who may hold a connection or a session now: counting per client, pure (no sockets, no clock).

One attacker must not be able to take every slot. Counting is per IPv4 address; for IPv6 it
is per address *and* per /64, because one machine (or a phone's privacy addresses, or one
hostile network) has a whole /64 to pick source addresses from: 313 addresses of one /64
once held 10,000 sockets. A /64 may hold NETWORK_FACTOR times what one address may, so the
devices of one IPv6 LAN (which share a /64) still fit next to each other.

The same counters serve the TCP accept loop (web/connections.py) and the Hub's session pools
(pre-join and joined), so every transport is admitted by the same rule.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

NETWORK_FACTOR = 4
_IPV6_PREFIX = 64


def address_keys(remote: str) -> tuple[tuple[str, int], ...]:
    """The keys a client is counted under, each with its cap multiplier.

    ("192.0.2.7", 1) for IPv4 (an IPv4-mapped IPv6 address is its IPv4 address);
    ("2001:db8::7", 1) and ("2001:db8::/64", NETWORK_FACTOR) for IPv6. Anything that is not
    an address (a unix-socket peer, an empty string) is counted under itself.
    """
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return ((remote, 1),)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return ((str(address.ipv4_mapped), 1),)
        network = ipaddress.IPv6Network((address, _IPV6_PREFIX), strict=False)
        return ((str(address), 1), (str(network), NETWORK_FACTOR))
    return ((str(address), 1),)


@dataclass
class Pool:
    """Slots in total and per client key; `take` says why not, or takes one."""

    name: str
    total: int
    per_address: int
    counts: dict[str, int] = field(default_factory=dict)
    size: int = 0

    def full_for(self, keys: tuple[tuple[str, int], ...]) -> str | None:
        """"total" or "address" when a client under these keys may not take a slot, else None."""
        if self.size >= self.total:
            return "total"
        for key, factor in keys:
            if self.counts.get(key, 0) >= self.per_address * factor:
                return "address"
        return None

    def take(self, keys: tuple[tuple[str, int], ...]) -> None:
        self.size += 1
        for key, _ in keys:
            self.counts[key] = self.counts.get(key, 0) + 1

    def give_back(self, keys: tuple[tuple[str, int], ...]) -> None:
        self.size -= 1
        for key, _ in keys:
            left = self.counts.pop(key, 1) - 1
            if left > 0:
                self.counts[key] = left  # an emptied key is dropped, so the map never grows

    def held_by(self, remote: str) -> int:
        """Slots held under remote's own (first) key."""
        return self.counts.get(address_keys(remote)[0][0], 0)
