"""The conversation as people use it: notices, links, grouping, the New messages button, the
unread title and favicon, Show more, Retry after a rate limit, copy buttons, the installable
page's manifest and icons, and no console errors along the way. Real Chromium, real server."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .harness import ServerThread, join, messages, open_page, participant, send


@pytest.fixture
def console(people):
    """Every console error and failed request of every page the test opens."""
    problems = []

    def watch(page):
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
        page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status} {r.url}"))

    original = people.page

    def page(context=None):
        opened = original(context)
        watch(opened)
        return opened

    people.page = page
    return problems


def test_joins_leaves_and_the_empty_state_are_in_the_timeline(people, console):
    alice = people.join("alice")
    log = messages(alice)
    empty = alice.locator("#empty-state")
    expect(empty).to_contain_text("You are the only one here")
    expect(empty.get_by_role("link")).to_have_text(re.compile(r"^http://127\.0\.0\.1:\d+/$"))
    expect(empty.get_by_role("button", name="Copy link")).to_be_visible()
    expect(empty).to_contain_text("only works on this computer")
    bob = people.join("bob")
    expect(log.locator(".presence")).to_have_text(["bob joined"])
    expect(empty).to_contain_text("No messages yet")
    expect(log.locator(".day-divider")).to_have_text(["Today"])
    send(bob, "hi")
    expect(empty).to_be_hidden()
    bob.get_by_role("button", name="Leave chat").click()
    expect(log.locator(".presence")).to_have_text(["bob joined", "bob left"])
    assert console == []


def test_links_open_in_a_new_tab_and_nothing_else_is_interpreted(people, console):
    alice = people.join("alice")
    bob = people.join("bob")
    send(alice, "notes at https://example.com/a?b=1&c=2. (see http://intra.lan/x) "
                "javascript:alert(1) <a href=\"https://evil.example\">x</a> data:text/html,hi")
    text = messages(bob).locator("article .text")
    expect(text).to_have_text("notes at https://example.com/a?b=1&c=2. (see http://intra.lan/x) "
                              "javascript:alert(1) <a href=\"https://evil.example\">x</a> data:text/html,hi")
    links = text.get_by_role("link")
    expect(links).to_have_count(3)
    expect(links.nth(0)).to_have_attribute("href", "https://example.com/a?b=1&c=2")
    expect(links.nth(1)).to_have_attribute("href", "http://intra.lan/x")
    # The markup is text: its URL is linked as the text it is, up to the quote.
    expect(links.nth(2)).to_have_text("https://evil.example")
    for i in range(3):
        expect(links.nth(i)).to_have_attribute("target", "_blank")
        expect(links.nth(i)).to_have_attribute("rel", "noopener noreferrer")
    assert bob.locator("#messages a[href^='javascript'], #messages a[href^='data']").count() == 0
    assert console == []


def test_a_run_of_messages_shares_one_name_and_keeps_the_full_time(people):
    alice = people.join("alice")
    bob = people.join("bob")
    for text in ("one", "two", "three"):
        send(bob, text)
    send(alice, "reply")
    send(bob, "four")
    log = messages(alice)
    expect(log.locator("article")).to_have_count(5)
    grouped = [alice.evaluate("(e) => e.classList.contains('grouped')", a.element_handle())
               for a in log.locator("article").all()]
    assert grouped == [False, True, True, False, False]
    # The name is still there for screen readers, the time has its full date.
    expect(log.locator("article").nth(1).locator(".sender")).to_have_text("bob")
    time = log.locator("article").nth(1).locator("time")
    expect(time).to_have_attribute("title", re.compile(r"\d{4}"))
    expect(time.locator(".visually-hidden")).to_have_text(re.compile(r"\d{4}.*\d\d:\d\d"))


def test_scrolled_up_new_messages_show_a_button_and_the_unread_title(people, console):
    alice = people.join("alice")
    bob = people.join("bob")
    for i in range(30):
        send(bob, f"filler {i}")
    log = messages(alice)
    expect(log.locator("article")).to_have_count(30)
    expect(alice).to_have_title("#lobby · securechat")
    alice.evaluate("() => { document.getElementById('messages').scrollTop = 0; }")
    send(bob, "while you were reading")
    send(bob, "and another")
    jump = alice.get_by_role("button", name=re.compile(r"^New messages"))
    expect(jump).to_have_text("New messages (2)")
    expect(alice).to_have_title("(2) #lobby · securechat")
    icon = alice.locator("link[rel=icon]")
    expect(icon).to_have_attribute("href", re.compile(r"^data:image/png;base64,"))
    assert alice.evaluate("() => document.getElementById('messages').scrollTop") == 0
    jump.click()
    expect(jump).to_be_hidden()
    expect(alice).to_have_title("#lobby · securechat")
    expect(icon).to_have_attribute("href", re.compile(r"/static/icons/favicon-32\.png"))
    # Reading to the bottom by scrolling clears it as well.
    alice.evaluate("() => { document.getElementById('messages').scrollTop = 0; }")
    send(bob, "one more")
    expect(alice).to_have_title("(1) #lobby · securechat")
    alice.evaluate("() => { const l = document.getElementById('messages'); l.scrollTop = l.scrollHeight; }")
    expect(alice).to_have_title("#lobby · securechat")
    expect(jump).to_be_hidden()
    assert console == []


def test_a_hidden_tab_counts_unread_in_the_title(people):
    alice = people.join("alice")
    bob = people.join("bob")
    alice.evaluate("""() => {
        Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
        document.dispatchEvent(new Event('visibilitychange')); }""")
    send(bob, "are you there?")
    expect(alice).to_have_title("(1) #lobby · securechat")
    alice.evaluate("""() => {
        Object.defineProperty(document, 'hidden', { configurable: true, get: () => false });
        document.dispatchEvent(new Event('visibilitychange')); }""")
    expect(alice).to_have_title("#lobby · securechat")


def test_long_messages_are_collapsed_with_show_more(people):
    alice = people.join("alice")
    bob = people.join("bob")
    send(alice, "\n".join(f"line {i}" for i in range(60)))
    article = messages(bob).locator("article")
    toggle = article.get_by_role("button", name="Show more")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    collapsed = article.locator(".text").bounding_box()["height"]
    toggle.click()
    expect(article.get_by_role("button", name="Show less")).to_have_attribute("aria-expanded", "true")
    assert article.locator(".text").bounding_box()["height"] > collapsed * 2
    send(alice, "short")
    expect(messages(bob).locator("article").nth(1).get_by_role("button")).to_have_count(0)


def test_the_delivery_line_is_quiet_once_delivered(people):
    alice = people.join("alice")
    people.join("bob")
    send(alice, "quietly delivered")
    mine = messages(alice).locator("article.mine")
    expect(mine).to_have_attribute("data-state", "delivered")
    expect(mine.locator(".delivery")).to_have_text("Delivered · to 1 other")
    assert mine.locator(".delivery").bounding_box()["height"] <= 1
    expect(mine.locator(".tick")).to_have_attribute("title", "Delivered · to 1 other")


def test_a_rate_limited_message_fails_with_retry_and_retry_sends_it(browser, tmp_path):
    # [limits] rate_per_second = 0.5, burst 3: the join and two messages fit, a quick run of
    # five more cannot all fit, so the server drops some as rate_limited.
    server = ServerThread(tmp_path / "data", rate_per_second=0.5, rate_burst=3).start()
    context = browser.new_context()
    try:
        page = open_page(context, server.url)
        join(page, "alice")
        box = page.get_by_label("Message", exact=True)
        for i in range(5):
            box.fill(f"burst {i}")
            box.press("Enter")
        mine = messages(page).locator("article.mine")
        expect(mine).to_have_count(5)
        expect(mine.locator(".delivery-state").filter(has_text=re.compile("Sending|Waiting"))).to_have_count(0)
        failed = messages(page).locator("article.mine[data-state=failed]")
        expect(failed.first).to_contain_text("limits how fast")
        dropped = failed.count()
        assert 1 <= dropped <= 4
        expect(messages(page).locator(".log-warning")).to_have_count(0)
        first = failed.first.locator(".text").inner_text()
        retried = mine.filter(has=page.locator(".text", has_text=re.compile(f"^{first}$")))
        page.wait_for_timeout(2200)  # a token comes back
        retried.get_by_role("button", name="Retry").click()
        expect(retried).to_have_attribute("data-state", "delivered")
        logged = [r for r in server.log_records() if r["event"] == "msg"]
        assert len(logged) == 5 - dropped + 1
    finally:
        context.close()
        server.stop()


def test_copy_buttons_name_what_they_copy_and_copy_it(people):
    context = people.context(permissions=["clipboard-read", "clipboard-write"])
    alice = people.join("alice", context)
    bob = people.join("bob")
    copy_own = alice.get_by_role("button", name="Copy your fingerprint")
    copy_own.click()
    expect(copy_own).to_have_text("Copied")
    own = alice.locator("#own-fingerprint").inner_text()
    assert alice.evaluate("() => navigator.clipboard.readText()") == own
    copy_bob = participant(alice, "bob").get_by_role("button", name="Copy bob's fingerprint")
    copy_bob.click()
    assert alice.evaluate("() => navigator.clipboard.readText()") == bob.locator("#own-fingerprint").inner_text()
    # Every per-person button names the person.
    for button in participant(alice, "bob").get_by_role("button").all():
        assert "bob" in (button.get_attribute("aria-label") or button.inner_text())


def test_the_composer_explains_its_own_errors_next_to_it(people):
    alice = people.join("alice")
    box = alice.get_by_label("Message", exact=True)
    box.fill("x" * 15000)
    counter = alice.locator("#char-count")
    expect(counter).to_have_text("15,000 / 16,000 characters")
    box.fill("x" * 16001)
    alice.get_by_role("button", name="Send").click()
    error = alice.locator("#composer-error")
    expect(error).to_have_text("Messages can have at most 16000 characters.")
    expect(box).to_have_attribute("aria-invalid", "true")
    expect(messages(alice).locator(".log-warning")).to_have_count(0)
    box.fill("fine")
    expect(error).to_have_text("")
    expect(alice.get_by_label("Username", exact=True)).to_have_attribute("maxlength", "32")


def test_notifications_are_opt_in_and_name_only_the_sender_by_default(people):
    context = people.context(permissions=["notifications"])
    context.add_init_script("""
        window.__notes = [];
        window.Notification = class extends EventTarget {
          static permission = 'default';
          static async requestPermission() { this.permission = 'granted'; return 'granted'; }
          constructor(title, options) { super(); window.__notes.push({ title, body: options.body }); }
          close() {}
        };
        Object.defineProperty(document, 'hidden', { configurable: true, get: () => window.__hidden ?? false });
    """)
    alice = people.join("alice", context)
    bob = people.join("bob")
    send(bob, "not yet opted in")
    enable = alice.get_by_role("button", name="Enable notifications")
    enable.click()
    expect(alice.get_by_role("button", name="Turn off notifications")).to_be_visible()
    option = alice.get_by_label("Show message text in notifications")
    expect(option).not_to_be_checked()
    expect(alice.locator("#notify-options")).to_contain_text("notification centre keeps what they show")
    alice.evaluate("() => { window.__hidden = true; }")
    send(bob, "secret plans")
    alice.wait_for_function("() => window.__notes.length === 1")
    assert alice.evaluate("() => window.__notes") == [{"title": "New message from bob in #lobby", "body": "securechat · #lobby"}]
    option.check()
    send(bob, "now with text")
    alice.wait_for_function("() => window.__notes.length === 2")
    assert alice.evaluate("() => window.__notes[1].body") == "now with text"


def test_the_manifest_icons_and_favicon_are_served_with_their_types(people, server, console):
    page = people.join("alice")
    manifest_href = page.locator("link[rel=manifest]").get_attribute("href")
    request = page.context.request
    manifest = request.get(server.url.rstrip("/") + manifest_href)
    assert manifest.status == 200
    assert manifest.headers["content-type"].startswith("application/manifest+json")
    data = manifest.json()
    assert data["start_url"] == "/" and data["display"] == "standalone"
    sizes = set()
    for icon in data["icons"]:
        response = request.get(server.url.rstrip("/") + icon["src"])
        assert response.status == 200, icon
        assert response.headers["content-type"] == "image/png"
        body = response.body()
        assert body.startswith(b"\x89PNG")
        width, height = int.from_bytes(body[16:20], "big"), int.from_bytes(body[20:24], "big")
        assert f"{width}x{height}" == icon["sizes"]
        sizes.add(icon["sizes"])
    assert {"192x192", "512x512"} <= sizes
    for path, kind in (("/favicon.ico", "image/"), (page.locator("link[rel=icon]").get_attribute("href"), "image/png"),
                       (page.locator("link[rel=apple-touch-icon]").get_attribute("href"), "image/png")):
        response = request.get(server.url.rstrip("/") + path)
        assert response.status == 200, path
        assert response.headers["content-type"].startswith(kind), (path, response.headers["content-type"])
    # The manifest is allowed by the page's CSP (manifest-src falls back to default-src 'self').
    policy = request.get(server.url).headers["content-security-policy"]
    assert "default-src 'self'" in policy and "manifest-src" not in policy
    page.reload()
    page.wait_for_selector("html[data-ready=true]")
    page.wait_for_timeout(500)
    assert console == []
