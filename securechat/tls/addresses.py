"""The machine's interface addresses, found from kernel state without sending any packet."""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from pathlib import Path
from typing import Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_SIOCGIFADDR = 0x8915  # Linux-only ioctl number
# /proc/net/if_inet6 flags of addresses that must not go into a certificate:
# temporary (privacy addresses rotate daily, and would force a new
# certificate every day), DAD-failed, and deprecated (on their way out).
_IFA_F_SKIP = 0x01 | 0x08 | 0x20


def local_addresses() -> list[IPAddress]:
    """Non-loopback, non-link-local addresses of this machine's interfaces.

    Reads kernel state only (ioctl and /proc); never sends a packet.  On
    platforms where that is not possible the result is simply empty.
    """
    found: set[IPAddress] = set()
    try:
        found.update(_ipv4_addresses())
    except Exception:  # a missing address must never stop the server
        pass
    try:
        found.update(_ipv6_addresses())
    except Exception:
        pass
    return sorted((a for a in found if _usable(a)), key=address_key)


def _usable(address: IPAddress) -> bool:
    # Link-local addresses need a zone id that browsers cannot take.
    return not (
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
    )


def address_key(address: IPAddress) -> tuple[int, int]:
    # IPv4 and IPv6 objects do not compare with each other.
    return (address.version, int(address))


def _ipv4_addresses() -> list[ipaddress.IPv4Address]:
    """Primary IPv4 address of each interface, via SIOCGIFADDR (Linux)."""
    if not sys.platform.startswith("linux"):
        return []
    import fcntl

    addresses = []
    # A datagram socket is only a handle for the ioctl; nothing is sent.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:  # interface without an IPv4 address
                continue
            addresses.append(ipaddress.IPv4Address(reply[20:24]))
    return addresses


def _ipv6_addresses(
    path: Path = Path("/proc/net/if_inet6"),
) -> list[ipaddress.IPv6Address]:
    """IPv6 addresses listed in /proc/net/if_inet6 (Linux); [] elsewhere."""
    try:
        text = path.read_text()
    except OSError:
        return []
    addresses = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        try:
            address = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            flags = int(fields[4], 16)
        except ValueError:
            continue
        if not flags & _IFA_F_SKIP:
            addresses.append(address)
    return addresses
