"""securechat.crypto against the protocol v2 test vectors (the browser checks the same file)."""

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


def st(**over):
    f = {k: SESSION[k] for k in ("room", "username", "spki", "issued", "challenge", "stream")}
    f.update(over)
    return crypto.session_text(f["room"], f["username"], f["spki"], f["issued"], f["challenge"], f["stream"])


def test_session_id_and_signature():
    sess = session(SESSION)
    assert sess.spki_b64 == SESSION["spki"] and sess.sid == SESSION["sid"]
    assert st().decode() == SESSION["text"]
    key = crypto.load_identity_public_key(IDENTITY["spki"])
    assert crypto.verify(key, st(), SESSION["sig"])


@pytest.mark.parametrize("case", VECTORS["invalid"]["session_signatures"], ids=lambda c: c["why"])
def test_session_signature_bound_to_room_username_time_and_challenge(case):
    key = crypto.load_identity_public_key(IDENTITY["spki"])
    assert not crypto.verify(key, st(**{k: v for k, v in case.items() if k not in ("why", "sig")}), case["sig"])


def test_session_freshness_is_the_clients_own_rule():
    now = SESSION["issued"]
    assert crypto.session_age_problem(now, now) is None
    assert "older" in crypto.session_age_problem(now - crypto.SESSION_MAX_AGE_MS - 1, now)
    assert "future" in crypto.session_age_problem(now + crypto.MAX_CLOCK_SKEW_MS + 1, now)


def test_commitments_tree_header_and_deterministic_ciphertext():
    m = MESSAGE
    sids = [r["sid"] for r in m["recipients"]]
    leaves = [crypto.leaf_hash(m["id"], r["sid"], r["seq"]) for r in m["recipients"]]
    assert [x.hex() for x in leaves] == m["leaves"]
    assert crypto.merkle_root(leaves).hex() == m["root"]
    assert [[x.hex() for x in crypto.merkle_path(i, leaves)] for i in range(len(leaves))] == m["paths"]
    assert crypto.recipients_commitment(sids) == m["to"] == m["frame_out"]["to"]
    assert crypto.key_commitment(crypto.b64decode(m["aes_key"])) == m["kc"]
    header = crypto.message_header(m["room"], m["sender_fingerprint"], m["sender_sid"], m["id"], m["ts"],
                                   len(sids), m["to"], m["root"], m["kc"])
    assert header == m["header"]
    plaintext = crypto.b64decode(m["plaintext"])
    assert len(plaintext) in crypto.PAD_BUCKETS and crypto.decode_plaintext(plaintext) == m["text"]
    ct = AESGCM(crypto.b64decode(m["aes_key"])).encrypt(crypto.b64decode(m["iv"]), plaintext, header.encode())
    assert crypto.b64encode(ct) == m["ct"]
    assert crypto.signed_text(header, m["iv"], m["ct"]).decode() == m["signed_text"]
    assert crypto.verify(crypto.load_identity_public_key(IDENTITY["spki"]), header_signed(m), m["sig"])


def header_signed(m):
    return m["signed_text"].encode()


@pytest.mark.parametrize("case", VECTORS["merkle"], ids=lambda c: f"n={c['n']}")
def test_merkle_trees_of_every_shape(case):
    leaves = [crypto.leaf_hash(MESSAGE["id"], f"{i:032x}", i + 1) for i in range(case["n"])]
    assert crypto.merkle_root(leaves).hex() == case["root"]
    for i, path in enumerate(case["paths"]):
        nodes = [bytes.fromhex(x) for x in path]
        assert crypto.root_from_path(i, case["n"], leaves[i], nodes).hex() == case["root"]
        assert len(nodes) == crypto.path_length(i, case["n"])


def test_padding_buckets():
    for case in VECTORS["padding"]:
        padded = crypto.pad(bytes(case["length"]))
        assert len(padded) == case["padded"] and crypto.unpad(padded) == bytes(case["length"])
    with pytest.raises(crypto.CryptoError):
        crypto.pad(bytes(65536))
    with pytest.raises(crypto.CryptoError):
        crypto.unpad(bytes(256))


