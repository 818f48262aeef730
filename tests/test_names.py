"""Name comparison (PROTOCOL.md §5): UTS #39 skeletons and script sets, against the vectors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from securechat import names
from securechat.names import generate
from securechat.web.resources import static_dir

VECTORS = json.loads((Path(__file__).parent / "vectors" / "names.json").read_text())


@pytest.mark.parametrize("case", VECTORS["names"], ids=lambda c: c["name"].encode("unicode_escape").decode())
def test_keys_and_script_rules_match_the_vectors(case):
    assert list(names.name_keys(case["name"])) == case["keys"]
    assert names.skeleton(case["name"]) == case["skeleton"]
    assert names.script_problem(case["name"]) == case["problem"]


@pytest.mark.parametrize("pair", VECTORS["pairs"], ids=lambda p: f"{p['a']}~{p['b']}".encode("unicode_escape").decode())
def test_confusable_pairs(pair):
    assert names.confusable(pair["a"], pair["b"]) is pair["confusable"]
    assert names.confusable(pair["b"], pair["a"]) is pair["confusable"]


def test_the_lookalikes_of_the_attack_collapse_onto_the_real_name():
    real = names.name_keys("alice")
    for lookalike in ["\u0430lice", "a1ice", "ALICE", "\uff41\uff4c\uff49\uff43\uff45", "al\u0456ce"]:
        assert names.confusable("alice", lookalike), lookalike
    assert names.name_keys("bob") != real


def test_the_checked_in_data_is_what_the_generator_makes_from_its_sources():
    # The sources are test dependencies (setup.cfg), so this runs everywhere the suite does.
    path = static_dir() / "js" / "names-data.js"
    assert path.read_text(encoding="ascii") == generate.build()
    about = names.data()["about"]
    assert about["confusables"]["version"] == "13.0.0"
    assert about["confusables"]["sha256"] == generate.CONFUSABLES_SHA256
