"""Protocol v2's visible defences in real Chromium (issue 13): a look-alike name, a ghost
recipient, a dropped message and Verified only.

The server is the real one. Where the attack needs a malicious server, the test turns it into
one from inside its own loop (`server.on_loop`): it shows one person a participant nobody else
sees, or drops one person's copy of a message. That is exactly what a hostile operator could
patch into relay/hub.py; the pages are the shipped ones and notice it from signed data alone.

With SECURECHAT_SHOTS=<dir> each test also saves what the person sees, on a desktop, at 390x844
(a phone, and its People panel) and at 390x480 (a phone with the keyboard open), for looking at.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from playwright.sync_api import expect

from securechat import crypto
from securechat.relay import protocol
from securechat.relay.room import Participant

from .harness import join, messages, open_people, participant, participants, send

SHOTS = os.environ.get("SECURECHAT_SHOTS")


def look(page, name: str) -> None:
    """Save the page as a desktop and a phone would show it (only with SECURECHAT_SHOTS)."""
    if not SHOTS:
        return
    Path(SHOTS).mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    page.screenshot(path=str(Path(SHOTS) / f"{name}-desktop.png"))
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(200)
    page.screenshot(path=str(Path(SHOTS) / f"{name}-phone.png"))
    open_people(page)
    page.wait_for_timeout(200)
    page.screenshot(path=str(Path(SHOTS) / f"{name}-phone-people.png"))
    page.keyboard.press("Escape")
    page.set_viewport_size({"width": 390, "height": 480})
    page.wait_for_timeout(200)
    page.screenshot(path=str(Path(SHOTS) / f"{name}-keyboard.png"))
    page.set_viewport_size(size)


class Silent:
    """The connection of a session that exists only in the server's story."""

    remote = "127.0.0.1"

    def send(self, text):
        return True

    def close(self, code=1000, reason=""):
        pass


def show_a_ghost(server, victim: str, name: str = "ghost") -> str:
    """The malicious server adds a member only `victim` is told about; returns its sid."""

    def act():
        room = server.server.hub.rooms.get()
        target = next(p for p in room.members.values() if p.username == victim)
        identity, session = crypto.Identity.generate(), crypto.SessionKey.generate()
        issued, challenge, stream = int(time.time() * 1000), os.urandom(16).hex(), os.urandom(16).hex()
        ghost = Participant(
            sid=session.sid, username=name, fingerprint=identity.fingerprint, identity_key=identity.spki_b64,
            session_key=session.spki_b64, wrapped_key_length=344, joined=issued, issued=issued,
            challenge=challenge, stream=stream, connection=Silent(),
            session_sig=crypto.sign_session(identity, room.name, name, session.spki_b64, issued, challenge, stream),
        )
        room.add(ghost)  # so the relay accepts messages wrapped to it
        target.connection.send(protocol.frame("joined", participant=ghost.public()))
        return ghost.sid

    return server.on_loop(act)


def drop_next_message_to(server, victim: str) -> None:
    """The malicious server silently drops `victim`'s copy of the next message."""

    def act():
        room = server.server.hub.rooms.get()
        connection = next(p for p in room.members.values() if p.username == victim).connection
        original = connection.send
        state = {"dropped": False}

        def send(text, *args, **kwargs):
            if not state["dropped"] and text.startswith('{"v":2,"type":"msg"'):
                state["dropped"] = True
                return True
            return original(text, *args, **kwargs)

        connection.send = send

    server.on_loop(act)


