"""Files and images in real Chromium: encrypted in the sender's page, opened only by the
message's recipients, verified before anything is shown or saved."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import statistics
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
from helpers import files_containing
from playwright.sync_api import expect

from securechat import filecrypto as fc
from securechat.client import ChatClient
from securechat.storage.blobs import BlobInfo

from .harness import ServerThread, messages, participants, send

MARKER = b"PLAINTEXT-MARKER-browser-files-9d41"


def png(width: int, height: int) -> tuple[bytes, bytes]:
    """A lossless, opaque RGBA PNG (canvas premultiplies alpha) with a pattern, and its raw pixels."""
    rows, pixels = [], bytearray()
    for y in range(height):
        row = bytearray([0])  # filter: none
        for x in range(width):
            pixel = bytes([(x * 7 + y * 3) % 256, (x * y) % 256, (255 - x * 5) % 256, 255])
            row += pixel
            pixels += pixel
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    text = chunk(b"tEXt", b"Comment\x00" + MARKER)  # the marker travels inside the image too
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + text + chunk(b"IDAT", zlib.compress(b"".join(rows))) \
        + chunk(b"IEND", b"")
    return data, bytes(pixels)


def attach(page, path) -> None:
    """Through the real button and the browser's file chooser."""
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Attach file").click()
    chooser.value.set_files(str(path))


def pixels_of(page, image) -> bytes:
    rgba = image.evaluate("""(img) => {
        const canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const context = canvas.getContext("2d", { colorSpace: "srgb" });
        context.drawImage(img, 0, 0);
        return Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data);
    }""")
    return bytes(rgba)


def stored_blobs(server) -> list:
    return server.on_loop(lambda: server.server.hub.blobs.blobs())


def test_alice_sends_a_png_and_bob_sees_the_same_pixels(people, server, tmp_path):
    data, pixels = png(64, 48)
    path = tmp_path / "holiday NAME-MARKER.png"
    path.write_bytes(data)
    alice, bob = people.join("alice"), people.join("bob")
    attach(alice, path)
    image = messages(bob).locator("article img.preview")
    expect(image).to_have_attribute("alt", path.name)
    image.evaluate("(img) => img.decode()")
    assert image.evaluate("(img) => img.src").startswith("blob:")
    assert (image.evaluate("(img) => [img.naturalWidth, img.naturalHeight]")) == [64, 48]
    assert pixels_of(bob, image) == pixels
    # The sender sees its own copy at once, from the local file, delivered to bob.
    mine = messages(alice).locator("article.mine")
    expect(mine.locator("img.preview")).to_have_attribute("alt", path.name)
    expect(mine.locator(".delivery")).to_have_text("Delivered · to 1 other")
    # A click opens it full size.
    messages(bob).get_by_role("button", name=f"Open {path.name} full size").click()
    viewer = bob.get_by_role("dialog", name=f"Image {path.name}")
    expect(viewer).to_be_visible()
    expect(viewer.locator("img")).to_have_attribute("alt", path.name)
    with bob.expect_download() as saved:
        viewer.get_by_role("button", name="Download").click()
    assert saved.value.suggested_filename == path.name
    assert Path(saved.value.path()).read_bytes() == data  # the decrypted file, byte for byte
    viewer.get_by_role("button", name="Close").click()
    expect(viewer).to_be_hidden()
    # The server holds ciphertext only: no pixel data, name or type, and the log has no key.
    (record,) = [r for r in server.log_records() if r["event"] == "msg"]
    (blob,) = stored_blobs(server)
    assert record["attachments"] == [{"id": blob.id, "size": fc.blob_size(len(data))}]
    assert files_containing(server.data_dir, MARKER, b"NAME-MARKER", b"image/png", data[-64:]) == []


class Pinger(threading.Thread):
    """dave, a Python client on its own loop, says "ping <ms>" every 150 ms until stopped."""

    def __init__(self, ws_url: str):
        super().__init__(daemon=True)
        self.ws_url, self.stopped, self.joined, self.sent = ws_url, threading.Event(), threading.Event(), 0

    def run(self) -> None:
        async def main():
            dave = ChatClient(self.ws_url, "dave")
            await dave.connect()
            self.joined.set()
            while not self.stopped.is_set():
                await dave.send(f"ping {time.time() * 1000:.1f}")
                self.sent += 1
                deadline = time.monotonic() + 0.15
                while time.monotonic() < deadline:
                    try:
                        await dave.recv(0.05)
                    except asyncio.TimeoutError:
                        pass
            dave.close()
            while await asyncio.wait_for(dave.ws.read_message(), 5) is not None:
                pass  # the close handshake, so no socket outlives this loop

        asyncio.run(main())


