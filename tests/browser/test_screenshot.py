"""The documentation screenshot can be produced (into a temporary file here)."""

from __future__ import annotations

from .screenshot import capture


def test_capture_writes_a_png_of_a_three_person_conversation(browser, server, tmp_path):
    out = tmp_path / "screenshot.png"
    capture(browser, server, out)
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 760)
