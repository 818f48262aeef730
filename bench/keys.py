"""Benchmark participants: real identity (ECDSA P-256) and session (RSA-OAEP-2048) keys.

RSA key generation costs ~65 ms each, so keys for many members are made in a process pool
(both cores, before any measurement starts).
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from dataclasses import dataclass

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


def members(n: int) -> list[BenchMember]:
    """n distinct members (memoised per process: later calls reuse earlier keys)."""
    missing = n - len(_CACHE)
    if missing > 0:
        if missing >= 8 and (os.cpu_count() or 1) > 1:
            with concurrent.futures.ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                ders = list(pool.map(_rsa_der, range(missing), chunksize=4))
        else:
            ders = [_rsa_der(i) for i in range(missing)]
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
