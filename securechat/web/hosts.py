"""Which Host values this server answers to (DNS rebinding defence). Pure: no sockets.

A rebinding site (evil.example, first resolving to its own server, then to 127.0.0.1 or a
LAN address) gets a victim's browser to send requests to securechat with `Host: evil.example`
from a page of that origin: same-origin as far as the browser is concerned, so it could load
the page and join the loopback-only chat. The defence is to answer only to names we know:
anything else is 421 Misdirected Request, for plain HTTP and WebSocket handshakes alike.

Allowed:
* localhost, *.localhost and loopback addresses (browsers resolve those themselves);
* the address the connection actually arrived on (a browser that opened an IP address
  directly is not rebinding: no name is involved);
* this machine's names (host name, host.local, LAN addresses, certificate names, the
  canonical host and its aliases) and what the configuration names (server.allowed_hosts and
  the hosts of server.allowed_origins).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Iterable
from urllib.parse import urlsplit

from .canonical import is_loopback, normalise, split_host


def _plain(host: str) -> str:
    """normalise(), and an IPv4-mapped IPv6 address as the IPv4 address it is."""
    host = normalise(host)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return host


class HostPolicy:
    def __init__(self, names: Iterable[str] = ()):
        self.names = frozenset(_plain(n) for n in names if n and n.strip())

    @classmethod
    def for_server(cls, config, extra: Iterable[str] = ()) -> HostPolicy:
        """The names of this machine and of the configuration, plus `extra` (LAN addresses,
        certificate names: whatever the caller knows)."""
        hostname = socket.gethostname().lower().rstrip(".")
        names = [hostname, f"{hostname.split('.')[0]}.local", *config.allowed_hosts, *extra]
        names += [urlsplit(origin).hostname or "" for origin in config.allowed_origins]
        if config.canonical_host:
            names.append(config.canonical_host)
        if config.host:
            names.append(config.host)
        return cls(names)

    def allows(self, host: str, local_address: str | None = None) -> bool:
        """Whether a request whose Host header is `host` is for this server; local_address is
        the address the connection arrived on, when known."""
        if not host or len(host) > 300:
            return False
        name, _ = split_host(host)
        name = _plain(name)
        if not name:
            return False
        if is_loopback(name) or name in self.names:
            return True
        return local_address is not None and name == _plain(local_address)
