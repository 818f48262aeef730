"""Rooms in a real Chromium: New room, invite links and their QR code, several rooms in one tab
(unread counts, switching without a reload, leaving one), a reload re-joins them all, and a
room the page names is one nobody outside it can see."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .harness import join, messages, open_menu, open_page, participant, send
from .test_attachments import attach, pixels_of, png

ROOM_BUTTON = re.compile(r"^#")


def rooms_list(page):
    return page.get_by_role("list", name="Rooms")


def room_button(page, name):
    return rooms_list(page).get_by_role("button", name=re.compile(rf"^#{re.escape(name)}( |$)"))


def new_room(page) -> str:
    """Click New room; returns the new room's name (from the address bar)."""
    open_menu(page)
    before = page.url
    page.get_by_role("button", name="New room").click()
    page.wait_for_url(lambda url: url != before and "/r/" in url)
    name = page.url.rsplit("/r/", 1)[1]
    expect(page.locator("#room-name")).to_have_text(name)
    return name


def copied_invite(page) -> str:
    open_menu(page)
    page.get_by_role("button", name="Copy invite link").click()
    return page.evaluate("() => navigator.clipboard.readText()")


@pytest.fixture
def clipboard(people):
    return people.context(permissions=["clipboard-read", "clipboard-write"])


def test_an_invite_link_opens_a_room_the_default_room_never_sees(people, clipboard, server):
    alice = people.join("alice", clipboard)
    carol = people.join("carol")
    name = new_room(alice)
    assert re.fullmatch(r"[a-z]{3,5}(-[a-z]{3,5}){3}", name), name
    expect(alice).to_have_title(f"#{name} · securechat")
    link = copied_invite(alice)
    assert link == f"{server.url}r/{name}"

    bob = open_page(people.context(), link)
    expect(bob.get_by_role("heading", name=f"Join #{name}")).to_be_visible()
    join(bob, "bob")
    expect(bob.locator("#room-name")).to_have_text(name)
    expect(room_button(bob, name)).to_be_visible()
    expect(room_button(bob, "lobby")).to_have_count(0)  # bob was never in the lobby

    send(alice, "only for the new room")
    expect(messages(bob).get_by_text("only for the new room")).to_be_visible()
    send(bob, "hello alice")
    expect(messages(alice).get_by_text("hello alice")).to_be_visible()
    send(carol, "lobby only")
    room_button(alice, "lobby").click()
    expect(messages(alice).get_by_text("lobby only")).to_be_visible()

    # carol, in the default room, saw nothing of it and nobody from it.
    expect(messages(carol).get_by_text("lobby only")).to_be_visible()
    for text in ("only for the new room", "hello alice"):
        expect(messages(carol).get_by_text(text)).to_have_count(0)
    expect(participant(carol, "bob")).to_have_count(0)
    rosters = {room.name: [p.username for p in room.members.values()] for room in server.server.hub.rooms}
    assert sorted(rosters["lobby"]) == ["alice", "carol"] and sorted(rosters[name]) == ["alice", "bob"]


def test_one_person_in_two_rooms_with_unread_counts_and_a_reload_that_rejoins_both(people, clipboard, server):
    alice = people.join("alice", clipboard)
    name = new_room(alice)
    bob = open_page(people.context(), f"{server.url}r/{name}")
    join(bob, "bob")
    carol = people.join("carol")

    # alice looks at the lobby; bob writes in the other room: its unread count grows.
    open_menu(alice)
    room_button(alice, "lobby").click()
    expect(alice).to_have_url(server.url)
    expect(alice.locator("#room-name")).to_have_text("lobby")
    send(bob, "one")
    send(bob, "two")
    open_menu(alice)
    expect(room_button(alice, name)).to_have_accessible_name(f"#{name} 2 unread messages")
    expect(alice).to_have_title(f"(2) #lobby · securechat")
    expect(messages(alice).get_by_text("one")).to_have_count(0)  # not in the lobby's conversation

    # Switching is not a reload: the page (and its lobby session) stays; the count clears.
    alice.evaluate("() => { window.__same_page = true; }")
    room_button(alice, name).click()
    expect(messages(alice).get_by_text("two")).to_be_visible()
    assert alice.evaluate("() => window.__same_page") is True
    open_menu(alice)
    expect(room_button(alice, name)).to_have_accessible_name(f"#{name}")
    expect(alice).to_have_title(f"#{name} · securechat")
    send(carol, "meanwhile in the lobby")
    expect(room_button(alice, "lobby")).to_have_accessible_name("#lobby 1 unread message")

    # A reload re-joins both rooms, with no Join click.
    alice.reload()
    alice.wait_for_selector("html[data-ready=true]")
    expect(alice.get_by_role("status").filter(has_text="Connected")).to_be_visible()
    open_menu(alice)
    expect(room_button(alice, "lobby")).to_be_visible()
    expect(room_button(alice, name)).to_be_visible()
    expect(alice.locator("#room-name")).to_have_text(name)
    # What this device kept of each room is back in that room's own conversation.
    kept = messages(alice).get_by_role("region", name="Earlier on this device")
    expect(kept.get_by_text("two", exact=True)).to_be_visible()
    send(bob, "after the reload")
    expect(messages(alice).get_by_text("after the reload")).to_be_visible()
    send(carol, "lobby after the reload")
    open_menu(alice)
    room_button(alice, "lobby").click()
    expect(messages(alice).get_by_text("lobby after the reload")).to_be_visible()
    expect(messages(alice).get_by_role("region", name="Earlier on this device")
           .get_by_text("meanwhile in the lobby")).to_be_visible()
    expect(messages(alice).get_by_text("two", exact=True)).to_have_count(0)  # the other room's stay there
    rosters = {room.name: sorted(p.username for p in room.members.values()) for room in server.server.hub.rooms}
    assert rosters == {"lobby": ["alice", "carol"], name: ["alice", "bob"]}


