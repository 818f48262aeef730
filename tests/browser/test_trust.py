"""Identity, TOFU pins, key-change warnings and verification, in real Chromium with IndexedDB."""

from __future__ import annotations

from playwright.sync_api import expect

from .harness import GROUPED_FINGERPRINT, group, join, messages, own_fingerprint, participant, participants, send

KEY_CHANGED = "Key changed"


def test_a_reload_keeps_the_identity_and_fingerprint(people, server):
    context = people.context()
    page = people.page(context)
    expect(page.locator("#own-fingerprint")).to_have_text("created when you first join")
    join(page, "alice")
    first = own_fingerprint(page)
    assert GROUPED_FINGERPRINT.match(first), first
    first_sid = server.roster()[0]["sid"]
    page.reload()
    page.wait_for_selector("html[data-ready=true]")
    # A reload re-joins by itself, with the key from IndexedDB, not a new one.
    expect(page.get_by_role("status")).to_contain_text("Connected")
    expect(page.get_by_role("button", name="Join chat")).to_be_hidden()
    assert own_fingerprint(page) == first
    [entry] = server.roster()
    assert group(entry["fingerprint"]) == first
    assert entry["sid"] != first_sid, "every join has a fresh session key"
    # A second tab of the same profile shares the identity too; shown before it joins, so it
    # came from IndexedDB. A new tab never joins by itself (it would replace the first one).
    other_tab = people.page(context)
    expect(other_tab.locator("#own-fingerprint")).to_have_text(first)
    expect(other_tab.get_by_label("Username", exact=True)).to_have_value("alice")
    expect(other_tab.get_by_role("button", name="Join chat")).to_be_visible()


def test_the_private_key_is_stored_non_extractable(people):
    page = people.join("alice")
    info = page.evaluate("""async () => {
        const db = await new Promise((ok, fail) => { const r = indexedDB.open('securechat'); r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
        const id = await new Promise((ok) => { const r = db.transaction('identity').objectStore('identity').get('self'); r.onsuccess = () => ok(r.result); });
        let exported = true;
        try { await crypto.subtle.exportKey('pkcs8', id.privateKey); } catch { exported = false; }
        return { type: id.privateKey.type, extractable: id.privateKey.extractable, exported, curve: id.privateKey.algorithm.namedCurve };
    }""")
    assert info == {"type": "private", "extractable": False, "exported": False, "curve": "P-256"}


def test_mark_verified_shows_a_badge_that_survives_a_reload(people):
    alice = people.join("alice")
    bob = people.join("bob")
    bob_fingerprint = own_fingerprint(bob)
    entry = participant(alice, "bob")
    expect(entry.locator(".fingerprint")).to_have_text(bob_fingerprint)
    entry.get_by_role("button", name="Mark bob verified").click()
    dialog = alice.get_by_role("dialog")
    expect(dialog).to_contain_text("Verify bob")
    expect(dialog.locator("#confirm-fingerprint")).to_have_text(bob_fingerprint)
    expect(dialog.locator("#confirm-previous")).to_be_hidden()
    dialog.get_by_role("button", name="Cancel").click()
    expect(entry).not_to_contain_text("Verified")
    entry.get_by_role("button", name="Mark bob verified").click()
    alice.get_by_role("dialog").get_by_role("button", name="They match").click()
    expect(entry.locator(".badge.verified")).to_have_text("✓ Verified")
    expect(entry.get_by_role("button", name="Mark bob verified")).to_have_count(0)
    send(bob, "verified hello")
    expect(messages(alice).locator("article").filter(has_text="verified hello").locator(".badge.verified")).to_have_count(1)
    alice.reload()
    alice.wait_for_selector("html[data-ready=true]")
    expect(participant(alice, "bob").locator(".badge.verified")).to_have_text("✓ Verified")
    # Nobody else's view changed: bob has not verified alice.
    expect(participant(bob, "alice").locator(".badge.verified")).to_have_count(0)


