"""Screenshots of files in the conversation: an image and a document as bob receives them, at
phone (390×844, and 390×480 with the keyboard open) and desktop sizes, plus alice's upload in
progress. Run from the repository root: `python tests/browser/attachment_screenshots.py [dir]`;
tests/browser/test_attachments.py runs the same capture into a temporary directory.
"""

from __future__ import annotations

import struct
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

try:
    from .harness import join, messages, open_page, run_screenshots, send
except ImportError:  # run as a script: no parent package
    sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]
    from harness import join, messages, open_page, run_screenshots, send

SIZES = {"phone": (390, 844), "keyboard": (390, 480), "desktop": (1280, 760)}


def landscape_png(width: int = 480, height: int = 320) -> bytes:
    """A small picture (sky, sun, hills) drawn pixel by pixel, so the test needs no image files."""
    rows = []
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            sky = (70 + y // 3, 140 + y // 4, 230 - y // 5)
            sun = (x - 0.72 * width) ** 2 + (y - 0.3 * height) ** 2 < (0.09 * width) ** 2
            hill = y > height * 0.62 + 18 * __import__("math").sin(x / 37)
            r, g, b = (250, 205, 90) if sun else (60, 130 - y // 8, 70) if hill else sky
            row += bytes((r % 256, g % 256, b % 256))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
            + chunk(b"IEND", b""))


def attach(page, path: Path) -> None:
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Attach file").click()
    chooser.value.set_files(str(path))


def capture(browser, server, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = Path(tempfile.mkdtemp())
    photo = files / "harbour at dusk.png"
    photo.write_bytes(landscape_png())
    report = files / "Q4 budget review (final).pdf"
    report.write_bytes(b"%PDF-1.7\n" + bytes(2_345_678))
    written = []
    alice_context = browser.new_context(viewport={"width": 1280, "height": 760})
    alice = open_page(alice_context, server.url)
    join(alice, "alice")
    viewers = {}
    for name, (width, height) in SIZES.items():
        phone = width < 700
        context = browser.new_context(viewport={"width": width, "height": height}, is_mobile=phone, has_touch=phone)
        viewers[name] = (context, open_page(context, server.url))
        join(viewers[name][1], f"bob-{name}" if name != "desktop" else "bob")
    try:
        send(alice, "Photos from Saturday, and the budget for Thursday:")
        attach(alice, photo)
        attach(alice, report)
        for _, page in viewers.values():
            log = messages(page)
            log.locator("img.preview").wait_for()
            log.get_by_role("button", name="Download", exact=True).wait_for()
        send(viewers["desktop"][1], "Thanks! The harbour one is lovely.")
        for name, (_, page) in viewers.items():
            if name == "keyboard":
                page.get_by_label("Message", exact=True).focus()  # as with the keyboard open
            else:
                page.get_by_label("Message", exact=True).blur()
            page.wait_for_timeout(200)
            path = out_dir / f"files-{name}-{SIZES[name][0]}x{SIZES[name][1]}.png"
            page.screenshot(path=str(path))
            written.append(path)
        # Full size on a phone.
        page = viewers["phone"][1]
        messages(page).get_by_role("button", name=f"Open {photo.name} full size").click()
        page.get_by_role("dialog", name=f"Image {photo.name}").wait_for()
        page.wait_for_timeout(200)
        path = out_dir / "files-viewer-390x844.png"
        page.screenshot(path=str(path))
        written.append(path)
        page.get_by_role("dialog").get_by_role("button", name="Close").click()
        # alice's side while a larger file is still on its way.
        big = files / "site survey.mov"
        big.write_bytes(bytes(24 * 1024 * 1024))
        alice.route("**/api/blobs/uploads/*", lambda route: (alice.wait_for_timeout(400), route.continue_()))
        attach(alice, big)
        messages(alice).locator("progress").wait_for()
        alice.wait_for_function("() => document.querySelector('progress')?.value >= 8")
        path = out_dir / "files-uploading-1280x760.png"
        alice.get_by_label("Message", exact=True).blur()
        alice.screenshot(path=str(path))
        written.append(path)
        messages(alice).get_by_role("button", name="Cancel", exact=True).click()
        alice.unroute_all(behavior="ignoreErrors")
    finally:
        for context, _ in viewers.values():
            context.close()
        alice_context.close()
    return written


if __name__ == "__main__":
    run_screenshots(capture, sys.argv[1:])
