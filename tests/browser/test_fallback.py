"""The HTTP fallback in a real Chromium: a page that cannot use WebSocket (as an iPhone cannot
with a certificate it accepted by exception) joins, chats both ways with WebSocket users,
survives a server restart, and says on its status line which transport carries it."""

from __future__ import annotations

import contextlib
import http.server
import threading

from playwright.sync_api import expect

from securechat.relay.stream import StreamSession
from securechat.relay.ws import ChatSocket

from .harness import join, messages, open_menu, open_page, participants, send

# WebKit with an exception-accepted certificate: the WebSocket never opens; it reports an error
# and a 1006 close, exactly as the socket of a failed TLS handshake does. fetch and EventSource
# are untouched. `window.__allowWebSocket = true` lifts the block (the device trusts the server now).
NO_WEBSOCKET = """
(() => {
  const Real = window.WebSocket;
  window.WebSocket = function (url, protocols) {
    if (window.__allowWebSocket) return new Real(url, protocols);
    const socket = new EventTarget();
    socket.url = url;
    socket.readyState = 0;
    socket.send = () => { throw new DOMException("Still in CONNECTING state.", "InvalidStateError"); };
    socket.close = () => {};
    window.__refusedWebSockets = (window.__refusedWebSockets || 0) + 1;
    setTimeout(() => {
      socket.readyState = 3;
      socket.onerror?.(new Event("error"));
      socket.onclose?.(Object.assign(new Event("close"), { code: 1006, reason: "", wasClean: false }));
    }, 30);
    return socket;
  };
  window.WebSocket.CONNECTING = 0; window.WebSocket.OPEN = 1; window.WebSocket.CLOSING = 2; window.WebSocket.CLOSED = 3;
})();
"""

FALLBACK = "Connected · via HTTP fallback (WebSocket unavailable)"


def phone_page(people, **options):
    context = people.context(**options)
    context.add_init_script(NO_WEBSOCKET)
    page = open_page(context, people.server.url)
    return page


def transports(server) -> dict[str, str]:
    def read():
        kinds = {StreamSession: "http", ChatSocket: "websocket"}
        return {p.username: kinds[type(p.connection)] for p in server.server.hub.rooms.get().members.values()}

    return server.on_loop(read)


def test_without_websocket_a_person_joins_chats_and_survives_a_restart(people, server):
    alice = people.join("alice")
    bob = people.join("bob")
    phone = phone_page(people)
    join(phone, "iris")
    status = phone.get_by_role("status")
    expect(status).to_have_text(FALLBACK)
    assert phone.evaluate("window.__refusedWebSockets") >= 1
    for page in (alice, bob):
        expect(page.get_by_role("status")).to_have_text("Connected")
        expect(participants(page)).to_have_count(3)
    expect(participants(phone)).to_have_count(3)
    assert transports(server) == {"alice": "websocket", "bob": "websocket", "iris": "http"}

    send(phone, "hello from the phone")
    for page in (alice, bob):
        expect(messages(page).locator(".text")).to_have_text(["hello from the phone"])
    mine = messages(phone).locator("article.mine").filter(has_text="hello from the phone")
    expect(mine.locator(".delivery")).to_have_text("Delivered · to 2 others")
    send(alice, "hi iris, from alice")
    send(bob, "and from bob")
    expect(messages(phone).locator("article:not(.mine) .text")).to_have_text(["hi iris, from alice", "and from bob"])

    server.stop()
    expect(status).to_contain_text("Reconnecting")
    send(phone, "typed on the phone while the server was down")
    server.start()  # same port, same data directory
    expect(status).to_have_text(FALLBACK, timeout=30_000)
    for page in (alice, bob):
        expect(page.get_by_role("status")).to_have_text("Connected", timeout=30_000)
        expect(participants(page)).to_have_count(3)
    assert transports(server)["iris"] == "http"
    for page in (alice, bob):
        expect(messages(page).locator(".text").last).to_have_text("typed on the phone while the server was down")
    send(bob, "welcome back, iris")
    expect(messages(phone).locator("article:not(.mine) .text").last).to_have_text("welcome back, iris")
    assert people.dialogs == []


def test_a_websocket_that_closes_before_hello_falls_back_and_websocket_returns_later(people, server):
    """Playwright's WebSocket routing: the socket opens, then closes before the server's hello
    (a proxy that accepts the upgrade and drops it). Once WebSocket works, a later reconnection
    uses it again."""
    alice = people.join("alice")
    context = people.context()
    state = {"block": True}

    def route(ws):
        if state["block"]:
            ws.close(code=1011, reason="no WebSocket through here")
        else:
            ws.connect_to_server()

    context.route_web_socket("**/ws", route)
    phone = open_page(context, server.url)
    join(phone, "iris")
    status = phone.get_by_role("status")
    expect(status).to_have_text(FALLBACK)
    send(alice, "can you read this?")
    expect(messages(phone).locator("article:not(.mine) .text")).to_have_text(["can you read this?"])

    state["block"] = False
    server.stop()
    server.start()
    expect(status).to_have_text("Connected", timeout=30_000)
    assert transports(server)["iris"] == "websocket"
    send(phone, "back on a WebSocket")
    expect(messages(alice).locator(".text").last).to_have_text("back on a WebSocket")