def test_a_lookalike_of_a_pinned_name_is_flagged_and_not_sent_to(people):
    alice = people.join("alice")
    bob = people.join("bob")
    expect(participants(bob)).to_have_count(2)  # bob has now pinned alice's key
    alice.get_by_role("button", name="Leave chat").click()
    expect(participants(bob)).to_have_count(1)
    # A member with another key joins as "a1ice" (digit one): the honest server admits it,
    # since alice is gone; bob's page must not treat it as someone new.
    people.join("a1ice")
    entry = participant(bob, "a1ice")
    expect(entry).to_have_attribute("data-trust", "changed")
    expect(entry.locator(".p-warning")).to_contain_text('Looks like alice: "a1ice" is a different identity')
    expect(messages(bob).locator(".key-change")).to_have_text(
        '⚠ "a1ice" looks like alice but is a different identity. Compare fingerprints before you trust its messages.')
    send(bob, "for alice only")
    mine = messages(bob).locator("article.mine")
    expect(mine.locator(".not-sent")).to_have_text("Not sent to a1ice")
    expect(bob.locator("#withheld")).to_have_text("Not sent to: a1ice (key not accepted).")
    look(bob, "lookalike")


def test_a_message_also_sent_to_a_session_hidden_from_you_raises_a_ghost_warning(people, server):
    alice = people.join("alice")
    bob = people.join("bob")
    expect(participants(alice)).to_have_count(2)
    show_a_ghost(server, "alice")
    # Joins are visible: alice's page says the ghost joined; bob never hears of it.
    expect(messages(alice).locator(".presence")).to_contain_text(["bob joined", "ghost joined"])
    expect(participants(alice)).to_have_count(3)
    expect(participants(bob)).to_have_count(2)
    send(alice, "just between us")
    expect(messages(bob).locator(".text").filter(has_text="just between us")).to_have_count(1)
    warning = messages(bob).locator(".log-warning")
    expect(warning).to_have_text(
        "⚠ alice's message was also sent to 1 session you cannot see. "
        "Someone hidden from you may be reading this conversation.")
    look(bob, "ghost")


def test_a_dropped_message_is_reported_to_its_recipient(people, server):
    alice = people.join("alice")
    bob = people.join("bob")
    expect(participants(alice)).to_have_count(2)
    drop_next_message_to(server, "bob")
    send(alice, "one")
    expect(messages(alice).locator("article.mine").filter(has_text="one")).to_have_attribute("data-state", "delivered")
    send(alice, "two")
    expect(messages(bob).locator(".text").filter(has_text="two")).to_have_count(1)
    expect(messages(bob).locator(".log-warning")).to_have_text("1 message from alice did not arrive.")
    expect(messages(bob).locator(".text").filter(has_text="one")).to_have_count(0)
    look(bob, "missed")


def test_verified_only_sends_to_verified_people_and_says_who_was_left_out(people):
    alice = people.join("alice")
    bob = people.join("bob")
    carol = people.join("carol")
    expect(participants(alice)).to_have_count(3)
    participant(alice, "bob").get_by_role("button", name="Mark bob verified").click()
    alice.get_by_role("dialog").get_by_role("button", name="They match").click()
    expect(participant(alice, "bob").locator(".badge.verified")).to_have_text("✓ Verified")
    toggle = alice.get_by_role("checkbox", name="Verified only")
    toggle.check()
    expect(alice.locator("#withheld")).to_have_text("Not sent to: carol (not verified).")
    send(alice, "verified people only")
    mine = messages(alice).locator("article.mine").filter(has_text="verified people only")
    expect(mine).to_have_attribute("data-state", "delivered")
    expect(mine.locator(".not-sent")).to_have_text("Not sent to carol")
    expect(mine.locator(".delivery")).to_have_text("Delivered · to 1 other · not sent to carol (not verified)")
    expect(messages(bob).locator(".text").filter(has_text="verified people only")).to_have_count(1)
    send(bob, "bob is here")
    expect(messages(carol).locator(".text").filter(has_text="bob is here")).to_have_count(1)
    expect(messages(carol).locator(".text").filter(has_text="verified people only")).to_have_count(0)
    look(alice, "verified-only")
    # The setting is per room and survives a reload.
    alice.reload()
    alice.wait_for_selector("html[data-ready=true]")
    expect(alice.get_by_role("checkbox", name="Verified only")).to_be_checked()
