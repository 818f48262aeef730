"""The page phone first: the conversation gets the screen at every size, nothing scrolls
sideways, the participant list and the menu fold behind People and Menu on small screens, and
Enter means what it means on that kind of device. Measured with bounding boxes in Chromium."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .harness import join, messages, open_menu, open_people, participants, send

PHONE = {"is_mobile": True, "has_touch": True}


def phone(people, width, height):
    return people.context(viewport={"width": width, "height": height}, **PHONE)


def share_of_height(page, locator) -> float:
    box = locator.bounding_box()
    return box["height"] / page.viewport_size["height"]


def assert_fully_visible(page, locator):
    box = locator.bounding_box()
    view = page.viewport_size
    assert box["y"] >= 0 and box["y"] + box["height"] <= view["height"] + 0.5, (box, view)
    assert box["x"] >= 0 and box["x"] + box["width"] <= view["width"] + 0.5, (box, view)


@pytest.mark.parametrize(("width", "height", "share"), [(390, 844, 0.60), (390, 480, 0.45), (844, 390, 0.45)])
def test_the_conversation_fills_a_phone_screen(people, width, height, share):
    page = people.join("alice", phone(people, width, height))
    people.join("bob")
    people.join("carol")
    expect(page.get_by_role("button", name="People")).to_contain_text("3")
    log = messages(page)
    measured = share_of_height(page, log)
    assert measured >= share, f"Messages is {measured:.0%} of {width}×{height}, want at least {share:.0%}"
    # The composer is on screen at the same time, and so is the header's one line.
    assert_fully_visible(page, page.get_by_label("Message", exact=True))
    assert_fully_visible(page, page.get_by_role("button", name="Send"))
    header = page.locator(".topbar").bounding_box()
    assert header["height"] <= 56, header
    # The participant cards are behind People, not above the conversation.
    expect(page.get_by_role("list", name="Participants")).to_be_hidden()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width


def test_a_desktop_shows_the_side_column_and_the_conversation(people):
    page = people.join("alice", people.context(viewport={"width": 1280, "height": 800}))
    people.join("bob")
    expect(participants(page)).to_have_count(2)
    expect(page.get_by_role("list", name="Participants")).to_be_visible()
    for name in ("New identity", "Leave chat", "Copy your fingerprint"):
        expect(page.get_by_role("button", name=name)).to_be_visible()
    expect(page.get_by_role("button", name="People")).to_be_hidden()
    expect(page.get_by_role("button", name="Menu", exact=True)).to_be_hidden()
    assert share_of_height(page, messages(page)) >= 0.75
    assert_fully_visible(page, page.get_by_label("Message", exact=True))
    expect(page.locator("#composer-hint")).to_have_text("Enter sends, Shift+Enter adds a line.")


def test_nothing_scrolls_sideways_at_320_px_and_the_status_stays_on_one_line(people):
    page = people.join("alice-with-a-rather-long-name", phone(people, 320, 640))
    other = people.join("bob")
    send(other, "https://example.com/" + "a" * 300)
    send(other, "w" * 500)
    expect(messages(page).locator("article")).to_have_count(2)
    page.evaluate("""() => { const s = document.getElementById('status');
        s.textContent = 'Reconnecting… · The connection was lost. Retrying in 30 s.'; }""")
    header = page.locator(".topbar").bounding_box()
    assert header["height"] <= 56, header
    status = page.get_by_role("status").bounding_box()
    assert status["height"] < 30, status
    for panel in (None, "People", "Menu"):
        if panel:
            page.get_by_role("button", name=panel, exact=panel == "Menu").click()
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 320, panel
        assert page.evaluate("() => document.getElementById('messages').scrollWidth - document.getElementById('messages').clientWidth") <= 1


def test_people_opens_and_closes_the_participant_panel(people):
    page = people.join("alice", phone(people, 390, 844))
    people.join("bob")
    button = page.get_by_role("button", name="People")
    expect(button).to_have_attribute("aria-expanded", "false")
    expect(button).to_contain_text("2")
    button.click()
    expect(button).to_have_attribute("aria-expanded", "true")
    panel = page.get_by_role("list", name="Participants")
    expect(panel).to_be_in_viewport()
    expect(participants(page)).to_have_count(2)
    expect(participants(page).filter(has_text="bob").get_by_role("button", name="Mark bob verified")).to_be_visible()
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(button).to_be_focused()
    button.click()
    page.get_by_role("button", name="Close", exact=True).click()
    expect(panel).to_be_hidden()
    # A tap beside the panel closes it, and opening the menu swaps one panel for the other.
    button.click()
    expect(panel).to_be_visible()
    messages(page).click(position={"x": 5, "y": 200})
    expect(panel).to_be_hidden()
    button.click()
    page.get_by_role("button", name="Menu", exact=True).click()
    expect(panel).to_be_hidden()
    expect(page.get_by_role("navigation", name="Menu").get_by_role("button", name="New identity")).to_be_visible()


def test_the_menu_holds_the_fingerprint_new_identity_and_leave_chat_on_a_phone(people):
    page = people.join("alice", phone(people, 844, 390))
    leave = page.get_by_role("button", name="Leave chat")
    expect(leave).to_be_hidden()
    open_menu(page)
    menu = page.get_by_role("navigation", name="Menu")
    for name in ("Copy your fingerprint", "New identity", "Leave chat"):
        expect(menu.get_by_role("button", name=name)).to_be_in_viewport()
    expect(page.locator("#own-fingerprint")).to_be_visible()
    leave.click()
    expect(page.get_by_role("button", name="Join chat")).to_be_visible()
    expect(page.get_by_role("button", name="Menu", exact=True)).to_be_hidden()


def test_on_a_touch_screen_enter_adds_a_line_and_send_sends(people):
    page = people.join("alice", phone(people, 390, 844))
    expect(page.locator("#composer-hint")).to_be_hidden()
    box = page.get_by_label("Message", exact=True)
    box.click()
    box.type("first line")
    box.press("Enter")
    box.type("second line")
    expect(messages(page).locator("article")).to_have_count(0)
    expect(box).to_have_value("first line\nsecond line")
    page.get_by_role("button", name="Send").tap()
    expect(messages(page).locator("article .text")).to_have_text("first line\nsecond line")
    expect(box).to_have_value("")
    expect(box).to_be_focused()  # the keyboard stays up for the next message


def test_the_composer_grows_with_its_text_and_keeps_the_log_large(people):
    page = people.join("alice", phone(people, 390, 480))
    box = page.get_by_label("Message", exact=True)
    one_line = box.bounding_box()["height"]
    box.fill("\n".join(f"line {i}" for i in range(30)))
    grown = box.bounding_box()["height"]
    assert grown > one_line
    assert grown <= 0.36 * 480, grown
    assert_fully_visible(page, page.get_by_role("button", name="Send"))