def test_the_fallback_works_under_the_strict_content_security_policy(people, server):
    phone = phone_page(people)
    violations = []
    phone.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    join(phone, "iris")
    expect(phone.get_by_role("status")).to_have_text(FALLBACK)
    csp = phone.evaluate("async () => (await fetch('/')).headers.get('content-security-policy')")
    assert "connect-src 'self'" in csp
    assert violations == []


def test_a_network_blip_resumes_the_stream_without_losing_or_repeating_a_message(people, server):
    alice = people.join("alice")
    phone = phone_page(people)
    join(phone, "iris")
    status = phone.get_by_role("status")
    expect(status).to_have_text(FALLBACK)
    session = server.on_loop(lambda: server.server.hub.rooms.get().find("iris").connection)
    resumes = []
    phone.on("request", lambda r: resumes.append(r.url) if "/stream?session=" in r.url else None)
    # The phone drops off the network: its stream breaks and, for a while, nothing gets through.
    phone.context.set_offline(True)
    server.on_loop(lambda: session.stream.request.connection.stream.close())
    for i in range(3):
        send(alice, f"sent during the blip {i}")
    # The page says so, without dropping the chat: the session waits on the server.
    expect(status).to_have_text("Reconnecting… · The connection was interrupted; resuming where it left off.")
    expect(phone.get_by_label("Message", exact=True)).to_be_editable()
    phone.context.set_offline(False)
    received = messages(phone).locator("article:not(.mine) .text")
    expect(received).to_have_text([f"sent during the blip {i}" for i in range(3)], timeout=20_000)
    expect(status).to_have_text(FALLBACK)
    assert resumes, "the stream was never cut (the test proves nothing)"
    assert "&last=" in resumes[-1]
    # The same session carried on: no rejoin, no second join record, nobody saw iris leave.
    assert server.on_loop(lambda: server.server.hub.rooms.get().find("iris").connection) is session
    assert [r["username"] for r in server.log_records() if r["event"] == "join"] == ["alice", "iris"]
    assert [r for r in server.log_records() if r["event"] == "leave"] == []


@contextlib.contextmanager
def another_origin():
    """A plain page on another loopback port: another origin, with no CSP of ours in the way."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>elsewhere</title><p>another site"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}/"
    finally:
        site.shutdown()
        site.server_close()
        thread.join(5)


def test_another_origin_cannot_post_into_a_session_even_with_its_token(people, server):
    """A page of another origin, even handed iris's token: its fetch (JSON content type, token
    header) waits for a CORS preflight the server never grants, so Chromium never sends the
    POST; a no-cors fetch loses those headers and is refused; its EventSource gets no stream.
    Nothing reaches iris's session."""
    alice = people.join("alice")
    phone = phone_page(people)
    join(phone, "iris")
    expect(phone.get_by_role("status")).to_have_text(FALLBACK)
    session = server.on_loop(lambda: server.server.hub.rooms.get().find("iris").connection)
    handled, sessions_before = session.received, len(server.server.hub.connections)
    with another_origin() as elsewhere_url:
        elsewhere = people.context().new_page()
        said = []
        elsewhere.on("console", lambda m: said.append(m.text))
        elsewhere.goto(elsewhere_url)
        outcome = elsewhere.evaluate(ATTACK, {"url": server.url, "token": session.token, "seq": handled + 1})
    assert outcome == {"cors": "TypeError", "noCors": "TypeError", "stream": "closed"}
    # Each refused for the reason we mean, as Chromium says it:
    console = "\n".join(said)
    assert "Response to preflight request doesn't pass access control check" in console  # the JSON POST
    assert "ERR_BLOCKED_BY_RESPONSE.NotSameOrigin" in console  # no-cors: Cross-Origin-Resource-Policy
    assert f"Access to resource at '{server.url}stream' from origin" in console  # the EventSource
    assert session.received == handled, "a POST from another origin reached the session"
    assert len(server.server.hub.connections) == sessions_before
    send(alice, "still only between us")
    expect(messages(phone).locator("article:not(.mine) .text").last).to_have_text("still only between us")
    # The control: the same request from the chat's own origin is handled.
    assert phone.evaluate(CONTROL, {"token": session.token, "seq": session.received + 1}) == 204
    assert session.received == handled + 1