WATCH_PINGS = """() => {
    window.pingLatencies = [];
    new MutationObserver((changes) => {
        for (const change of changes) for (const node of change.addedNodes) {
            const sent = /^ping ([0-9.]+)$/.exec(node.querySelector?.(".text")?.textContent ?? "");
            if (sent) window.pingLatencies.push([Date.now(), Date.now() - Number(sent[1])]);
        }
    }).observe(document.getElementById("messages"), { childList: true });
}"""


def during(page, start: float, end: float) -> list[float]:
    return [latency for at, latency in page.evaluate("() => window.pingLatencies") if start <= at / 1000 <= end]


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "none arrived"
    return f"{len(latencies)} arrived, median {statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms"


def test_a_20_mib_file_downloads_intact_while_chat_keeps_flowing(people, server, tmp_path, capsys):
    size = 20 * 1024 * 1024
    block = MARKER + bytes(range(256)) * 31
    data = (block * (size // len(block) + 1))[:size]
    path = tmp_path / "dataset.bin"
    path.write_bytes(data)
    alice, bob = people.join("alice"), people.join("bob")
    pinger = Pinger(server.ws_url)
    pinger.start()
    try:
        assert pinger.joined.wait(10)
        for page in (alice, bob):
            expect(participants(page)).to_have_count(3)
            page.evaluate(WATCH_PINGS)
        time.sleep(1.0)  # pings before the transfer: the baseline
        idle = (time.time() - 1.0, time.time())
        up_start = time.time()
        attach(alice, path)
        card = messages(alice).locator("article.mine .file-card")
        expect(card).to_have_attribute("data-state", "ready", timeout=90_000)
        up_end = time.time()
        download = messages(bob).get_by_role("button", name="Download", exact=True)
        expect(messages(bob).locator(".file-name")).to_have_text("dataset.bin")
        expect(messages(bob).locator(".file-size")).to_have_text("20.0 MiB")
        down_start = time.time()
        with bob.expect_download(timeout=90_000) as saved:
            download.click()
        down_end = time.time()
        time.sleep(0.5)
    finally:
        pinger.stopped.set()
        pinger.join(10)
    assert saved.value.suggested_filename == "dataset.bin"
    assert hashlib.sha256(Path(saved.value.path()).read_bytes()).digest() == hashlib.sha256(data).digest()
    upload_s, download_s = up_end - up_start, down_end - down_start
    with capsys.disabled():  # the figures belong in the test output even when it passes
        print(f"\n20 MiB in Chromium: encrypt + upload {upload_s:.1f} s ({20 / upload_s:.1f} MiB/s); "
              f"download + verify + decrypt + save {download_s:.1f} s ({20 / download_s:.1f} MiB/s)")
        print(f"chat (dave's pings, send to render): idle at alice {summary(during(alice, *idle))}; "
              f"at alice while she uploads {summary(during(alice, up_start, up_end))}; "
              f"at bob while he downloads {summary(during(bob, down_start, down_end))}")
    # Chat kept flowing: pings sent during the transfer reached both pages (no timing asserted).
    assert during(alice, up_start, time.time()) and during(bob, up_start, time.time())
    assert files_containing(server.data_dir, MARKER) == []


def test_carol_who_joined_later_cannot_open_it(people, server, tmp_path):
    path = tmp_path / "before-carol.txt"
    path.write_bytes(MARKER * 100)
    alice, bob = people.join("alice"), people.join("bob")
    attach(alice, path)
    expect(messages(bob).locator(".file-name")).to_have_text("before-carol.txt")
    carol = people.join("carol")
    send(alice, "after carol came")
    expect(messages(carol).locator(".text")).to_have_text(["after carol came"])
    expect(messages(carol).locator(".file-card")).to_have_count(0)
    # Not hidden but never hers: the message with the file key was wrapped to alice and bob only.
    carol_sid = next(p["sid"] for p in server.roster() if p["username"] == "carol")
    with_file = next(r for r in server.log_records() if r.get("attachments"))
    assert carol_sid not in with_file["keys"] and len(with_file["keys"]) == 2


def tamper_blob(server, mutate) -> None:
    def swap():
        store = server.server.hub.blobs
        (info,) = store.blobs()
        data = mutate(store.path(info.id).read_bytes())
        store.path(info.id).write_bytes(data)
        store._blobs[info.id] = BlobInfo(info.id, len(data), info.created, info.rooms)

    server.on_loop(swap)


SEALED = fc.CHUNK_BYTES + fc.TAG_BYTES


def chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    return blob[:fc.HEADER_BYTES], [blob[i:i + SEALED] for i in range(fc.HEADER_BYTES, len(blob), SEALED)]


def flip(blob: bytes) -> bytes:
    changed = bytearray(blob)
    changed[fc.HEADER_BYTES + SEALED + 5] ^= 1
    return bytes(changed)


def cut(blob: bytes) -> bytes:
    head, parts = chunks(blob)
    return head + b"".join(parts[:-1])


def swap(blob: bytes) -> bytes:
    head, parts = chunks(blob)
    return head + parts[1] + parts[0] + b"".join(parts[2:])


@pytest.mark.parametrize("mutate, why", [(flip, "it was altered"), (cut, "it was cut off"), (swap, "it was altered")],
                         ids=["tampered", "truncated", "reordered"])
def test_a_tampered_blob_gives_a_warning_never_a_file(people, server, tmp_path, mutate, why):
    path = tmp_path / "report.pdf"
    path.write_bytes(MARKER * 20_000)  # 700 KB: 11 chunks
    alice, bob = people.join("alice"), people.join("bob")
    downloads = []
    bob.on("download", lambda download: downloads.append(download))
    attach(alice, path)
    expect(messages(alice).locator("article.mine .delivery")).to_have_text("Delivered · to 1 other")
    kept = {}
    tamper_blob(server, lambda blob: kept.setdefault("blob", blob) and mutate(blob))
    messages(bob).get_by_role("button", name="Download", exact=True).click()
    warning = messages(bob).locator(".file-warning")
    expect(warning).to_have_text(re.compile(f"^⚠ This file failed verification and was not opened: {why}"))
    bob.wait_for_timeout(300)
    assert downloads == []
    # Download stays offered; with the server's copy intact again the same file saves fine.
    tamper_blob(server, lambda _: kept["blob"])
    with bob.expect_download() as saved:
        messages(bob).get_by_role("button", name="Download", exact=True).click()
    assert Path(saved.value.path()).read_bytes() == path.read_bytes()
    expect(warning).to_have_count(0)


@pytest.mark.parametrize("mutate, why", [(flip, "it was altered"), (cut, "it was cut off"), (swap, "it was altered")],
                         ids=["tampered", "truncated", "reordered"])
def test_a_tampered_image_is_a_warning_never_a_picture(people, server, tmp_path, mutate, why):
    data, _ = png(40, 30)
    path = tmp_path / "photo.png"
    path.write_bytes(data + MARKER * 6000)  # a PNG with trailing bytes: several chunks, still decodes
    alice, bob = people.join("alice"), people.join("bob")

    def serve_changed(route):  # a server that swaps the bytes on the way out
        response = route.fetch()
        route.fulfill(response=response, body=mutate(response.body()))

    bob.route(re.compile(r".*/api/blobs/[0-9a-f]{64}$"), serve_changed)
    attach(alice, path)
    expect(messages(alice).locator("article.mine img.preview")).to_have_count(1)
    card = messages(bob).locator(".file-card.image")
    expect(card.locator(".file-warning")).to_have_text(
        re.compile(f"^⚠ This file failed verification and was not opened: {why}"))
    expect(card.locator("img")).to_have_count(0)


def test_over_size_is_refused_before_upload_and_over_quota_says_why(browser, tmp_path):
    from .conftest import People

    server = ServerThread(tmp_path / "data", attachments_max_bytes=100_000,
                         attachments_quota_bytes=fc.blob_size(100_000) + 1000).start()
    crowd = People(browser, server)
    try:
        alice = crowd.join("alice")
        requests = []
        alice.on("request", lambda r: requests.append(r.url) if "/api/blobs" in r.url else None)
        big = tmp_path / "too-big.zip"
        big.write_bytes(b"z" * 100_001)
        attach(alice, big)
        expect(alice.locator("#composer-error")).to_have_text(
            "“too-big.zip” is 97.7 KiB; files can be at most 97.7 KiB here.")
        assert requests == [] and stored_blobs(server) == []
        fits = tmp_path / "fits.bin"
        fits.write_bytes(b"f" * 100_000)
        attach(alice, fits)
        expect(messages(alice).locator("article.mine .delivery")).to_have_text("Delivered · only you can read it")
        expect(alice.locator("#composer-error")).to_have_text("")
        second = tmp_path / "second.bin"
        second.write_bytes(b"s" * 50_000)
        attach(alice, second)
        failed = messages(alice).locator("article.mine").filter(has_text="second.bin")
        expect(failed.locator(".file-warning")).to_contain_text("storage for attachments is full")
        expect(failed.locator(".delivery")).to_contain_text("Not sent")
        expect(failed.get_by_role("button", name="Retry")).to_be_visible()
    finally:
        crowd.close()
        server.stop()


def test_cancel_stops_the_upload_and_leaves_nothing_behind(people, server, tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(24 * 1024 * 1024))
    alice, bob = people.join("alice"), people.join("bob")
    # Slow the upload down so there is time to cancel it: each part waits a little.
    alice.route("**/api/blobs/uploads/*", lambda route: (time.sleep(0.2), route.continue_()))
    attach(alice, path)
    cancel = messages(alice).get_by_role("button", name="Cancel", exact=True)
    expect(cancel).to_be_visible()
    bar = messages(alice).locator("progress")
    expect(bar).to_have_count(1)
    cancel.click()
    expect(messages(alice).locator("article")).to_have_count(0)
    for _ in range(100):
        pending = server.on_loop(lambda: server.server.hub.blobs.pending())
        if not pending:
            break
        time.sleep(0.05)
    assert pending == [] and stored_blobs(server) == []
    expect(messages(bob).locator("article")).to_have_count(0)
    alice.unroute_all(behavior="ignoreErrors")


def test_dropping_files_and_pasting_an_image(people, server, tmp_path):
    data, pixels = png(20, 10)
    alice, bob = people.join("alice"), people.join("bob")
    alice.locator(".conversation").evaluate("""(target) => {
        const files = new DataTransfer();
        files.items.add(new File(["dropped " + "x".repeat(100)], "notes.txt", { type: "text/plain" }));
        for (const type of ["dragenter", "dragover", "drop"]) {
            target.dispatchEvent(new DragEvent(type, { dataTransfer: files, bubbles: true, cancelable: true }));
        }
    }""")
    expect(messages(bob).locator(".file-name")).to_have_text(["notes.txt"])
    alice.get_by_label("Message", exact=True).evaluate("""(box, bytes) => {
        const files = new DataTransfer();
        files.items.add(new File([new Uint8Array(bytes)], "image.png", { type: "image/png" }));
        box.dispatchEvent(new ClipboardEvent("paste", { clipboardData: files, bubbles: true, cancelable: true }));
    }""", list(data))
    image = messages(bob).locator("img.preview")
    expect(image).to_have_attribute("alt", "image.png")
    image.evaluate("(img) => img.decode()")
    assert pixels_of(bob, image) == pixels
    # Pasting text is still just text.
    expect(alice.get_by_label("Message", exact=True)).to_have_value("")


def test_the_page_allows_blob_images_and_nothing_more(people, server):
    page = people.page()
    response = page.request.get(server.url)
    csp = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
    assert csp["img-src"] == "'self' data: blob:"
    assert csp["default-src"] == "'self'" and "blob:" not in csp.get("connect-src", "")
    assert re.search(r"\bblob:", json.dumps({k: v for k, v in csp.items() if k != "img-src"})) is None


def test_screenshots_of_files_in_the_conversation(browser, server, tmp_path):
    from .attachment_screenshots import capture

    shots = capture(browser, server, tmp_path)
    sizes = {}
    for path in shots:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        sizes[path.name] = (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
    assert sizes == {"files-phone-390x844.png": (390, 844), "files-keyboard-390x480.png": (390, 480),
                     "files-desktop-1280x760.png": (1280, 760), "files-viewer-390x844.png": (390, 844),
                     "files-uploading-1280x760.png": (1280, 760)}


def test_files_kept_on_this_device_open_again_after_a_reload(people, server, tmp_path):
    """History keeps the reference (with its key), never the bytes; after a reload the new session
    fetches the blob again, so the earlier image and file still open."""
    data, pixels = png(24, 16)
    image = tmp_path / "kept.png"
    image.write_bytes(data)
    document = tmp_path / "kept.txt"
    document.write_bytes(MARKER * 50)
    alice, bob = people.join("alice"), people.join("bob")
    attach(alice, image)
    attach(alice, document)
    expect(messages(bob).locator("img.preview")).to_have_count(1)
    expect(messages(bob).locator(".file-name")).to_have_count(2)
    bob.wait_for_function("""async () => {
        const open = indexedDB.open("securechat-history");
        const db = await new Promise((ok) => { open.onsuccess = () => ok(open.result); });
        const count = db.transaction("messages").objectStore("messages").count();
        return await new Promise((ok) => { count.onsuccess = () => ok(count.result >= 2); });
    }""")
    bob.reload()
    bob.wait_for_selector("html[data-ready=true]")
    earlier = messages(bob).locator("section.earlier")
    kept = earlier.locator("img.preview")
    expect(kept).to_have_attribute("alt", "kept.png")
    kept.evaluate("(img) => img.decode()")
    assert pixels_of(bob, kept) == pixels
    with bob.expect_download() as saved:
        earlier.get_by_role("button", name="Download", exact=True).click()
    assert Path(saved.value.path()).read_bytes() == document.read_bytes()
    assert files_containing(server.data_dir, MARKER) == []
