"""The documentation screenshot can be produced (into a temporary file here)."""

from __future__ import annotations

from .screenshot import capture


def size_of(png) -> tuple[int, int]:
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_capture_writes_a_desktop_and_a_phone_png_of_a_three_person_conversation(browser, server, tmp_path):
    out, phone = tmp_path / "screenshot.png", tmp_path / "screenshot-phone.png"
    capture(browser, server, out, phone)
    assert size_of(out) == (1280, 760)
    assert size_of(phone) == (390, 844)
