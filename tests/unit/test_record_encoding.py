"""Record field values and timestamps, written faster, read the same as the standard library's."""

from __future__ import annotations

import datetime
import json
import random

import pytest

from pipeline.store.write_script import json_value
from pipeline.timestamps import iso_from_millis, now_iso


@pytest.mark.parametrize(
    "value",
    [
        "",
        "plain",
        'quote " back \\ slash',
        "line\nbreak\x00\x1f",
        "é ü 漢字 🙂",
        "\ud800",
        0,
        -7,
        10**40,
        None,
        True,
        False,
        1.5,
        float("inf"),
        [1, "a", None],
        {"a": {"b": [1.25]}},
    ],
)
def test_a_field_value_is_the_json_the_standard_library_writes(value):
    assert json_value(value) == json.dumps(value)


def test_subclasses_of_str_and_int_are_written_by_the_standard_library():
    class Name(str):
        pass

    assert json_value(Name("x")) == json.dumps(Name("x"))
    assert json_value(True) == "true"


def _reference(millis: int) -> str:
    return datetime.datetime.fromtimestamp(millis / 1000, datetime.UTC).isoformat(timespec="milliseconds")


def test_a_timestamp_from_millis_matches_datetime_across_seconds_and_days():
    rng = random.Random(7)
    samples = [0, 999, 1000, 1001, 86_399_999, 86_400_000, 1_700_000_000_123, -1, -1001]
    samples += [rng.randrange(0, 4 * 10**12) for _ in range(20_000)]
    # Runs of nearby values exercise the cached second.
    samples += [1_700_000_000_000 + step for step in range(0, 5000, 7)]
    for millis in samples:
        assert iso_from_millis(millis) == _reference(millis), millis


def test_now_is_the_current_time_in_the_same_format():
    before = datetime.datetime.now(datetime.UTC)
    stamp = datetime.datetime.fromisoformat(now_iso())
    after = datetime.datetime.now(datetime.UTC)
    assert before - datetime.timedelta(milliseconds=1) <= stamp <= after
    assert now_iso().endswith("+00:00") and len(now_iso()) == len("2026-01-01T00:00:00.000+00:00")
