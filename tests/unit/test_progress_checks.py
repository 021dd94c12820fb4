"""What a progress report may hold: numbers a reader can show, a short phase of text."""

from __future__ import annotations

import uuid

import pytest

from pipeline.errors import InvalidProgress, PermanentError
from pipeline.job_record import MAX_PROGRESS_COUNT
from pipeline.jobs.current import check_progress, report_progress


@pytest.mark.parametrize(
    ("done", "total", "phase", "named"),
    [
        ("12", None, None, "done must be a number, not str '12'"),
        (True, None, None, "done must be a number, not bool True"),
        (float("nan"), None, None, "done must be from 0 to 2\\*\\*53, not nan"),
        (-1, 10, None, "done must be from 0 to 2\\*\\*53, not -1"),
        (1, float("inf"), None, "total must be from 0 to 2\\*\\*53, not inf"),
        (1, MAX_PROGRESS_COUNT + 1, None, "total must be from 0 to 2\\*\\*53"),
        (1, [10], None, "total must be a number, not list"),
        (1, 10, 3, "phase must be text, not int 3"),
        (1, 10, "x" * 201, "phase is 201 characters, more than 200"),
        (1, 10, "rows \ud800", "phase holds U\\+D800, a lone surrogate"),
    ],
    ids=["text", "bool", "NaN", "negative", "infinite total", "past 2**53", "list", "phase not text", "long phase",
         "surrogate"],
)  # fmt: skip
def test_a_report_no_reader_could_show_is_refused_naming_the_argument(done, total, phase, named):
    with pytest.raises(InvalidProgress, match=named) as refused:
        # Refused before the record is looked for: no Redis is asked.
        report_progress(done, total, phase, message_id=str(uuid.uuid4()))
    assert isinstance(refused.value, PermanentError)


@pytest.mark.parametrize(
    ("done", "total", "phase"),
    [(0, None, None), (3, 10, "rows"), (2.5, 10.0, ""), (12, 10, "more than estimated"), (0, 0, None),
     (MAX_PROGRESS_COUNT, MAX_PROGRESS_COUNT, "x" * 200)],
)  # fmt: skip
def test_counts_and_phases_a_reader_can_show_pass(done, total, phase):
    check_progress(done, total, phase)