def test_the_wrapped_key_carries_key_position_sequence_and_path():
    bob = session(MESSAGE["other_recipient"])
    raw = bob.unwrap(MESSAGE["frame_in"]["key"])
    assert crypto.b64encode(raw) == MESSAGE["bob_key_payload"]
    payload = crypto.parse_key_payload(raw)
    index = [r["sid"] for r in MESSAGE["recipients"]].index(bob.sid)
    assert payload.message_key == crypto.b64decode(MESSAGE["aes_key"])
    assert (payload.n, payload.index, payload.seq) == (3, index, 3)
    assert [x.hex() for x in payload.path] == MESSAGE["paths"][index]
    # 256 recipients still fit: 32 + 12 + 8 x 16 bytes <= 190, RSA-OAEP-2048-SHA-256's limit.
    assert len(crypto.key_payload(bytes(32), 256, 255, 2**53 - 1, [bytes(16)] * 8)) <= 190


def open_as(frame, who="other_recipient"):
    key = crypto.load_identity_public_key(IDENTITY["spki"])
    return crypto.open_message(frame, MESSAGE["room"], IDENTITY["fingerprint"], key, session(MESSAGE[who]))


def test_vector_message_opens_for_each_recipient_with_its_own_sequence_number():
    opened = open_as(MESSAGE["frame_in"])
    assert (opened.text, opened.seq, opened.n, opened.to) == (MESSAGE["text"], 3, 3, MESSAGE["to"])
    carol = dict(MESSAGE["frame_in"], key=MESSAGE["frame_out"]["keys"][MESSAGE["third_recipient"]["sid"]])
    assert open_as(carol, "third_recipient").seq == 12


@pytest.mark.parametrize("case", VECTORS["invalid"]["message_signatures"], ids=lambda c: c["why"])
def test_tampered_vector_messages_fail(case):
    frame = dict(MESSAGE["frame_in"], **{k: v for k, v in case.items() if k != "why"})
    with pytest.raises(crypto.CryptoError, match="signature"):
        open_as(frame)


def test_a_key_wrapped_for_someone_else_or_swapped_does_not_open():
    with pytest.raises(crypto.CryptoError, match="unwrap"):
        crypto.open_message(MESSAGE["frame_in"], "lobby", IDENTITY["fingerprint"],
                            crypto.load_identity_public_key(IDENTITY["spki"]), crypto.SessionKey.generate())
    # carol's key delivered to bob: carol's leaf, bob's sid -> another root -> the signature fails
    with pytest.raises(crypto.CryptoError):
        open_as(dict(MESSAGE["frame_in"], key=MESSAGE["frame_out"]["keys"][MESSAGE["third_recipient"]["sid"]]))


def test_a_different_message_key_under_the_same_signature_is_refused():
    """Attack 7 at the crypto layer: the header's key commitment pins one key for everyone."""
    bob = session(MESSAGE["other_recipient"])
    payload = crypto.parse_key_payload(bob.unwrap(MESSAGE["frame_in"]["key"]))
    forged = crypto.key_payload(bytes(32), payload.n, payload.index, payload.seq, payload.path)
    frame = dict(MESSAGE["frame_in"], key=crypto.wrap_key(bob.private_key.public_key(), forged))
    with pytest.raises(crypto.CryptoError, match="signature"):
        open_as(frame)


def test_seal_then_open_round_trip():
    ident, sess = crypto.Identity.generate(), crypto.SessionKey.generate()
    frame = crypto.seal_message(identity=ident, sender_sid=sess.sid, room="lobby", text="hi ✓",
                                recipients=[crypto.Recipient(sess.sid, sess.private_key.public_key(), 1)])
    relayed = dict(frame, key=frame["keys"][sess.sid], **{"from": sess.sid})
    opened = crypto.open_message(relayed, "lobby", ident.fingerprint, ident.private_key.public_key(), sess)
    assert (opened.text, opened.seq, opened.n) == ("hi ✓", 1, 1)


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