def test_new_identity_raises_a_key_change_warning_until_accepted(people):
    alice_context = people.context()
    alice = people.join("alice", alice_context)
    bob = people.join("bob")
    old = own_fingerprint(bob)
    expect(participant(alice, "bob")).not_to_contain_text(KEY_CHANGED)
    bob.get_by_role("button", name="New identity").click()
    bob.get_by_role("dialog").get_by_role("button", name="Replace identity").click()
    expect(bob.locator("#own-fingerprint")).not_to_have_text(old)
    expect(bob.get_by_role("status")).to_contain_text("Connected")
    new = own_fingerprint(bob)
    entry = participant(alice, "bob")
    expect(entry).to_contain_text(KEY_CHANGED)
    expect(entry.locator(".fingerprint")).to_have_text(new)
    expect(entry.get_by_role("button", name="Accept new key")).to_be_visible()
    # Bob's messages arrive flagged; alice's are not wrapped to the unaccepted key.
    send(bob, "new laptop, same bob")
    flagged = messages(alice).locator("article").filter(has_text="new laptop, same bob")
    expect(flagged.locator(".msg-warning")).to_contain_text("key changed")
    expect(alice.locator("#withheld")).to_contain_text("bob")
    send(alice, "prove it first")
    mine = messages(alice).locator("article.mine")
    expect(mine.locator(".delivery")).to_have_text("Delivered · only you can read it · not sent to bob (key not accepted)")
    # Said where the message is: bob was left out, and nothing suggests he got it.
    expect(mine.locator(".not-sent")).to_have_text("Not sent to bob")
    expect(messages(bob)).not_to_contain_text("prove it first")
    # The timeline records the change; it stays after the key is accepted.
    notice = messages(alice).locator(".key-change")
    expect(notice).to_contain_text("bob's key changed")
    # Accept new key asks first, with the old and the new fingerprint; Cancel keeps the warning.
    entry.get_by_role("button", name="Accept new key from bob").click()
    dialog = alice.get_by_role("dialog")
    expect(dialog).to_contain_text("Accept bob's new key?")
    expect(dialog.locator("#confirm-previous")).to_have_text(old)
    expect(dialog.locator("#confirm-fingerprint")).to_have_text(new)
    expect(dialog).to_contain_text("Cancel keeps the warning")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(entry).to_contain_text(KEY_CHANGED)
    expect(alice.locator("#withheld")).to_contain_text("bob")
    entry.get_by_role("button", name="Accept new key from bob").click()
    dialog.get_by_role("button", name="Accept new key").click()
    expect(entry).not_to_contain_text(KEY_CHANGED)
    expect(notice).to_contain_text("bob's key changed")
    expect(messages(alice).locator(".log-notice").filter(has_text="You accepted bob's new key.")).to_have_count(1)
    expect(flagged.locator(".msg-warning")).to_have_count(0)
    expect(alice.locator("#withheld")).to_be_hidden()
    send(alice, "welcome back")
    expect(messages(bob).locator(".text").filter(has_text="welcome back")).to_have_count(1)
    # The accepted pin is stored: a reload does not warn again.
    alice.reload()
    alice.wait_for_selector("html[data-ready=true]")
    expect(participants(alice)).to_have_count(2)
    expect(participant(alice, "bob")).not_to_contain_text(KEY_CHANGED)


def test_a_username_returning_from_another_identity_is_flagged(people):
    alice = people.join("alice")
    bob = people.join("bob")
    bob.get_by_role("button", name="Leave chat").click()
    expect(participants(alice)).to_have_count(1)
    impostor = people.join("bob")  # a different browser profile: a different identity key
    entry = participant(alice, "bob")
    expect(entry).to_contain_text(KEY_CHANGED)
    expect(entry.locator(".fingerprint")).to_have_text(own_fingerprint(impostor))
    # The newcomer has never seen alice: a first meeting is pinned without a warning.
    expect(participant(impostor, "alice")).not_to_contain_text(KEY_CHANGED)
