"""Screenshots of rooms: alice (amara, maya) is in three rooms of one tab (the lobby, #design, #garden-party);
bob shares a photo and a document in #design while carol writes in the lobby. For each size —
phone (390×844), phone with the keyboard open (390×480), desktop (1280×760) — three shots:
the Rooms list with an unread count, #design with its files (after switching to it), and the
lobby after switching back. Run from the repository root:
`python tests/browser/rooms_screenshots.py [dir]` (writes rooms-<shot>-<w>x<h>.png).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

try:
    from .attachment_screenshots import attach, landscape_png
    from .harness import join, messages, open_menu, open_page, run_screenshots, send
except ImportError:  # run as a script: no parent package
    sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]
    from attachment_screenshots import attach, landscape_png
    from harness import join, messages, open_menu, open_page, run_screenshots, send

SIZES = {"phone": (390, 844), "keyboard": (390, 480), "desktop": (1280, 760)}
# One name per size: a new browser context is a new identity, which bob and carol would not
# encrypt to under a name they already know with another key.
VIEWERS = {"phone": "alice", "keyboard": "amara", "desktop": "maya"}


def room_button(page, name):
    return page.get_by_role("list", name="Rooms").get_by_role("button", name=re.compile(rf"^#{re.escape(name)}( |$)"))


def settle(page, keyboard: bool) -> None:
    box = page.get_by_label("Message", exact=True)
    if keyboard:
        box.focus()  # as with the keyboard open
    else:
        box.blur()
    page.wait_for_timeout(250)


def capture(browser, server, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = Path(tempfile.mkdtemp())
    photo = files / "moodboard v3.png"
    photo.write_bytes(landscape_png())
    spec = files / "Header spec (draft).pdf"
    spec.write_bytes(b"%PDF-1.7\n" + bytes(812_345))
    written = []
    others = browser.new_context(viewport={"width": 1280, "height": 760})
    bob = open_page(others, f"{server.url}r/design")
    join(bob, "bob")
    carol = open_page(browser.new_context(viewport={"width": 1280, "height": 760}), server.url)
    join(carol, "carol")
    try:
        for shot, (width, height) in SIZES.items():
            phone = width < 700
            context = browser.new_context(viewport={"width": width, "height": height}, is_mobile=phone,
                                          has_touch=phone)
            alice = open_page(context, server.url)
            join(alice, VIEWERS[shot])
            for room in ("design", "garden-party"):  # room links opened in the same tab
                alice.goto(f"{server.url}r/{room}")
                alice.wait_for_selector("html[data-ready=true]")
                alice.get_by_role("status").filter(has_text="Connected").wait_for()
            open_menu(alice)
            room_button(alice, "design").click()
            send(bob, "Here is the moodboard, and the header spec for Thursday:")
            attach(bob, photo)
            attach(bob, spec)
            log = messages(alice)
            log.locator("img.preview").wait_for()
            log.get_by_role("button", name="Download", exact=True).wait_for()
            send(carol, "Lunch at one?")
            send(carol, "The usual place.")
            settle(alice, shot == "keyboard")
            path = out_dir / f"rooms-design-{width}x{height}.png"
            alice.screenshot(path=str(path))
            written.append(path)

            open_menu(alice)
            room_button(alice, "lobby").wait_for()
            alice.wait_for_timeout(250)
            path = out_dir / f"rooms-list-{width}x{height}.png"
            alice.screenshot(path=str(path))
            written.append(path)

            room_button(alice, "lobby").click()
            log.get_by_text("The usual place.").wait_for()
            settle(alice, shot == "keyboard")
            path = out_dir / f"rooms-switched-{width}x{height}.png"
            alice.screenshot(path=str(path))
            written.append(path)
            context.close()
    finally:
        others.close()
        carol.context.close()
    return written


if __name__ == "__main__":
    run_screenshots(capture, sys.argv[1:])
