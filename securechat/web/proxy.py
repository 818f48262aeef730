"""Who the client really is behind a reverse proxy: pure logic, no Tornado, no sockets.

A proxy in front of securechat makes every connection come from the proxy's address, so the
per-address limits and the roster would see one "client". The proxy says who it forwarded in
X-Forwarded-For / -Proto / -Host; but anyone can send those headers, so they count only when
the TCP peer is a listed proxy. Tornado's `xheaders=True` trusts them from every peer, which
would let any client pick the address its limits are counted against.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from .canonical import split_host

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = ("http", "https")


@dataclass(frozen=True)
class ClientView:
    """What the handlers should believe about the client."""

    remote_ip: str
    protocol: str
    host: str
    # The proxy forwarded a host this server does not answer to: not believed, and the
    # request is for someone else (421).
    host_refused: bool = False


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR networks ("127.0.0.1", "10.0.0.0/8"); ValueError names a bad one."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network (like 10.0.0.0/8)") from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # A dual-stack socket shows an IPv4 peer as ::ffff:a.b.c.d; compare it as the IPv4 it is.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(ip: str, trusted: tuple[Network, ...]) -> bool:
    address = _address(ip)
    return address is not None and any(address in network for network in trusted)


def client_view(peer: str, protocol: str, host: str, headers: Mapping[str, str],
                trusted: tuple[Network, ...], allow_host: Callable[[str], bool] | None = None,
                *, always_trusted: bool = False) -> ClientView:
    """The client's address, scheme and host, given the TCP peer and the request headers.

    Headers count only when the peer is trusted (always_trusted: a unix-socket peer, which can
    only be the proxy). X-Forwarded-For is read right to left (each proxy appends the address it
    saw), skipping trusted proxies: the first address no trusted proxy claims is the client,
    because everything left of it was written by the client itself. X-Forwarded-Host counts only
    if allow_host accepts it: a proxy that passes on whatever the client claimed must not make
    the server believe a name it does not answer to.
    """
    if not always_trusted and (not trusted or not is_trusted(peer, trusted)):
        return ClientView(peer, protocol, host)
    forwarded, refused = _forwarded_host(host, headers.get("X-Forwarded-Host", ""), allow_host)
    return ClientView(_forwarded_for(peer, headers.get("X-Forwarded-For", ""), trusted),
                      _forwarded_proto(protocol, headers.get("X-Forwarded-Proto", "")),
                      forwarded, refused)


def _forwarded_for(peer: str, header: str, trusted: tuple[Network, ...]) -> str:
    client = peer
    for entry in reversed([part for part in header.split(",") if part.strip()]):
        address = _address(entry)
        if address is None:
            # Garbage where an address should be: stop at the last hop we could check rather
            # than hand the limits an arbitrary string as a key.
            break
        client = str(address)
        if not any(address in network for network in trusted):
            break
    return client


def _forwarded_proto(protocol: str, header: str) -> str:
    # The last value is the one the nearest proxy set; anything but http/https is ignored.
    values = [part.strip().lower() for part in header.split(",") if part.strip()]
    return values[-1] if values and values[-1] in SCHEMES else protocol


def _forwarded_host(host: str, header: str, allow_host: Callable[[str], bool] | None) -> tuple[str, bool]:
    """(the host to believe, whether the forwarded one was refused)."""
    values = [part.strip() for part in header.split(",") if part.strip()]
    if not values:
        return host, False
    candidate = values[-1]
    well_formed = all(ch.isalnum() or ch in ".-:[]" for ch in candidate) and len(candidate) <= 255
    if not well_formed or (allow_host is not None and not allow_host(candidate)):
        return host, True
    # nginx's $host has no port; its $http_host in Host does. The same name: keep that port, or
    # the page's origin (https://chat.example.org:8443) would not match for the WebSocket.
    name, port = split_host(host)
    if port and split_host(candidate) == (name, None):
        return host, False
    return candidate, False
