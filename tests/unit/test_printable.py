"""Text made fit to show on a page or a terminal."""

from __future__ import annotations

from pipeline.printable import printable


def test_control_characters_and_lone_surrogates_are_shown_as_escapes():
    assert printable("a\x1b[2J\x07\x7f\x9b\ud800b") == "a\\x1b[2J\\x07\\x7f\\x9b\\ud800b"


def test_text_newlines_tabs_and_other_scripts_are_kept():
    assert printable("Zoë\tłódź\n東京 \xa0€") == "Zoë\tłódź\n東京 \xa0€"


def test_long_text_is_cut_with_an_ellipsis_and_values_are_shown_as_text():
    assert printable("x" * 10, limit=4) == "xxxx…"
    assert printable({"n": 1}) == "{'n': 1}"
