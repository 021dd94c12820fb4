"""The check of the actors a message's callbacks name, without services."""

from __future__ import annotations

from types import SimpleNamespace

import dramatiq

from pipeline.jobs.checks import callback_problem


def message_with(callback: str) -> dramatiq.Message:
    return dramatiq.Message(
        queue_name="default", actor_name="job", args=(), kwargs={}, options={"on_success": callback}
    )


def test_a_callback_that_takes_the_message_and_its_result_passes():
    def noted(message, result):
        return None

    actors = {"job": SimpleNamespace(options={}), "noted": SimpleNamespace(fn=noted)}
    assert callback_problem(actors, message_with("noted"), worker=True) is None
    # Asked again (a signature is read once per function): the same answer.
    assert callback_problem(actors, message_with("noted"), worker=True) is None


def test_a_callback_that_cannot_take_them_is_named_every_time():
    def takes_nothing():
        return None

    actors = {"job": SimpleNamespace(options={}), "bad": SimpleNamespace(fn=takes_nothing)}
    for _ in range(2):
        problem = callback_problem(actors, message_with("bad"), worker=True)
        assert problem is not None and "names actor 'bad', which cannot take the message and its result" in problem


class Unhashable:
    """A callable that cannot be a cache's key (it defines equality, not a hash)."""

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = None  # type: ignore[assignment]

    def __call__(self) -> None:
        return None


def test_a_callback_that_cannot_be_a_cache_key_is_still_checked():
    actors = {"job": SimpleNamespace(options={}), "odd": SimpleNamespace(fn=Unhashable())}
    problem = callback_problem(actors, message_with("odd"), worker=True)
    assert problem is not None and "cannot take the message and its result" in problem
