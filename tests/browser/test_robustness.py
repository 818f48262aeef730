"""Reconnects, replaced sessions, insecure contexts and small screens."""

from __future__ import annotations

from playwright.sync_api import expect

from .harness import messages, open_people, own_fingerprint, participant, participants, send


def test_reconnects_after_a_server_restart_and_sends_what_was_typed_offline(people, server):
    alice = people.join("alice")
    bob = people.join("bob")
    fingerprints = (own_fingerprint(alice), own_fingerprint(bob))
    send(alice, "before the restart")
    expect(messages(bob).locator(".text")).to_have_text(["before the restart"])
    server.stop()
    for page in (alice, bob):
        expect(page.get_by_role("status")).to_contain_text("Reconnecting")
    send(alice, "typed while the server was down")
    pending = messages(alice).locator("article.mine").filter(has_text="typed while the server was down")
    expect(pending.locator(".delivery")).to_contain_text("Waiting to send")
    server.start()  # same port, same data directory
    for page in (alice, bob):
        expect(page.get_by_role("status")).to_have_text("Connected", timeout=30_000)
        expect(participants(page)).to_have_count(2)
    expect(pending.locator(".delivery")).to_have_text("Delivered · to 1 other")
    expect(messages(bob).locator(".text")).to_have_text(["before the restart", "typed while the server was down"])
    assert (own_fingerprint(alice), own_fingerprint(bob)) == fingerprints
    # Re-joined with fresh session keys: both joins are in the log twice.
    joins = [r["username"] for r in server.log_records() if r["event"] == "join"]
    assert sorted(joins) == ["alice", "alice", "bob", "bob"]


def test_a_session_replaced_by_another_tab_stops_and_says_why(people, server):
    context = people.context()
    first = people.join("alice", context)
    second = people.join("alice", context)  # same profile, same identity
    expect(first.get_by_role("status")).to_contain_text("Offline")
    expect(first.get_by_role("log", name="Messages").or_(first.locator("#join-error"))).to_contain_text("replaced")
    expect(first.get_by_role("button", name="Join chat")).to_be_visible()
    first.wait_for_timeout(2500)  # longer than the first backoff delays
    expect(first.get_by_role("status")).to_contain_text("Offline")
    assert [p["username"] for p in server.roster()] == ["alice"]
    expect(second.get_by_role("status")).to_have_text("Connected")


def test_without_a_secure_context_the_page_explains_the_fix(people, server):
    # A LAN-style http:// origin that is not loopback (conftest maps chat.lan to 127.0.0.1):
    # Chromium hides crypto.subtle there, exactly as on http://192.168.x.y.
    page = people.context().new_page()
    page.goto(f"http://chat.lan:{server.port}/")
    assert page.evaluate("() => isSecureContext") is False
    expect(page.get_by_role("heading", name="Encryption is not available on this address")).to_be_visible()
    expect(page.locator("#insecure")).to_contain_text("securechat serve --tls")
    # Written for the visitor first (what they can do), the admin's command second.
    text = page.locator("#insecure").inner_text()
    assert text.index("What you can do") < text.index("ask the person who runs") < text.index("securechat serve --tls")
    expect(page.get_by_role("link", name=f"https://chat.lan:{server.port}")).to_be_visible()
    expect(page.get_by_role("button", name="Join chat")).to_be_hidden()
    expect(page.get_by_role("status")).to_contain_text("Offline")


def test_works_on_a_360_px_wide_screen(people):
    small = people.context(viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    page = people.join("alice", small)
    other = people.join("bob")
    send(other, "a reasonably long message that has to wrap on a phone screen " + "y" * 200)
    expect(messages(page).locator("article")).to_have_count(1)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 360, f"the page is {width}px wide on a 360px screen"
    for locator in (page.get_by_label("Message", exact=True), page.get_by_role("button", name="Send"),
                    page.get_by_role("button", name="People"), page.get_by_role("status")):
        expect(locator).to_be_in_viewport()
    open_people(page)
    expect(page.get_by_role("list", name="Participants")).to_be_in_viewport()
    page.keyboard.press("Escape")
    send(page, "from the phone")
    expect(messages(other).locator(".text").filter(has_text="from the phone")).to_have_count(1)


def test_the_page_works_under_the_servers_strict_content_security_policy(people, server):
    """No inline script, style or handler: the page runs under the CSP the server sends."""
    context = people.context()
    context.add_init_script("""
        window.__violations = [];
        document.addEventListener('securitypolicyviolation',
            (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
    """)
    page = context.new_page()
    response = page.goto(server.url)
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy
    page.close()
    alice = people.join("alice", context)
    bob = people.join("bob")
    send(alice, "under CSP")
    expect(messages(bob).locator(".text")).to_have_text(["under CSP"])
    send(bob, "reply under CSP")
    expect(messages(alice).locator(".text").filter(has_text="reply under CSP")).to_have_count(1)
    participant(alice, "bob").get_by_role("button", name="Mark bob verified").click()
    alice.get_by_role("dialog").get_by_role("button", name="They match").click()
    expect(participant(alice, "bob").locator(".badge.verified")).to_be_visible()
    assert alice.evaluate("() => window.__violations") == []
    # The policy really is enforced: an inline script is refused.
    alice.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1'; document.body.append(s); }")
    assert alice.evaluate("() => window.__ran") is None
    assert alice.evaluate("() => window.__violations.length") == 1


def test_the_page_says_so_when_its_scripts_cannot_run(people, server):
    context = people.context(java_script_enabled=False)
    page = context.new_page()
    page.goto(server.url)
    expect(page.locator("#loading")).to_be_visible()
    expect(page.locator("#loading")).to_contain_text("could not")
    expect(page.get_by_role("button", name="Join chat")).to_be_hidden()
    # With scripts the hint disappears.
    ok = people.page()
    expect(ok.locator("#loading")).to_be_hidden()


def test_over_https_on_a_lan_name_the_page_uses_wss(browser, tmp_path):
    """The deployment the insecure page recommends: `serve --tls`, opened by a LAN name."""
    from securechat import tls

    from .harness import ServerThread, join

    status = tls.ensure_self_signed(tmp_path / "data", hostname="chat.lan", addresses=[])
    context_ssl = tls.server_ssl_context(status.cert_path, status.key_path)
    server = ServerThread(tmp_path / "data", ssl_context=context_ssl, hostname="chat.lan").start()
    contexts = []
    try:
        pages = []
        sockets = []
        for name in ("alice", "bob"):
            context = browser.new_context(ignore_https_errors=True)
            contexts.append(context)
            page = context.new_page()
            page.on("websocket", lambda ws: sockets.append(ws.url))
            page.goto(server.url)
            assert page.evaluate("() => isSecureContext && !!crypto.subtle")
            join(page, name)
            pages.append(page)
        assert sockets == [f"wss://chat.lan:{server.port}/ws"] * 2
        send(pages[0], "over TLS")
        expect(messages(pages[1]).locator(".text")).to_have_text(["over TLS"])
    finally:
        for context in contexts:
            context.close()
        server.stop()
