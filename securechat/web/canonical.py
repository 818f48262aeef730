"""One address per server: other LAN names of this machine redirect to the canonical one.

Browsers keep identity keys (IndexedDB) per origin, so the same person opening
https://192.168.1.20:5000 one day and https://myhost.local:5000 the next would look like a new
key to everyone. Pages opened under another name of this machine are sent to the canonical
host instead. Pure: the server hands in the names it knows; nothing here looks them up.

Never redirected: loopback (127.0.0.1, ::1, localhost: the machine's own browser, always a
secure context), the address the server was told to listen on (--host), and any name this
machine does not know as its own (a reverse proxy's public name, say).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

# Only page loads move: a redirected WebSocket or POST would fail instead of following.
PAGES = ("/", "/setup")
ROOM_PAGES = "/r/"  # /r/<name>, a room's page (web/rooms.py)


def is_page(path: str) -> bool:
    return path in PAGES or (path.startswith(ROOM_PAGES) and "/" not in path[len(ROOM_PAGES):])


def normalise(host: str) -> str:
    """`[FD00::2]` -> `fd00::2`, `MyHost.local.` -> `myhost.local`."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def is_loopback(host: str) -> bool:
    host = normalise(host)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """A host as it goes into a URL: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class CanonicalHost:
    host: str
    aliases: frozenset[str]

    @classmethod
    def choose(cls, host: str, names: Iterable[str], *, listen_host: str | None = None) -> CanonicalHost:
        """`names` are this machine's names and addresses; loopback and --host never redirect."""
        exempt = {normalise(host)} | ({normalise(listen_host)} if listen_host else set())
        aliases = {normalise(n) for n in names} - exempt
        return cls(normalise(host), frozenset(a for a in aliases if a and not is_loopback(a)))

    def redirect(self, method: str, request_host: str, path: str, query: str, scheme: str) -> str | None:
        """Where to send this request, or None to serve it as it is."""
        if method not in ("GET", "HEAD") or not is_page(path):
            return None
        name, port = split_host(request_host)
        if name not in self.aliases:
            return None
        netloc = url_host(self.host) + (f":{port}" if port else "")
        return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def split_host(request_host: str) -> tuple[str, str | None]:
    """The Host header as (normalised name, port or None); `[::1]:5000` -> ("::1", "5000")."""
    text = request_host.strip()
    if text.startswith("["):
        end = text.find("]")
        name, rest = text[1:end], text[end + 1:]
        port = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        name, port = text.split(":")
    else:
        name, port = text, None
    return normalise(name), (port if port and port.isdigit() else None)
