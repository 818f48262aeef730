"""History on this device, in real Chromium: IndexedDB, the reload, retention, Clear, the
passphrase lock (read as raw IndexedDB values), search, export and a real quota refusal."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
from playwright.sync_api import expect

from .conftest import TIMEOUT_MS
from .harness import CHROMIUM_ARGS, chromium_path, join, messages, open_menu, own_fingerprint, participant, send

DAY_MS = 24 * 60 * 60 * 1000
EARLIER = "Earlier on this device"
PASSPHRASE = "correct horse battery staple"

# Raw reads of the history database, as any script of this origin (or a copied profile) sees it.
READ_ROWS = """async () => {
    const db = await new Promise((ok, fail) => { const r = indexedDB.open('securechat-history');
        r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
    const get = (store, method) => new Promise((ok, fail) => {
        const r = db.transaction(store).objectStore(store)[method](); r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
    const hex = (bytes) => [...new Uint8Array(bytes.buffer ?? bytes)].map((b) => b.toString(16).padStart(2, '0')).join('');
    const bytes = (v) => v instanceof Uint8Array || v instanceof ArrayBuffer;
    const plain = (v) => JSON.parse(JSON.stringify(v, (k, x) => (bytes(x) ? { hex: hex(x) } : x)));
    const rows = (await get('messages', 'getAll')).map(plain);
    const keys = await get('meta', 'getAllKeys');
    const values = (await get('meta', 'getAll')).map(plain);
    db.close();
    return { rows, meta: Object.fromEntries(keys.map((k, i) => [k, values[i]])) };
}"""

PUT_ROWS = """async (rows) => {
    const db = await new Promise((ok, fail) => { const r = indexedDB.open('securechat-history');
        r.onsuccess = () => ok(r.result); r.onerror = () => fail(r.error); });
    const tx = db.transaction('messages', 'readwrite');
    for (const row of rows) tx.objectStore('messages').add(row);
    await new Promise((ok, fail) => { tx.oncomplete = ok; tx.onerror = () => fail(tx.error); });
    db.close();
}"""


def stored(page) -> dict:
    return page.evaluate(READ_ROWS)


def texts(page) -> list[str]:
    return [row["record"]["text"] for row in stored(page)["rows"]]


def kept_record(text, *, ts, room="lobby", sender="bob", kind="received", fingerprint="b" * 64):
    record = {"v": 1, "kind": kind, "room": room, "id": None, "ts": ts, "sender": sender, "fingerprint": fingerprint,
              "trust": "known", "verified": False, "text": text, "attachments": []}
    if kind == "sent":
        record["delivery"] = {"state": "delivered", "reason": "to 1 other", "withheld": []}
    return {"ts": ts, "room": room, "record": record}


def now_ms(page) -> int:
    return page.evaluate("Date.now()")


def reload(page) -> None:
    page.reload()
    page.wait_for_selector("html[data-ready=true]")


def earlier(page):
    return messages(page).locator("section.earlier")


def wait_kept(page, count: int) -> None:
    """History writes are asynchronous: wait until `count` rows are in IndexedDB."""
    deadline = time.monotonic() + 10
    while len(stored(page)["rows"]) != count:
        assert time.monotonic() < deadline, stored(page)["rows"]
        page.wait_for_timeout(50)


def open_history_settings(page):
    open_menu(page)
    page.get_by_role("button", name="History settings").click()
    dialog = page.get_by_role("dialog", name="History on this device")
    expect(dialog).to_be_visible()
    return dialog


def set_passphrase(page, passphrase=PASSPHRASE):
    dialog = open_history_settings(page)
    dialog.get_by_label("New passphrase", exact=True).fill(passphrase)
    dialog.get_by_label("Repeat the passphrase", exact=True).fill(passphrase)
    dialog.get_by_role("button", name="Set passphrase").click()
    expect(dialog.get_by_role("status")).to_have_text("History on this device is now encrypted with your passphrase.",
                                                      timeout=TIMEOUT_MS)
    dialog.get_by_role("button", name="Done").click()


# -- reload, restart, late joiner -------------------------------------------------------------

def test_messages_survive_a_reload_which_rejoins_by_itself(people, server):
    alice = people.join("alice")
    bob = people.join("bob")
    fingerprint = own_fingerprint(alice)
    send(alice, "hello bob")
    expect(messages(bob).locator(".text")).to_have_text(["hello bob"])
    send(bob, "hi alice, <b>this</b> stays text")
    expect(messages(alice).locator("article.mine[data-state=delivered]")).to_have_count(1)
    expect(messages(alice).locator(".text")).to_have_count(2)
    wait_kept(alice, 2)

    reload(alice)
    # A non-event: no join form, no click; the same identity and name, connected again.
    expect(alice.get_by_role("status")).to_have_text("Connected", timeout=5000)
    expect(alice.get_by_role("button", name="Join chat")).to_be_hidden()
    assert own_fingerprint(alice) == fingerprint
    expect(participant(bob, "alice").locator(".fingerprint")).to_have_text(fingerprint)
    assert sorted(p["username"] for p in server.roster()) == ["alice", "bob"]

    section = earlier(alice)
    expect(section.get_by_role("heading", name=EARLIER, exact=True)).to_have_text(EARLIER)
    expect(section.locator(".text")).to_have_text(["hello bob", "hi alice, <b>this</b> stays text"])
    expect(section.locator("article.mine .sender")).to_have_text("alice")
    expect(section.locator("article:not(.mine) .sender")).to_have_text("bob")
    expect(section.locator("article.mine")).to_have_attribute("data-state", "delivered")
    expect(section.locator("b")).to_have_count(0)
    # And the conversation goes on below them.
    send(bob, "after your reload")
    expect(messages(alice).locator("article:not(section.earlier article) .text")).to_have_text(["after your reload"])
    send(alice, "still here")
    expect(messages(bob).locator(".text").last).to_have_text("still here")
    wait_kept(alice, 4)


def test_a_tab_that_left_the_chat_shows_the_join_form_after_a_reload(people):
    alice = people.join("alice")
    send(alice, "note to self")
    wait_kept(alice, 1)
    open_menu(alice)
    alice.get_by_role("button", name="Leave chat").click()
    reload(alice)
    expect(alice.get_by_role("button", name="Join chat")).to_be_visible()
    join(alice, "alice")
    expect(earlier(alice).locator(".text")).to_have_text(["note to self"])


def test_history_survives_a_server_restart(people, server):
    alice = people.join("alice")
    bob = people.join("bob")
    send(alice, "before the restart")
    expect(messages(bob).locator(".text")).to_have_text(["before the restart"])
    wait_kept(bob, 1)
    server.stop()
    for page in (alice, bob):
        expect(page.get_by_role("status")).to_contain_text("Reconnecting")
    server.start()  # same port, same data directory
    for page in (alice, bob):
        expect(page.get_by_role("status")).to_have_text("Connected", timeout=30_000)
    reload(bob)
    expect(bob.get_by_role("status")).to_have_text("Connected", timeout=5000)
    expect(earlier(bob).locator(".text")).to_have_text(["before the restart"])
    send(alice, "after the restart")
    expect(messages(bob).locator(".text")).to_have_text(["before the restart", "after the restart"])
    wait_kept(bob, 2)


def test_a_late_joiners_device_has_nothing_from_before_it_joined(people):
    alice = people.join("alice")
    bob = people.join("bob")
    send(alice, "said before carol came")
    expect(messages(bob).locator(".text")).to_have_text(["said before carol came"])
    carol = people.join("carol")
    expect(participant(alice, "carol")).to_have_count(1)
    assert stored(carol)["rows"] == []
    reload(carol)
    expect(carol.get_by_role("status")).to_have_text("Connected", timeout=5000)
    expect(earlier(carol)).to_have_count(0)
    send(bob, "said after carol came")
    expect(messages(carol).locator(".text")).to_have_text(["said after carol came"])
    wait_kept(carol, 1)
    assert texts(carol) == ["said after carol came"]


def test_a_message_the_page_closed_on_offers_retry_when_it_opens_again(people, server):
    context = people.context()
    alice = people.join("alice", context)
    bob = people.join("bob")
    server.stop()
    expect(alice.get_by_role("status")).to_contain_text("Reconnecting")
    send(alice, "typed while the server was down")
    expect(messages(alice).locator("article.mine .delivery")).to_contain_text("Waiting to send")
    wait_kept(alice, 1)
    alice.close()  # closed while offline: the outbox goes with the page
    server.start()
    expect(bob.get_by_role("status")).to_have_text("Connected", timeout=30_000)
    alice = people.join("alice", context)
    expect(participant(alice, "bob")).to_have_count(1)
    kept = earlier(alice).locator("article.mine")
    expect(kept).to_have_attribute("data-state", "failed")
    expect(kept.locator(".delivery")).to_contain_text("The page closed before the server confirmed it")
    kept.get_by_role("button", name="Retry").click()
    expect(messages(bob).locator(".text")).to_have_text(["typed while the server was down"])
    expect(earlier(alice)).to_have_count(0)  # the old copy went; the new one is live
    expect(messages(alice).locator("article.mine[data-state=delivered]")).to_have_count(1)
    wait_kept(alice, 1)


# -- retention and clearing --------------------------------------------------------------------

def test_retention_prunes_what_is_older_than_the_chosen_days(people):
    alice = people.join("alice")
    now = now_ms(alice)
    alice.evaluate(PUT_ROWS, [kept_record("forty days old", ts=now - 40 * DAY_MS),
                              kept_record("two days old", ts=now - 2 * DAY_MS),
                              kept_record("an hour old", ts=now - 3600_000)])
    reload(alice)
    # The default keeps 30 days: the 40-day-old message is gone from IndexedDB, not just hidden.
    expect(earlier(alice).locator(".text")).to_have_text(["two days old", "an hour old"])
    assert texts(alice) == ["two days old", "an hour old"]
    open_menu(alice)
    expect(alice.locator("#history-state")).to_have_text("Kept on this device for 30 days · no passphrase")

    dialog = open_history_settings(alice)
    expect(dialog.get_by_label("Keep messages")).to_have_value("30")
    dialog.get_by_label("Keep messages").select_option(label="1 day")
    confirm = alice.get_by_role("dialog", name="Keep only 1 day?")
    confirm.get_by_role("button", name="Delete older messages").click()
    expect(earlier(alice).locator(".text")).to_have_text(["an hour old"])
    assert texts(alice) == ["an hour old"]

    dialog.get_by_label("Keep messages").select_option(label="Don't keep")
    alice.get_by_role("dialog", name="Stop keeping history?").get_by_role("button", name="Delete and stop keeping").click()
    expect(earlier(alice)).to_have_count(0)
    assert stored(alice)["rows"] == []
    dialog.get_by_role("button", name="Done").click()
    send(alice, "not kept")
    expect(messages(alice).locator("article.mine[data-state=delivered]")).to_have_count(1)
    alice.wait_for_timeout(300)
    assert stored(alice)["rows"] == []
    assert stored(alice)["meta"]["settings"] == {"retentionDays": 0}


def test_clear_history_removes_everything_from_indexeddb(people):
    alice = people.join("alice")
    bob = people.join("bob")
    send(alice, "one")
    send(bob, "two")
    expect(messages(alice).locator(".text")).to_have_count(2)
    wait_kept(alice, 2)
    alice.evaluate(PUT_ROWS, [kept_record("in another room", ts=now_ms(alice), room="design")])

    open_menu(alice)
    alice.get_by_role("button", name="Clear history on this device").click()
    question = alice.get_by_role("dialog", name="Clear history on this device?")
    expect(question).to_contain_text("in every room")
    question.get_by_role("button", name="Cancel").click()
    assert len(stored(alice)["rows"]) == 3

    open_menu(alice)
    alice.get_by_role("button", name="Clear history on this device").click()
    alice.get_by_role("dialog", name="Clear history on this device?").get_by_role("button", name="Clear history").click()
    expect(messages(alice).locator(".log-notice")).to_have_text(["History on this device cleared."])
    expect(messages(alice).locator("article")).to_have_count(0)
    assert stored(alice)["rows"] == []
    reload(alice)
    expect(alice.get_by_role("status")).to_have_text("Connected", timeout=5000)
    expect(earlier(alice)).to_have_count(0)
    assert stored(alice)["rows"] == []
    # Bob's device keeps its own copy.
    assert texts(bob) == ["one", "two"]


def test_new_identity_asks_whether_to_keep_history(people):
    alice = people.join("alice")
    send(alice, "kept across identities?")
    wait_kept(alice, 1)
    first = own_fingerprint(alice)

    open_menu(alice)
    alice.get_by_role("button", name="New identity").click()
    dialog = alice.get_by_role("dialog", name="Replace your identity?")
    keep = dialog.get_by_label("Keep the history on this device (the messages stay readable here)")
    expect(keep).to_be_checked()
    dialog.get_by_role("button", name="Replace identity").click()
    expect(alice.locator("#own-fingerprint")).not_to_have_text(first)
    expect(alice.get_by_role("status")).to_have_text("Connected")
    assert texts(alice) == ["kept across identities?"]

    second = own_fingerprint(alice)
    open_menu(alice)
    alice.get_by_role("button", name="New identity").click()
    dialog = alice.get_by_role("dialog", name="Replace your identity?")
    dialog.get_by_label("Keep the history on this device (the messages stay readable here)").uncheck()
    dialog.get_by_role("button", name="Replace identity").click()
    expect(alice.locator("#own-fingerprint")).not_to_have_text(second)
    expect(messages(alice).locator("article")).to_have_count(0)
    assert stored(alice)["rows"] == []


# -- the passphrase lock -------------------------------------------------------------------------

def launch_profile(browser, profile, tmp_path):
    """A browser session on a profile folder on disk (what a person's browser is)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    context = browser.browser_type.launch_persistent_context(
        str(profile), executable_path=chromium_path(), args=CHROMIUM_ARGS,
        env={"HOME": str(home), "XDG_CONFIG_HOME": str(home)})
    context.set_default_timeout(TIMEOUT_MS)
    return context


def split_bytes(value, found: list) -> object:
    """The JSON without its byte fields ({"hex": ...}), and those bytes collected in `found`."""
    if isinstance(value, dict):
        if set(value) == {"hex"}:
            found.append(bytes.fromhex(value["hex"]))
            return None
        return {k: split_bytes(v, found) for k, v in value.items()}
    if isinstance(value, list):
        return [split_bytes(v, found) for v in value]
    return value


def assert_sealed(data: dict, *plaintexts: str) -> None:
    blobs: list[bytes] = []
    rest = json.dumps(split_bytes(data, blobs))
    for text in plaintexts:
        assert text not in rest, text
        assert not any(text.encode() in blob for blob in blobs), text
    for row in data["rows"]:
        assert set(row) == {"seq", "ts", "sealed"}, row  # no room, no record: only the time
        assert set(row["sealed"]) == {"iv", "data"}
        assert len(row["sealed"]["iv"]["hex"]) == 24
    lock = data["meta"]["lock"]
    assert lock["kdf"] == "PBKDF2-SHA-256" and lock["iterations"] == 600_000
    assert len(lock["salt"]["hex"]) == 32
    assert len(lock["wrapped"]["hex"]) == 80  # AES-KW of a 256-bit key


def test_with_a_passphrase_the_stored_records_are_ciphertext_and_a_wrong_one_opens_nothing(people, server, browser, tmp_path):
    profile = tmp_path / "profile"
    session = launch_profile(browser, profile, tmp_path)
    alice = session.pages[0] if session.pages else session.new_page()
    alice.goto(server.url)
    alice.wait_for_selector("html[data-ready=true]")
    join(alice, "alice")
    bob = people.join("bob")
    send(bob, "the launch code is 4711")
    send(alice, "noted, shredding the paper")
    expect(messages(alice).locator("article.mine[data-state=delivered]")).to_have_count(1)
    wait_kept(alice, 2)
    assert "4711" in json.dumps(stored(alice))  # no passphrase: as readable as the profile

    set_passphrase(alice)
    open_menu(alice)
    expect(alice.locator("#history-state")).to_have_text("Kept on this device for 30 days · encrypted with your passphrase")
    send(bob, "sealed from the start")
    expect(messages(alice).locator(".text").last).to_have_text("sealed from the start")
    deadline = time.monotonic() + 10
    while len(stored(alice)["rows"]) < 3:
        assert time.monotonic() < deadline
        alice.wait_for_timeout(50)
    assert_sealed(stored(alice), "4711", "launch", "shredding", "sealed from", "lobby", "alice", "bob")

    # Within the browser session a reload asks nothing: the key waits in a service worker's memory.
    reload(alice)
    expect(alice.get_by_role("dialog", name="Unlock history on this device")).to_be_hidden()
    expect(earlier(alice).locator(".text")).to_have_text(
        ["the launch code is 4711", "noted, shredding the paper", "sealed from the start"])
    session.close()  # the browser session ends

    # The profile copied elsewhere and opened in a new browser session.
    copy = tmp_path / "copied-profile"
    shutil.copytree(profile, copy, ignore=shutil.ignore_patterns("Singleton*"))
    thief = launch_profile(browser, copy, tmp_path)
    page = thief.pages[0] if thief.pages else thief.new_page()
    page.goto(server.url)
    page.wait_for_selector("html[data-ready=true]")
    prompt = page.get_by_role("dialog", name="Unlock history on this device")
    expect(prompt).to_be_visible()
    assert_sealed(stored(page), "4711", "launch", "shredding", "sealed from", "lobby")
    prompt.get_by_label("Passphrase", exact=True).fill("correct horse battery stapler")
    prompt.get_by_role("button", name="Unlock").click()
    expect(prompt.get_by_role("alert")).to_have_text("That passphrase does not open this history.", timeout=TIMEOUT_MS)
    prompt.get_by_role("button", name="Not now").click()
    join(page, "alice")  # a new browser session: this tab was never in the chat
    expect(page.locator("#history-locked")).to_be_visible()
    expect(earlier(page)).to_have_count(0)
    expect(page.locator("body")).not_to_contain_text("4711")
    # Search has nothing to say either.
    open_menu(page)
    page.get_by_role("button", name="Search", exact=True).click()
    search = page.get_by_role("dialog", name="Search this device")
    search.get_by_label("Search messages").fill("4711")
    expect(search.get_by_role("status")).to_have_text("History on this device is locked. Unlock it to search.")
    expect(search.get_by_role("list", name="Search results").get_by_role("listitem")).to_have_count(0)
    search.get_by_role("button", name="Close").click()
    # Arriving while locked: shown live, kept in memory, written (sealed) once unlocked.
    send(bob, "while you were locked")
    expect(messages(page).locator(".text")).to_have_text(["while you were locked"])
    assert len(stored(page)["rows"]) == 3
    open_menu(page)
    page.get_by_role("button", name="Search", exact=True).click()
    search.get_by_role("button", name="Unlock history").click()
    prompt.get_by_label("Passphrase", exact=True).fill(PASSPHRASE)
    prompt.get_by_role("button", name="Unlock").click()
    expect(prompt).to_be_hidden(timeout=TIMEOUT_MS)
    expect(page.locator("#history-locked")).to_be_hidden()
    expect(earlier(page).locator(".text")).to_have_text(
        ["the launch code is 4711", "noted, shredding the paper", "sealed from the start"])
    expect(messages(page).locator(".text").filter(has_text="while you were locked")).to_have_count(1)
    wait_kept(page, 4)
    assert_sealed(stored(page), "4711", "while you were locked", "lobby")
    thief.close()


def test_search_finds_a_message_and_scrolls_to_it(people):
    alice = people.join("alice")
    now = now_ms(alice)
    rows = [kept_record(f"filler message number {i}", ts=now - (400 - i) * 60_000) for i in range(400)]
    rows[20]["record"]["text"] = "the Café by the harbour at noon"
    rows[380]["record"]["text"] = "and the harbour again"
    alice.evaluate(PUT_ROWS, rows)
    reload(alice)
    log = messages(alice)
    expect(earlier(alice).locator("article").last).to_have_text(re.compile("filler message number 399"))

    open_menu(alice)
    alice.get_by_role("button", name="Search", exact=True).click()
    search = alice.get_by_role("dialog", name="Search this device")
    search.get_by_label("Search messages").fill("cafe harbour")
    results = search.get_by_role("list", name="Search results").get_by_role("listitem")
    expect(results).to_have_count(1)
    expect(search.get_by_role("status")).to_have_text("1 match")
    expect(results.first.locator("mark")).to_have_text(["Café", "harbour"])
    expect(results.first).to_contain_text("#lobby")
    results.first.get_by_role("button").click()
    expect(search).to_be_hidden()
    # Older than the first page of kept messages, rendered on the way and scrolled into view.
    found = log.locator("article.found")
    expect(found).to_have_text(re.compile("the Café by the harbour at noon"))
    expect(found).to_be_focused()
    box, frame = found.bounding_box(), log.bounding_box()
    assert frame["y"] <= box["y"] and box["y"] + box["height"] <= frame["y"] + frame["height"], (box, frame)

    # Newest first, and a live message of this page is found too.
    bob = people.join("bob")
    send(bob, "harbour lights tonight")
    expect(log.locator(".text").last).to_have_text("harbour lights tonight")
    wait_kept(alice, 401)
    open_menu(alice)
    alice.get_by_role("button", name="Search", exact=True).click()
    search.get_by_label("Search messages").fill("harbour")
    expect(results).to_have_count(3)
    expect(search.get_by_role("status")).to_have_text("3 matches")
    expect(results.locator(".search-snippet")).to_have_text(
        ["harbour lights tonight", "and the harbour again", "the Café by the harbour at noon"])
    log.evaluate("(el) => { el.scrollTop = 0; }")
    results.first.get_by_role("button").click()
    expect(log.locator("article.found")).to_have_text(re.compile("harbour lights tonight"))
    search_box = log.locator("article.found").bounding_box()
    assert frame["y"] <= search_box["y"] < frame["y"] + frame["height"]


def test_export_contains_exactly_the_rooms_messages(people, tmp_path):
    alice = people.join("alice")
    bob = people.join("bob")
    send(bob, "first <script>alert(1)</script>")
    send(alice, "second")
    expect(messages(alice).locator("article.mine[data-state=delivered]")).to_have_count(1)
    expect(messages(alice).locator(".text")).to_have_count(2)
    wait_kept(alice, 2)
    alice.evaluate(PUT_ROWS, [kept_record("said in #design", ts=now_ms(alice), room="design")])

    open_menu(alice)
    alice.get_by_role("button", name="Export").click()
    dialog = alice.get_by_role("dialog", name="Export #lobby")
    expect(dialog).to_contain_text("2 messages this device kept in #lobby")
    expect(dialog).to_contain_text("not encrypted")
    with alice.expect_download() as got:
        dialog.get_by_role("button", name="Download JSON").click()
    download = got.value
    assert re.fullmatch(r"securechat-lobby-\d{4}-\d{2}-\d{2}\.json", download.suggested_filename)
    data = json.loads(download.path().read_text(encoding="utf-8"))
    assert data["format"] == "securechat-history" and data["room"] == "lobby"
    assert [(m["direction"], m["sender"], m["text"]) for m in data["messages"]] == [
        ("received", "bob", "first <script>alert(1)</script>"), ("sent", "alice", "second")]
    assert data["messages"][1]["delivery"]["state"] == "delivered"
    assert data["messages"][0]["fingerprint"] == own_fingerprint(bob).replace(" ", "")

    with alice.expect_download() as got:
        dialog.get_by_role("button", name="Download HTML").click()
    saved = tmp_path / got.value.suggested_filename
    got.value.save_as(saved)
    html = saved.read_text(encoding="utf-8")
    assert saved.suffix == ".html"
    assert "first &lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "second" in html and "said in #design" not in html
    # The file reads as a page: open it and look.
    viewer = people.context().new_page()
    viewer.goto(saved.as_uri())
    expect(viewer.locator("article .text")).to_have_text(["first <script>alert(1)</script>", "second"])
    expect(viewer.locator("h1")).to_have_text("#lobby")


def test_a_quota_refusal_is_said_and_the_chat_goes_on(people, server):
    # A small quota for this origin, set before the page first loads (Chromium applies an
    # override to storage opened after it), then something else of the origin fills it.
    context = people.context()
    alice = context.new_page()
    cdp = context.new_cdp_session(alice)
    origin = server.url.rstrip("/")
    cdp.send("Storage.overrideQuotaForOrigin", {"origin": origin, "quotaSize": 2_500_000})
    alice.goto(server.url)
    alice.wait_for_selector("html[data-ready=true]")
    join(alice, "alice")
    bob = people.join("bob")
    send(bob, "stored fine")
    expect(messages(alice).locator(".text")).to_have_text(["stored fine"])
    wait_kept(alice, 1)
    refused = alice.evaluate("""async () => {
        const db = await new Promise((ok) => { const r = indexedDB.open('filler', 1);
            r.onupgradeneeded = () => r.result.createObjectStore('s', { autoIncrement: true }); r.onsuccess = () => ok(r.result); });
        const add = (size) => new Promise((ok) => { const tx = db.transaction('s', 'readwrite');
            tx.objectStore('s').add(crypto.getRandomValues(new Uint8Array(size)));
            tx.oncomplete = () => ok(null); tx.onabort = () => ok(tx.error.name); });
        let refused = null;
        for (const size of [32768, 1024, 64]) {  // up to the last few bytes
            for (let i = 0; i < 200; i++) {
                const error = await add(size);
                if (error) { refused = error; break; }
            }
        }
        return refused;
    }""")
    assert refused == "QuotaExceededError"
    send(bob, "x" * 15000)
    send(bob, "after the disk filled up")
    expect(messages(alice).locator(".text").last).to_have_text("after the disk filled up")
    warning = messages(alice).locator(".log-warning").filter(has_text="refused to store more history")
    expect(warning).to_have_count(1)
    expect(warning).to_contain_text("the chat itself goes on")
    send(alice, "and I can still write")
    expect(messages(bob).locator(".text").last).to_have_text("and I can still write")
    expect(messages(alice).locator("article.mine[data-state=delivered]")).to_have_count(1)


def test_when_the_browser_refuses_the_history_database_the_page_says_so_and_keeps_it_for_the_page(people):
    context = people.context()
    # As some private modes do: this database cannot be opened (the identity store still can).
    context.add_init_script("""(() => {
        const open = indexedDB.open.bind(indexedDB);
        indexedDB.open = (name, ...rest) => {
            if (name === 'securechat-history') throw new DOMException('refused', 'InvalidStateError');
            return open(name, ...rest);
        };
    })()""")
    alice = people.join("alice", context)
    expect(messages(alice).locator(".log-warning")).to_contain_text(
        "This browser refused local storage: history on this device lasts only until you close the page.")
    open_menu(alice)
    expect(alice.locator("#history-state")).to_have_text(
        "This browser refused storage: history lasts only until this page closes.")
    bob = people.join("bob")
    send(bob, "kept in this page only")
    expect(messages(alice).locator(".text")).to_have_text(["kept in this page only"])
    alice.get_by_role("button", name="Search", exact=True).click()
    search = alice.get_by_role("dialog", name="Search this device")
    search.get_by_label("Search messages").fill("page only")
    expect(search.get_by_role("status")).to_have_text("1 match")
    search.get_by_role("list", name="Search results").get_by_role("button").click()
    expect(messages(alice).locator("article.found")).to_have_text(re.compile("kept in this page only"))


@pytest.mark.parametrize("size", ["phone", "keyboard", "desktop"])
def test_screenshots_of_the_divider_search_and_passphrase_prompt(people, tmp_path, size):
    """Writes PNGs to look at (SECURECHAT_SHOTS=dir keeps them); asserts the parts are on screen."""
    import os

    viewport = {"phone": (390, 844), "keyboard": (390, 480), "desktop": (1280, 800)}[size]
    options = {"viewport": {"width": viewport[0], "height": viewport[1]}}
    if size != "desktop":
        options.update(is_mobile=True, has_touch=True)
    out = os.environ.get("SECURECHAT_SHOTS")
    folder = tmp_path if not out else __import__("pathlib").Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    alice = people.join("alice", people.context(**options))
    bob = people.join("bob")
    for who, text in [(bob, "Lunch at the harbour café on Friday?"), (alice, "Yes! 12:30 works for me."),
                      (bob, "Booked a table for four."), (alice, "Great, see you there.")]:
        send(who, text)
        expect(messages(alice).locator(".text").last).to_have_text(text)
    wait_kept(alice, 4)
    reload(alice)
    expect(alice.get_by_role("status")).to_have_text("Connected", timeout=5000)
    send(bob, "Running five minutes late.")
    expect(messages(alice).locator(".text").last).to_have_text("Running five minutes late.")
    divider = earlier(alice).get_by_role("heading", name=EARLIER)
    divider.scroll_into_view_if_needed()
    expect(divider).to_be_in_viewport()
    alice.get_by_label("Message", exact=True).blur()
    alice.screenshot(path=str(folder / f"history-divider-{size}.png"))

    open_menu(alice)
    alice.get_by_role("button", name="Search", exact=True).click()
    search = alice.get_by_role("dialog", name="Search this device")
    search.get_by_label("Search messages").fill("harbour")
    expect(search.get_by_role("list", name="Search results").get_by_role("listitem")).to_have_count(1)
    expect(search.get_by_label("Search messages")).to_be_in_viewport()
    alice.screenshot(path=str(folder / f"history-search-{size}.png"))
    search.get_by_role("button", name="Close").click()

    set_passphrase(alice)
    open_menu(alice)
    alice.get_by_role("button", name="History settings").click()
    settings = alice.get_by_role("dialog", name="History on this device")
    settings.get_by_role("button", name="Lock now").click()
    reload(alice)
    prompt = alice.get_by_role("dialog", name="Unlock history on this device")
    expect(prompt).to_be_visible()
    expect(prompt.get_by_role("button", name="Unlock")).to_be_in_viewport()
    alice.screenshot(path=str(folder / f"history-unlock-{size}.png"))