ATTACK = """async ({url, token, seq}) => {
  const body = JSON.stringify({v: 2, type: "roster"});
  const headers = {"Content-Type": "application/json", "Securechat-Token": token, "Securechat-Seq": String(seq)};
  const result = {};
  try {
    await fetch(url + "stream/send", {method: "POST", headers, body});
    result.cors = "sent";
  } catch (error) {
    result.cors = error.name;
  }
  try {
    const opaque = await fetch(url + "stream/send", {method: "POST", mode: "no-cors", headers, body});
    result.noCors = opaque.type;
  } catch (error) {
    result.noCors = error.name;
  }
  result.stream = await new Promise((resolve) => {
    const source = new EventSource(url + "stream");
    source.onmessage = () => { source.close(); resolve("opened"); };
    source.onerror = () => { resolve(source.readyState === EventSource.CLOSED ? "closed" : "retrying"); source.close(); };
  });
  return result;
}"""

CONTROL = """async ({token, seq}) => (await fetch("/stream/send", {method: "POST", body: JSON.stringify({v: 2, type: "roster"}),
  headers: {"Content-Type": "application/json", "Securechat-Token": token, "Securechat-Seq": String(seq)}})).status"""


def test_the_iphone_case_https_with_an_accepted_self_signed_certificate(browser, tmp_path):
    """`serve --tls` on a LAN name, the certificate accepted by exception, wss refused (as WebKit
    refuses it): the page chats over HTTPS requests with someone on wss."""
    from securechat import tls

    from .harness import ServerThread

    status = tls.ensure_self_signed(tmp_path / "data", hostname="chat.lan", addresses=[])
    server = ServerThread(tmp_path / "data", ssl_context=tls.server_ssl_context(status.cert_path, status.key_path),
                          hostname="chat.lan").start()
    contexts = []
    try:
        laptop_context = browser.new_context(ignore_https_errors=True)
        phone_context = browser.new_context(ignore_https_errors=True, viewport={"width": 390, "height": 844})
        contexts += [laptop_context, phone_context]
        phone_context.add_init_script(NO_WEBSOCKET)
        laptop = open_page(laptop_context, server.url)
        join(laptop, "alice")
        phone = open_page(phone_context, server.url)
        streams = []
        phone.on("request", lambda r: streams.append(r.url) if "/stream" in r.url else None)
        join(phone, "iris")
        expect(phone.get_by_role("status")).to_have_text(FALLBACK)
        assert streams[0] == f"https://chat.lan:{server.port}/stream"
        assert all(url.startswith(f"https://chat.lan:{server.port}/stream") for url in streams)
        send(phone, "from the phone, over https")
        expect(messages(laptop).locator(".text")).to_have_text(["from the phone, over https"])
        send(laptop, "from the laptop, over wss")
        expect(messages(phone).locator("article:not(.mine) .text")).to_have_text(["from the laptop, over wss"])
    finally:
        for context in contexts:
            context.close()
        server.stop()


def test_the_iphone_case_with_the_local_ca_finds_setup_in_the_menu_after_a_reload(browser, tmp_path):
    """The same phone against `serve --tls` with its local CA: on the fallback because it has not
    installed the CA yet. A reload re-joins straight into the chat (no join card, so not its
    "Set up this device" line), so the menu keeps the way to /setup."""
    from securechat import tls

    from .harness import ServerThread

    data = tmp_path / "data"
    status = tls.ensure_local_ca(data, addresses=[])
    server = ServerThread(data, ssl_context=tls.server_ssl_context(status.cert_path, status.key_path),
                          hostname="localhost", app_options={"local_ca": status.ca.public()}).start()
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 390, "height": 844})
    try:
        context.add_init_script(NO_WEBSOCKET)
        phone = open_page(context, server.url)
        join(phone, "iris")
        expect(phone.get_by_role("status")).to_have_text(FALLBACK)
        phone.reload()
        expect(phone.get_by_role("status")).to_have_text(FALLBACK)
        expect(phone.get_by_role("button", name="Join chat")).to_be_hidden()
        open_menu(phone)
        link = phone.get_by_role("link", name="Trust this server's certificate")
        expect(link).to_be_visible()
        link.click()
        expect(phone.get_by_role("heading", name="Set up this device")).to_be_visible()
        assert phone.url == f"https://localhost:{server.port}/setup"
    finally:
        context.close()
        server.stop()


def test_without_the_local_ca_the_menu_offers_no_setup_link(people, server):
    page = phone_page(people)
    join(page, "iris")
    open_menu(page)
    expect(page.get_by_role("button", name="Leave chat")).to_be_visible()
    expect(page.get_by_role("link", name="Trust this server's certificate")).to_have_count(0)
