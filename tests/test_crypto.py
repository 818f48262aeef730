"""securechat.crypto against the protocol v1 test vectors (the browser checks the same file)."""

from __future__ import annotations

import pytest
from conftest import VECTORS
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securechat import crypto

IDENTITY, SESSION, MESSAGE = VECTORS["identity"], VECTORS["session"], VECTORS["message"]


def identity() -> crypto.Identity:
    return crypto.Identity.from_pkcs8(crypto.b64decode(IDENTITY["pkcs8"]))


def session(entry) -> crypto.SessionKey:
    from cryptography.hazmat.primitives import serialization

    return crypto.SessionKey(serialization.load_der_private_key(crypto.b64decode(entry["pkcs8"]), None))


def test_fingerprint_and_grouping():
    ident = identity()
    assert ident.spki_b64 == IDENTITY["spki"]
    assert ident.fingerprint == IDENTITY["fingerprint"]
    grouped = crypto.group_fingerprint(IDENTITY["fingerprint"])
    assert grouped == IDENTITY["fingerprint_grouped"]
    assert len(grouped.split(" ")) == 16 and all(len(g) == 4 for g in grouped.split(" "))


def test_session_id_and_signature():
    sess = session(SESSION)
    assert sess.spki_b64 == SESSION["spki"] and sess.sid == SESSION["sid"]
    text = crypto.session_text(SESSION["room"], SESSION["username"], SESSION["spki"])
    assert text.decode() == SESSION["text"]
    key = crypto.load_identity_public_key(IDENTITY["spki"])
    assert crypto.verify(key, text, SESSION["sig"])


@pytest.mark.parametrize("case", VECTORS["invalid"]["session_signatures"], ids=lambda c: c["why"])
def test_session_signature_bound_to_room_and_username(case):
    key = crypto.load_identity_public_key(IDENTITY["spki"])
    text = crypto.session_text(case.get("room", SESSION["room"]), case.get("username", SESSION["username"]),
                               SESSION["spki"])
    assert not crypto.verify(key, text, case["sig"])


def test_header_and_deterministic_ciphertext():
    m = MESSAGE
    header = crypto.message_header(m["room"], m["sender_fingerprint"], m["sender_sid"], m["id"], m["ts"],
                                   m["counter"], m["recipients"])
    assert header == m["header"]
    plaintext = crypto.b64decode(m["plaintext"])
    assert crypto.decode_plaintext(plaintext) == m["text"]
    ct = AESGCM(crypto.b64decode(m["aes_key"])).encrypt(crypto.b64decode(m["iv"]), plaintext, header.encode())
    assert crypto.b64encode(ct) == m["ct"]
    assert crypto.signed_text(header, m["iv"], m["ct"]).decode() == m["signed_text"]


def test_vector_message_opens_for_the_other_recipient():
    key = crypto.load_identity_public_key(IDENTITY["spki"])
    text = crypto.open_message(MESSAGE["frame_in"], key, session(MESSAGE["other_recipient"]))
    assert text == MESSAGE["text"]


@pytest.mark.parametrize("case", VECTORS["invalid"]["message_signatures"], ids=lambda c: c["why"])
def test_tampered_vector_messages_fail(case):
    frame = dict(MESSAGE["frame_in"], **{k: v for k, v in case.items() if k != "why"})
    key = crypto.load_identity_public_key(IDENTITY["spki"])
    with pytest.raises(crypto.CryptoError, match="signature"):
        crypto.open_message(frame, key, session(MESSAGE["other_recipient"]))


def test_message_not_addressed_to_us():
    key = crypto.load_identity_public_key(IDENTITY["spki"])
    with pytest.raises(crypto.CryptoError, match="not addressed"):
        crypto.open_message(MESSAGE["frame_in"], key, crypto.SessionKey.generate())


def test_seal_then_open_round_trip():
    ident, sess = crypto.Identity.generate(), crypto.SessionKey.generate()
    frame = crypto.seal_message(identity=ident, sender_sid=sess.sid, room="lobby", text="hi ✓",
                                recipients=[crypto.Recipient(sess.sid, sess.private_key.public_key())], counter=1)
    relayed = dict(frame, room="lobby", recipients=[sess.sid], key=frame["keys"][sess.sid],
                   **{"from": {"sid": sess.sid, "fingerprint": ident.fingerprint}})
    assert crypto.open_message(relayed, ident.private_key.public_key(), sess) == "hi ✓"


@pytest.mark.parametrize("text", ["", "abc", "YWJj", "YWJj\n", "YW Jj", "YWI=", "YWJ=", "YQ==="])
def test_b64decode_is_strict_and_canonical(text):
    if text in ("", "YWJj", "YWI="):
        assert crypto.b64encode(crypto.b64decode(text)) == text
    else:
        with pytest.raises(crypto.CryptoError):
            crypto.b64decode(text)


def test_key_policy():
    rsa1024 = crypto.SessionKey.generate(bits=1024)
    with pytest.raises(crypto.CryptoError, match="2048-4096"):
        crypto.load_session_public_key(rsa1024.spki_b64)
    with pytest.raises(crypto.CryptoError, match="RSA"):
        crypto.load_session_public_key(IDENTITY["spki"])
    with pytest.raises(crypto.CryptoError, match="P-256"):
        crypto.load_identity_public_key(SESSION["spki"])
    with pytest.raises(crypto.CryptoError):
        crypto.load_identity_public_key(crypto.b64encode(crypto.b64decode(IDENTITY["spki"]) + b"\x00"))
