"""End to end in headless Chromium: joining, talking, leaving, and text that stays text."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from .harness import messages, participant, participants, send


def test_three_people_exchange_messages(people, server):
    alice = people.join("alice")
    bob = people.join("bob")
    carol = people.join("carol")
    for page in (alice, bob, carol):
        expect(participants(page)).to_have_count(3)
    send(alice, "Hi both, is the build green?")
    send(bob, "Green here.\nAll 412 tests pass.")
    send(carol, "Same, merging now 🎉")
    for page in (alice, bob, carol):
        log = messages(page)
        for sender, text in [("alice", "Hi both, is the build green?"),
                             ("bob", "Green here.\nAll 412 tests pass."),
                             ("carol", "Same, merging now 🎉")]:
            item = log.locator("article").filter(has=page.locator(".text", has_text=text.split("\n")[0]))
            expect(item).to_have_count(1)
            expect(item.locator(".sender")).to_have_text(sender)
            expect(item.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-\d\d-\d\dT"))
        expect(log.locator(".log-warning")).to_have_count(0)
    # Line breaks survive as text; the sender's own copy is confirmed by the server.
    expect(alice.locator("article .text").filter(has_text="Green here.")).to_have_text("Green here.\nAll 412 tests pass.")
    expect(alice.locator("article.mine .delivery")).to_have_text("Delivered · to 2 others")
    # Every message went to exactly the three sessions in the room.
    msgs = [r for r in server.log_records() if r["event"] == "msg"]
    assert len(msgs) == 3
    sids = {p["sid"] for p in server.roster()}
    assert all(set(r["keys"]) == sids for r in msgs)


def test_a_late_joiner_cannot_read_earlier_messages(people, server):
    alice = people.join("alice")
    bob = people.join("bob")
    send(alice, "before dave came")
    expect(messages(bob).locator(".text")).to_have_text(["before dave came"])
    dave = people.join("dave")
    expect(participants(alice)).to_have_count(3)
    send(bob, "after dave came")
    expect(messages(dave).locator(".text")).to_have_text(["after dave came"])
    expect(messages(dave)).not_to_contain_text("before dave came")
    # Not just hidden: the earlier message was never wrapped to dave's session key.
    dave_sid = next(p["sid"] for p in server.roster() if p["username"] == "dave")
    first, second = [r for r in server.log_records() if r["event"] == "msg"]
    assert dave_sid not in first["keys"]
    assert dave_sid in second["keys"]


def test_leave_chat_removes_the_participant_everywhere(people):
    alice = people.join("alice")
    bob = people.join("bob")
    carol = people.join("carol")
    expect(participants(alice)).to_have_count(3)
    bob.get_by_role("button", name="Leave chat").click()
    for page in (alice, carol):
        expect(participants(page)).to_have_count(2)
        expect(participant(page, "bob")).to_have_count(0)
    expect(bob.get_by_role("button", name="Join chat")).to_be_visible()
    expect(bob.get_by_role("status")).to_contain_text("Offline")
    # Messages after the leave are not wrapped to bob any more.
    send(alice, "bob is gone")
    expect(messages(carol).locator(".text")).to_have_text(["bob is gone"])


def test_markup_arrives_as_text(people):
    alice = people.join("alice")
    bob = people.join("bob")
    payload = '<img src=x onerror=alert(1)><script>alert(2)</script><b>bold?</b>'
    send(alice, payload)
    text = messages(bob).locator("article .text")
    expect(text).to_have_text(payload)
    expect(messages(alice).locator("article .text")).to_have_text(payload)
    for page in (alice, bob):
        assert page.locator("#messages img, #messages script, #messages b").count() == 0
    bob.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert people.dialogs == []


def test_enter_sends_and_shift_enter_adds_a_line(people):
    alice = people.join("alice")
    box = alice.get_by_label("Message", exact=True)
    box.fill("first line")
    box.press("Shift+Enter")
    box.type("second line")
    expect(messages(alice).locator("article")).to_have_count(0)
    box.press("Enter")
    expect(messages(alice).locator("article .text")).to_have_text("first line\nsecond line")
    expect(box).to_have_value("")
    # The Send button does the same.
    box.fill("by button")
    alice.get_by_role("button", name="Send").click()
    expect(messages(alice).locator("article .text")).to_have_count(2)


def test_long_words_wrap_and_the_log_follows_new_messages(people):
    alice = people.join("alice")
    bob = people.join("bob")
    send(alice, "x" * 3000)
    log = messages(bob)
    expect(log.locator("article")).to_have_count(1)
    overflow = bob.evaluate("() => { const l = document.getElementById('messages'); return l.scrollWidth - l.clientWidth; }")
    assert overflow <= 1, "a long word must wrap, not widen the log"
    for i in range(25):
        send(alice, f"line {i}")
    expect(log.locator("article")).to_have_count(26)
    at_bottom = "() => { const l = document.getElementById('messages'); return l.scrollHeight - l.scrollTop - l.clientHeight < 50; }"
    bob.wait_for_function(at_bottom)
    # Scrolled up to read: new messages do not yank the view down.
    bob.evaluate("() => { document.getElementById('messages').scrollTop = 0; }")
    send(alice, "one more")
    expect(log.locator("article")).to_have_count(27)
    assert bob.evaluate("() => document.getElementById('messages').scrollTop") == 0


def test_leave_then_join_again_in_the_same_tab(people):
    alice = people.join("alice")
    bob = people.join("bob")
    bob.get_by_role("button", name="Leave chat").click()
    expect(participants(alice)).to_have_count(1)
    bob.get_by_role("button", name="Join chat").click()
    expect(bob.get_by_role("status")).to_have_text("Connected")
    expect(participants(alice)).to_have_count(2)
    expect(participant(alice, "bob")).not_to_contain_text("Key changed")
    send(bob, "back again")
    expect(messages(alice).locator(".text")).to_have_text(["back again"])
