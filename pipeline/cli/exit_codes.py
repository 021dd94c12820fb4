"""The exit codes of the ``pipeline`` command, for scripts that branch on them."""

from __future__ import annotations

from pipeline.states import JobState

#: The job succeeded, or every check passed.
RET_OK = 0
#: The job failed or was revoked, or a check failed.
RET_FAILED = 1
#: The command line was wrong (argparse's own code).
RET_USAGE = 2
#: The job has not finished yet.
RET_UNFINISHED = 3
#: No record: the id is unknown, or the record expired; or no such message.
RET_UNKNOWN = 4
#: pipeline itself could not work: bad settings, a service unreachable.
RET_ERROR = 5
#: The id given is not a job id.
RET_BAD_ID = 6

_BY_STATE = {
    JobState.SUCCESS: RET_OK,
    JobState.FAILURE: RET_FAILED,
    JobState.REVOKED: RET_FAILED,
    JobState.PENDING: RET_UNKNOWN,
}


def exit_code(state: JobState) -> int:
    """The exit code that says how a job in ``state`` stands."""
    return _BY_STATE.get(state, RET_UNFINISHED)