def kept_count(page, at_least: int) -> None:
    """Wait until this device's history holds `at_least` records (written after the screen)."""
    page.wait_for_function("""async (n) => {
        const open = indexedDB.open("securechat-history");
        const db = await new Promise((ok) => { open.onsuccess = () => ok(open.result); });
        const count = db.transaction("messages").objectStore("messages").count();
        return await new Promise((ok) => { count.onsuccess = () => ok(count.result >= n); });
    }""", arg=at_least)


def test_files_travel_through_the_room_they_are_sent_in(people, clipboard, server, tmp_path):
    """Each room's session has its own attachment capability: a file goes up through the room it
    is sent in and comes down through the room it arrived in, also from Earlier on this device."""
    data, pixels = png(40, 30)
    picture = tmp_path / "room-picture.png"
    picture.write_bytes(data)
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"only for the room " * 200)
    alice = people.join("alice", clipboard)
    name = new_room(alice)
    bob = open_page(people.context(), f"{server.url}r/{name}")
    join(bob, "bob")

    # alice looks at the lobby while bob sends a picture in the other room: it waits there.
    open_menu(alice)
    room_button(alice, "lobby").click()
    expect(alice.locator("#room-name")).to_have_text("lobby")
    attach(bob, picture)
    open_menu(alice)
    expect(room_button(alice, name)).to_have_accessible_name(f"#{name} 1 unread message")
    room_button(alice, name).click()
    image = messages(alice).locator("article img.preview")
    expect(image).to_have_attribute("alt", picture.name)
    image.evaluate("(img) => img.decode()")
    assert pixels_of(alice, image) == pixels

    # alice's file, chosen in the room, goes up through the room's session to bob.
    attach(alice, notes)
    card = messages(bob).locator(".file-card").filter(has_text="notes.txt")
    with bob.expect_download() as saved:
        card.get_by_role("button", name="Download").click()
    assert Path(saved.value.path()).read_bytes() == notes.read_bytes()
    assert sorted(blob.rooms for blob in server.on_loop(lambda: server.server.hub.blobs.blobs())) == [(name,), (name,)]

    # A reload on the lobby's page re-joins the room too; its kept picture opens again there,
    # fetched with the room's new session.
    kept_count(alice, 2)
    open_menu(alice)
    room_button(alice, "lobby").click()
    expect(alice).to_have_url(server.url)
    alice.reload()
    alice.wait_for_selector("html[data-ready=true]")
    open_menu(alice)
    room_button(alice, name).click()
    earlier = messages(alice).get_by_role("region", name="Earlier on this device")
    kept = earlier.locator("img.preview")
    expect(kept).to_have_attribute("alt", picture.name)
    kept.evaluate("(img) => img.decode()")
    assert pixels_of(alice, kept) == pixels
    expect(earlier.locator(".file-name")).to_have_text([picture.name, notes.name])


