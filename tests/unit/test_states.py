"""The job state machine: ranks only move forward and finished states are final."""

from __future__ import annotations

import pytest

from pipeline.states import FINAL_RANK, READY_STATES, JobState, may_replace, rank


def test_attempts_rank_in_order_and_retry_sits_between_them():
    ladder = [
        rank(JobState.QUEUED),
        rank(JobState.STARTED, 1),
        rank(JobState.RETRY, 1),
        rank(JobState.STARTED, 2),
        rank(JobState.RETRY, 2),
        rank(JobState.SUCCESS),
    ]
    assert ladder == sorted(ladder) and len(set(ladder)) == len(ladder)


@pytest.mark.parametrize("state", sorted(READY_STATES))
def test_finished_states_are_final_but_a_failure_may_become_a_success(state):
    assert rank(state) >= FINAL_RANK and state.ready
    for later in JobState:
        if later is not JobState.PENDING:
            allowed = state is JobState.FAILURE and later is JobState.SUCCESS
            assert may_replace(rank(state), rank(later, 1)) is allowed


def test_a_late_start_cannot_replace_a_retry_of_a_later_attempt():
    assert not may_replace(rank(JobState.STARTED, 2), rank(JobState.STARTED, 1))
    assert not may_replace(rank(JobState.RETRY, 1), rank(JobState.QUEUED))


def test_a_duplicate_start_of_the_same_attempt_is_allowed():
    assert may_replace(rank(JobState.STARTED, 1), rank(JobState.STARTED, 1))


def test_anything_may_create_a_record():
    assert may_replace(None, rank(JobState.QUEUED))


def test_pending_is_never_written():
    with pytest.raises(ValueError, match="never written"):
        rank(JobState.PENDING)
    with pytest.raises(ValueError, match="attempt must be 1 or more"):
        rank(JobState.STARTED, 0)


def test_a_state_field_that_names_no_state_reads_pending_as_asyncresult_reads_it():
    from pipeline.states import state_named

    assert state_named("SUCCESS") is JobState.SUCCESS
    for odd in ("WAITING", "success", "", None, 7, [1], {"state": "SUCCESS"}):
        assert state_named(odd) is JobState.PENDING
