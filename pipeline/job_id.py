"""The form of a job id: the message id Dramatiq gives every message, a UUID in canonical form."""

from __future__ import annotations

import re
import uuid

from pipeline.errors import InvalidJobId, shown

#: A job id: lowercase hexadecimal UUID with dashes, as ``str(uuid.uuid4())`` writes it.
JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


#: The namespace of the job ids derived from other jobs' (:func:`derived_job_id`).
DERIVED = uuid.UUID("0c6b3c1e-5d1f-4c43-9a57-7a0f3c2a8e11")


def derived_job_id(job_id: str, purpose: str) -> str:
    """The id of the job ``job_id`` sends for ``purpose``, the same on every run of it, so that a
    job run twice sends that job once (a second send is taken for a re-publish).
    """
    return str(uuid.uuid5(DERIVED, f"{job_id}/{purpose}"))


def is_job_id(value: object) -> bool:
    """True when ``value`` is a job id of the form pipeline issues."""
    return isinstance(value, str) and JOB_ID.fullmatch(value) is not None


def check_job_id(value: object) -> str:
    """``value`` as the job id it names, in the form pipeline issues: a UUID's digits are read
    in either case (RFC 4122), so ``F81D4FAE-...``, as some databases store it, names the job
    ``f81d4fae-...``.

    Raises:
      InvalidJobId: It names no job id; the message shows it (shortened).
    """
    canonical = value.lower() if isinstance(value, str) and value.isascii() else value
    if not is_job_id(canonical):
        raise InvalidJobId(
            f"{shown(value)} is not a job id (a message id such as 'f81d4fae-7dec-11d0-a765-00a0c91e6bf6')"
        )
    return canonical  # type: ignore[return-value]