def test_leaving_one_room_keeps_the_others(people, clipboard, server):
    alice = people.join("alice", clipboard)
    name = new_room(alice)
    open_menu(alice)
    alice.get_by_role("button", name=f"Leave #{name}").click()
    expect(alice.locator("#room-name")).to_have_text("lobby")
    expect(alice).to_have_url(server.url)
    open_menu(alice)
    expect(room_button(alice, name)).to_have_count(0)
    expect(alice.get_by_role("button", name="Leave chat")).to_be_visible()  # one room left
    assert [room.name for room in server.server.hub.rooms] == ["lobby"]
    alice.reload()
    alice.wait_for_selector("html[data-ready=true]")
    expect(alice.get_by_role("status").filter(has_text="Connected")).to_be_visible()
    open_menu(alice)
    expect(room_button(alice, name)).to_have_count(0)  # left for good: not re-joined


def test_the_qr_code_decodes_to_the_invite_link(people, clipboard, server, tmp_path):
    alice = people.join("alice", clipboard)
    name = new_room(alice)
    link = copied_invite(alice)
    open_menu(alice)
    alice.get_by_role("button", name="Show QR code").click()
    dialog = alice.get_by_role("dialog", name=f"Invite people to #{name}")
    expect(dialog).to_be_visible()
    image = dialog.get_by_role("img", name=f"QR code of {link}")
    expect(image).to_be_visible()
    alice.wait_for_function("() => document.getElementById('qr-image').complete "
                            "&& document.getElementById('qr-image').naturalWidth > 0")
    shot = tmp_path / "qr.png"
    image.screenshot(path=str(shot))
    decoded = subprocess.run(["zbarimg", "--nodbus", "--quiet", "--raw", str(shot)], capture_output=True,
                             text=True, timeout=30)
    assert decoded.stdout.strip() == link, decoded.stderr
    expect(dialog.get_by_role("link", name=link)).to_have_attribute("href", link)
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()


def test_trust_is_per_person_not_per_room(people, clipboard, server):
    alice = people.join("alice", clipboard)
    bob = people.join("bob")
    name = new_room(alice)
    bob.goto(f"{server.url}r/{name}")  # the same tab: the lobby stays joined, the new room joins
    bob.wait_for_selector("html[data-ready=true]")
    expect(bob.locator("#room-name")).to_have_text(name)
    open_menu(bob)
    expect(room_button(bob, "lobby")).to_be_visible()
    from .harness import open_people

    open_people(alice)
    expect(participant(alice, "bob")).to_be_visible()
    alice.get_by_role("button", name="Mark bob verified").click()
    alice.get_by_role("button", name="They match").click()
    expect(participant(alice, "bob").get_by_text("✓ Verified")).to_be_visible()
    open_menu(alice)
    room_button(alice, "lobby").click()
    open_people(alice)
    expect(participant(alice, "bob").get_by_text("✓ Verified")).to_be_visible()


def test_a_bad_room_address_gets_a_page_that_says_why(people, server):
    page = people.context().new_page()
    response = page.goto(f"{server.url}r/Design%20Team")
    assert response.status == 404
    expect(page.get_by_role("heading", name="This is not a room address")).to_be_visible()
    expect(page.get_by_text("lowercase letters a-z, digits 0-9 and -")).to_be_visible()
    page.get_by_role("link", name="/r/design-team").click()
    page.wait_for_selector("html[data-ready=true]")
    expect(page.get_by_role("heading", name="Join #design-team")).to_be_visible()


@pytest.mark.parametrize("width, height", [(1280, 800), (390, 844), (390, 480)])
def test_the_rooms_list_fits_every_screen(people, server, width, height, tmp_path):
    """Screenshots of the rooms list (kept in tmp_path: look at them when the layout changes)."""
    touch = width < 700
    context = people.context(viewport={"width": width, "height": height}, has_touch=touch, is_mobile=touch)
    alice = people.join("alice", context)
    name = new_room(alice)
    bob = open_page(people.context(), f"{server.url}r/{name}")
    join(bob, "bob")
    open_menu(alice)
    room_button(alice, "lobby").click()
    send(bob, "news from the other room")
    if touch:  # on phones the count shows on the Menu button too, which keeps its name
        expect(alice.locator("#menu-unread")).to_have_text("1")
        expect(alice.get_by_role("button", name="Menu", exact=True)).to_have_accessible_description(
            "1 unread message in other rooms")
    open_menu(alice)
    listed = rooms_list(alice)
    expect(room_button(alice, name)).to_have_accessible_name(f"#{name} 1 unread message")
    for button in ("New room", "Copy invite link", "Show QR code"):
        alice.get_by_role("button", name=button).scroll_into_view_if_needed()
        expect(alice.get_by_role("button", name=button)).to_be_in_viewport()
    box = listed.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= width
    assert alice.evaluate("() => document.documentElement.scrollWidth") <= width
    alice.screenshot(path=str(tmp_path / f"rooms-{width}x{height}.png"))
