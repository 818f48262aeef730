"""How names are compared (docs/PROTOCOL.md §5): confusable skeletons and script sets (UTS #39).

Pure functions over the data in static/js/names-data.js, which the browser imports too, so the
server, the Python client and every browser agree on which names look alike.

- `skeleton(text)`: UTS #39 §4 — NFD, each character replaced by its confusables.txt
  prototype, NFD again. Two strings with one skeleton look alike ("аlice" with a Cyrillic а,
  "a1ice" and "alice").
- `name_keys(name)`: the two keys names are compared on: the skeleton of the lowercased name
  (so "Alice" and "ALICE" are one name) and the skeleton of the name as typed (so a capital
  Cyrillic "Н" in "Нello" still matches "Hello", which lowercasing first would hide).
- `script_problem(name)`: why a name mixes scripts (UTS #39 §5.1 resolved script set, at the
  "highly restrictive" level: one script, or Latin with Han/Japanese/Korean), else None.
"""

from __future__ import annotations

import bisect
import json
import unicodedata
from functools import lru_cache

from ..web.resources import static_dir

# UTS #39 §5.1: a Han character also counts as Japanese, Korean and Han-with-Bopomofo, etc.
_AUGMENT = {
    "Hani": {"Hanb", "Jpan", "Kore"},
    "Hira": {"Jpan"},
    "Kana": {"Jpan"},
    "Hang": {"Kore"},
    "Bopo": {"Hanb"},
}
# Common and Inherited characters (digits, punctuation, combining marks) go with any script.
_ANY = frozenset({"Zyyy", "Zinh"})
# "Highly restrictive" (UTS #39 §5.2) also allows Latin beside these.
_WITH_LATIN = frozenset({"Jpan", "Kore", "Hanb"})

_SCRIPT_NAMES = {
    "Latn": "Latin", "Cyrl": "Cyrillic", "Grek": "Greek", "Armn": "Armenian", "Hebr": "Hebrew",
    "Arab": "Arabic", "Cher": "Cherokee", "Geor": "Georgian", "Hani": "Han", "Hira": "Hiragana",
    "Kana": "Katakana", "Hang": "Hangul", "Deva": "Devanagari", "Thai": "Thai",
}


def _read_data(text: str) -> dict:
    body = text.split("export default ", 1)[1].rstrip().removesuffix(";")
    return json.loads(body)


@lru_cache(maxsize=1)
def data() -> dict:
    raw = _read_data((static_dir() / "js" / "names-data.js").read_text(encoding="ascii"))
    raw["script_starts"] = [start for start, _ in raw["scripts"]]
    raw["extension_starts"] = [start for start, _ in raw["extensions"]]
    return raw


def skeleton(text: str) -> str:
    prototypes = data()["prototypes"]
    mapped = "".join(prototypes.get(c, c) for c in unicodedata.normalize("NFD", text))
    return unicodedata.normalize("NFD", mapped)


def name_keys(name: str) -> tuple[str, str]:
    """(skeleton of the lowercased name, skeleton of the name): equal in either means alike."""
    return skeleton(name.lower()), skeleton(name)


def confusable(a: str, b: str) -> bool:
    return any(x == y for x, y in zip(name_keys(a), name_keys(b)))


def scripts_of(char: str) -> frozenset[str]:
    """The Script_Extensions of one character, as four-letter script codes."""
    d = data()
    point = ord(char)
    value = d["extensions"][bisect.bisect_right(d["extension_starts"], point) - 1][1]
    if value is None:
        value = d["scripts"][bisect.bisect_right(d["script_starts"], point) - 1][1]
    return frozenset(value.split())


def _augmented(scripts: frozenset[str]) -> set[str] | None:
    """None stands for "every script" (Common, Inherited)."""
    if scripts & _ANY:
        return None
    out = set(scripts)
    for script in scripts:
        out |= _AUGMENT.get(script, set())
    return out


def resolved_scripts(text: str) -> set[str] | None:
    """UTS #39 §5.1: the scripts every character of `text` belongs to; None means any script."""
    result: set[str] | None = None
    for char in text:
        scripts = _augmented(scripts_of(char))
        if scripts is None:
            continue
        result = scripts if result is None else result & scripts
    return result


def script_problem(name: str) -> str | None:
    resolved = resolved_scripts(name)
    if resolved is None or resolved:
        return None
    # Latin beside Han, kana or Hangul is how Japanese, Chinese and Korean names are often written.
    rest = resolved_scripts("".join(c for c in name if "Latn" not in scripts_of(c)))
    if rest is None or (rest & _WITH_LATIN):
        return None
    seen: list[str] = []
    for char in name:
        for script in sorted(scripts_of(char) - _ANY):
            label = _SCRIPT_NAMES.get(script, script)
            if label not in seen:
                seen.append(label)
    return f"the name mixes scripts ({' and '.join(seen[:3])}), which lets it imitate another name"
