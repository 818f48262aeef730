"""Benchmark participants: real identity (ECDSA P-256) and session (RSA-OAEP-2048) keys.

RSA key generation costs ~65 ms each, so keys for many members are made in a process pool
(both cores, before any measurement starts) and kept for the next run in
$XDG_CACHE_HOME/securechat-bench/session-keys.der (0600; throwaway keys that only ever sign
and unwrap benchmark traffic on 127.0.0.1): the reconnect storm needs 1,000 of them, ~35 s of
key generation on two idle cores. BENCH_KEY_CACHE=off skips the cache.
"""

from __future__ import annotations

import concurrent.futures
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from securechat import crypto


def _rsa_der(_: int) -> bytes:
    key = crypto.SessionKey.generate().private_key
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class BenchMember:
    username: str
    identity: crypto.Identity
    session: crypto.SessionKey
    sid: str
    fingerprint: str
    identity_b64: str
    session_b64: str

    def join_frame(self, room: str = "lobby", challenge: str = "0" * 32) -> dict:
        issued = int(time.time() * 1000)
        stream = self.sid  # any 32 hex unique per member
        return {
            "v": 2, "type": "join", "username": self.username,
            "identity_key": self.identity_b64, "session_key": self.session_b64,
            "issued": issued, "challenge": challenge, "stream": stream,
            "session_sig": crypto.sign_session(self.identity, room, self.username, self.session_b64,
                                               issued, challenge, stream),
        }


_CACHE: list[BenchMember] = []


def _cache_file() -> Path | None:
    if os.environ.get("BENCH_KEY_CACHE", "").lower() == "off":
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "securechat-bench" / "session-keys.der"


def _load_ders(path: Path | None) -> list[bytes]:
    """The cached keys: 4-byte big-endian length, then the PKCS#8 DER, repeated."""
    try:
        data = path.read_bytes() if path else b""
    except OSError:
        return []
    ders, pos = [], 0
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("!I", data, pos)
        if pos + 4 + size > len(data):
            break  # a torn tail: ignore it
        ders.append(data[pos + 4: pos + 4 + size])
        pos += 4 + size
    return ders


def _store_ders(path: Path | None, ders: list[bytes]) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as fh:
            fh.write(b"".join(struct.pack("!I", len(d)) + d for d in ders))
    except OSError:
        pass  # a read-only home only costs the next run its key generation


def members(n: int) -> list[BenchMember]:
    """n distinct members (memoised per process: later calls reuse earlier keys)."""
    missing = n - len(_CACHE)
    if missing > 0:
        cache = _cache_file()
        ders = _load_ders(cache)[len(_CACHE): len(_CACHE) + missing]
        fresh = missing - len(ders)
        if fresh >= 8 and (os.cpu_count() or 1) > 1:
            with concurrent.futures.ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                made = list(pool.map(_rsa_der, range(fresh), chunksize=4))
        else:
            made = [_rsa_der(i) for i in range(fresh)]
        _store_ders(cache, made)
        ders += made
        for der in ders:
            # Made a moment ago by our own pool: re-checking each key's math on load (what
            # cryptography does by default) cost ~100 ms a key, more than making it.
            session = crypto.SessionKey(serialization.load_der_private_key(
                der, password=None, unsafe_skip_rsa_key_validation=True))
            identity = crypto.Identity.generate()
            _CACHE.append(BenchMember(
                username=f"bench{len(_CACHE):05d}", identity=identity, session=session,
                sid=session.sid, fingerprint=identity.fingerprint,
                identity_b64=identity.spki_b64, session_b64=session.spki_b64,
            ))
    return _CACHE[:n]
