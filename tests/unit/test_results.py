"""Rebuilding a remote error, and the record's error fields."""

from __future__ import annotations

import pytest

from pipeline.errors import JobFailed, PermanentError
from pipeline.job_record import error_info
from pipeline.results import rebuild_error


def test_a_builtin_error_is_rebuilt_with_its_type():
    error = rebuild_error({"type": "ValueError", "message": "bad total", "traceback": "tb"})
    assert type(error) is ValueError and str(error) == "bad total"
    assert error.remote_traceback == "tb"


def test_a_pipeline_error_is_rebuilt_with_its_type():
    error = rebuild_error({"type": "pipeline.errors.PermanentError", "message": "no"})
    assert type(error) is PermanentError


def test_a_foreign_type_is_not_imported_but_reported():
    error = rebuild_error({"type": "os.system", "message": "rm -rf", "traceback": ""})
    assert isinstance(error, JobFailed) and error.type_name == "os.system"
    assert str(error) == "os.system: rm -rf"


def test_error_fields_name_the_type_message_and_traceback():
    try:
        raise PermanentError("row 17: total 'abc' is not a number")
    except PermanentError as exc:
        fields = error_info(exc)
    assert fields["type"] == "pipeline.errors.PermanentError"
    assert fields["message"] == "row 17: total 'abc' is not a number"
    assert "Traceback" in fields["traceback"]


@pytest.mark.parametrize("exc", [KeyError("k"), OSError(2, "gone")])
def test_builtin_types_are_recorded_without_module(exc):
    assert "." not in error_info(exc)["type"]


def test_an_error_whose_message_cannot_be_made_is_still_recorded():
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    try:
        raise Unprintable()
    except Unprintable as exc:
        fields = error_info(exc)
    assert fields["type"].endswith("Unprintable")
    assert fields["message"] == "<its message could not be made: RuntimeError>"
    assert "Traceback" in fields["traceback"]
