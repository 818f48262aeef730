"""The browser against the Python reference client and against what the server stores."""

from __future__ import annotations

import json

from playwright.sync_api import expect

from securechat.client import ChatClient, Message

from .harness import group, messages, own_fingerprint, participant, participants, send


def test_python_client_and_browser_read_each_other(people, server):
    alice = people.join("alice")
    bot = ChatClient(server.ws_url, "pybot")
    server.call(bot.connect())
    try:
        expect(participants(alice)).to_have_count(2)
        expect(participant(alice, "pybot").locator(".fingerprint")).to_have_text(group(bot.fingerprint))
        server.call(bot.send("hello from Python, ünïcødé ok"))
        item = messages(alice).locator("article").filter(has_text="hello from Python")
        expect(item.locator(".text")).to_have_text("hello from Python, ünïcødé ok")
        expect(item.locator(".sender")).to_have_text("pybot")
        send(alice, "hello from the browser, 日本語 <b>ok</b>")
        received = server.call(bot.next_message(timeout=15))
        assert isinstance(received, Message) and received.sender == "pybot"  # its own echo
        received = server.call(bot.next_message(timeout=15))
        assert isinstance(received, Message), received
        assert received.text == "hello from the browser, 日本語 <b>ok</b>"
        assert received.sender == "alice"
        assert group(received.fingerprint) == own_fingerprint(alice)
        expect(messages(alice).locator(".log-warning")).to_have_count(0)
    finally:
        server.on_loop(bot.close)
    expect(participants(alice)).to_have_count(1)


def test_the_ciphertext_log_holds_no_plaintext(people, server):
    alice = people.join("alice")
    bob = people.join("bob")
    bot = ChatClient(server.ws_url, "pybot")
    server.call(bot.connect())
    texts = ["the launch code is swordfish", "Grüße aus München ☕", "the bot says pineapple-kumquat"]
    try:
        expect(participants(alice)).to_have_count(3)
        expect(participants(bob)).to_have_count(3)
        send(alice, texts[0])
        send(bob, texts[1])
        server.call(bot.send(texts[2]))
        for page in (alice, bob):
            for text in texts:
                expect(messages(page).locator(".text").filter(has_text=text)).to_have_count(1)
    finally:
        server.on_loop(bot.close)
    log = server.log_text()
    records = [json.loads(line) for line in log.splitlines()]
    assert [r["event"] for r in records].count("msg") == 3
    for text in texts:
        for form in {text, json.dumps(text)[1:-1]} | set(text.split()):
            if len(form) >= 5:
                assert form not in log, f"{form!r} is in the ciphertext log"


def test_page_fingerprints_equal_the_servers_roster(people, server):
    pages = {name: people.join(name) for name in ("alice", "bob", "carol")}
    for page in pages.values():
        expect(participants(page)).to_have_count(3)
    roster = {p["username"]: p for p in server.roster()}
    assert set(roster) == set(pages)
    for name, page in pages.items():
        assert own_fingerprint(page) == group(roster[name]["fingerprint"])
        for other in pages:
            expect(participant(page, other).locator(".fingerprint")).to_have_text(group(roster[other]["fingerprint"]))
