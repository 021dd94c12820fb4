"""The form of a job id, as callers give it and as pipeline keeps it."""

from __future__ import annotations

import uuid

import pytest

from pipeline.errors import InvalidJobId
from pipeline.job_id import check_job_id, is_job_id

ID = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"


@pytest.mark.parametrize("given", [ID, ID.upper(), "F81d4FAE-7dec-11D0-a765-00A0c91e6bf6"])
def test_a_uuid_in_either_case_names_the_job_in_pipeline_s_form(given):
    assert check_job_id(given) == ID


@pytest.mark.parametrize(
    "given",
    ["", " " + ID, ID + "\n", ID.replace("-", ""), "{" + ID + "}", ID[:-1] + "g", ID[:-1] + "\u212a", None, 7,
     uuid.UUID(ID)],
    ids=["empty", "space", "newline", "no dashes", "braces", "not hex", "Kelvin sign", "None", "int", "UUID object"],
)  # fmt: skip
def test_anything_else_is_refused_naming_it(given):
    with pytest.raises(InvalidJobId, match="is not a job id"):
        check_job_id(given)


def test_a_message_s_own_id_must_be_in_pipeline_s_form():
    # A delivery's id is the key of its record as the sender wrote it: read as given.
    assert is_job_id(ID) and not is_job_id(ID.upper())
