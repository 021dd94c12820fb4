"""The writer's futures: what concurrent.futures' Future promises, without a lock of their own."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from pipeline.store.writer import Answer


def test_a_thread_waiting_for_an_answer_gets_it_when_another_thread_sets_it():
    answer: Answer[int] = Answer()
    got: list[int] = []
    waiting = threading.Thread(target=lambda: got.append(answer.result(timeout=10)))
    waiting.start()
    threading.Timer(0.05, answer.set_result, (42,)).start()
    waiting.join(10)
    assert got == [42] and answer.done() and answer.exception() is None


def test_an_answer_not_there_in_time_raises_the_futures_timeout():
    answer: Answer[int] = Answer()
    with pytest.raises(concurrent.futures.TimeoutError):
        answer.result(timeout=0.01)
    with pytest.raises(concurrent.futures.TimeoutError):
        answer.exception(timeout=0)
    answer.set_result(1)
    assert answer.result(timeout=0) == 1


def test_an_error_is_raised_to_every_caller_and_given_by_exception():
    answer: Answer[int] = Answer()
    error = ValueError("no")
    answer.set_exception(error)
    for _ in range(2):
        with pytest.raises(ValueError, match="no"):
            answer.result()
    assert answer.exception() is error


def test_an_answer_is_set_once():
    answer: Answer[int] = Answer()
    answer.set_result(1)
    with pytest.raises(concurrent.futures.InvalidStateError):
        answer.set_result(2)
    with pytest.raises(concurrent.futures.InvalidStateError):
        answer.set_exception(ValueError())
    assert answer.result() == 1


def test_callbacks_run_once_when_set_or_at_once_when_done_and_a_failing_one_stops_no_other():
    answer: Answer[int] = Answer()
    seen: list[tuple[str, int]] = []

    def fails(_: Answer[int]) -> None:
        raise RuntimeError("callback bug")

    answer.add_done_callback(lambda a: seen.append(("before", a.result())))
    answer.add_done_callback(fails)
    answer.add_done_callback(lambda a: seen.append(("also before", a.result())))
    assert seen == []
    answer.set_result(7)
    answer.add_done_callback(lambda a: seen.append(("after", a.result())))
    assert seen == [("before", 7), ("also before", 7), ("after", 7)]


def test_sent_callbacks_run_once_when_marked_and_at_once_after():
    answer: Answer[int] = Answer()
    seen: list[str] = []
    answer.when_sent(lambda: seen.append("before"))
    assert not answer.sent and seen == []
    answer.mark_sent()
    answer.mark_sent()
    answer.when_sent(lambda: seen.append("after"))
    assert answer.sent and seen == ["before", "after"]


def test_many_threads_waiting_and_setting_at_once_each_get_their_own_answer():
    answers: list[Answer[int]] = [Answer() for _ in range(2000)]
    got: dict[int, int] = {}

    def wait(start: int) -> None:
        for i in range(start, len(answers), 4):
            got[i] = answers[i].result(timeout=10)

    def give(start: int) -> None:
        for i in range(start, len(answers), 4):
            answers[i].set_result(i)

    threads = [threading.Thread(target=wait, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=give, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert got == {i: i for i in range(len(answers))}
