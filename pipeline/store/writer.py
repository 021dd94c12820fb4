"""The process's Redis writer: every record write and state read, batched across threads.

Record writes are the hot path of every job, and a worker's threads make them at once. Each
caller hands its command in and gets a future. Whoever sends takes everything waiting, sends it
as redis-py's ``pipeline(transaction=False)`` does (the batch packed into one write on a
connection the writer keeps, then each answer read in order with the client's
``parse_response``: one round trip for the whole batch, however many threads made it) and
resolves each future with its own answer; an error reply becomes that command's exception and
no other's. A connection that failed or timed out mid-batch is closed, never used again, so no
late answer can reach a later command. redis-py's pipeline object would cost the batch as much
CPU again (a pool checkout, its retry and timing wrappers), on every job's hot path. Each future
is an :class:`Answer`, which also tells when its command has left for Redis, before the answer
(a job's acknowledgement waits for its final write to leave, not for its answer).

Only one thread sends at a time, under one lock, so commands reach Redis in the order they were
handed in (a thread's reads see its own writes). Who sends depends on the caller's
:class:`When`:

- ``NOW``: the caller sends, unless another thread is sending, which then takes the command with
  its next batch (a worker's final write: no thread hop, and batches form under load);
- ``AHEAD``: the caller sends it at once on a connection the writer keeps connected, and reads
  its answer there when it asks for it, after waiting for something else (a sender's ``QUEUED``
  write overlaps RabbitMQ's confirm with no other thread involved). Never a wait before that:
  when no kept connection is free, the command goes as ``SOON`` and the writer's thread opens
  one more for the next time;
- ``SOON``: the writer's thread sends, while the caller waits for something else (a
  consumer's state reads travel with the deliveries); a caller that then wants the answer first
  sends it itself if it is still waiting;
- ``LATER``: the writer's thread sends it within :data:`HOLD_AT_MOST` seconds, with whatever else
  came meanwhile (an unconfirmed send's ``QUEUED``: many writes per round trip, and the
  sending thread never waits on Redis).
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import enum
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import redis

from pipeline.background import Background
from pipeline.errors import ResultBackendUnavailable
from pipeline.store.connection import RedisConnection

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Commands sent in one round trip at most.
MAX_BATCH = 512
#: Batches a caller sends for others at most before it leaves the rest to the writer's thread.
MAX_CALLER_BATCHES = 4
#: Seconds a ``LATER`` command waits at most before it is sent.
HOLD_AT_MOST = 0.01
#: ``LATER`` commands that make the writer's thread send at once.
MAX_HELD = 64
#: Seconds the process waits at exit for the commands still waiting to be answered.
EXIT_WAIT = 2.0
#: Connections kept for ``AHEAD`` commands at most: one per thread that sends at once.
MAX_AHEAD_CONNECTIONS = 32
#: Commands that change nothing: a process whose unanswered commands are all such (a reader
#: whose Redis froze) does not wait for them at exit.
READ_COMMANDS = frozenset({"GET", "HGET", "HGETALL", "EXISTS", "LINDEX", "LRANGE", "PING"})


class When(enum.Enum):
    """Who sends a command, and when (see the module's description)."""

    NOW = "now"
    AHEAD = "ahead"
    SOON = "soon"
    LATER = "later"


#: Guards every answer's state (done, sent) and its callbacks, held for a few lines at a time:
#: one lock for all of them, rather than a lock (and a condition) made for each command.
_answer_lock = threading.Lock()


class Answer(Generic[T]):
    """The future of a command handed to the writer: ``result``, ``exception``, ``done`` and
    ``add_done_callback`` as :class:`concurrent.futures.Future` has them, and also when the
    command has left for Redis (written to its connection, its answer still to come).

    Every command of every job makes one, so it carries no lock or condition of its own (a
    ``Future`` makes both, which under gevent costs as much as the command's own packing): an
    event is made only for a thread that waits for an answer not there yet.
    """

    __slots__ = ("_callbacks", "_done", "_exception", "_on_sent", "_result", "_sent", "_waiter")

    def __init__(self) -> None:
        self._done = False
        self._result: Any = None
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[Answer[T]], object]] | None = None
        self._waiter: threading.Event | None = None
        self._sent = False
        self._on_sent: list[Callable[[], object]] | None = None

    def done(self) -> bool:
        """Whether the answer (or the command's error) is there."""
        return self._done

    def result(self, timeout: float | None = None) -> T:
        """The answer, waiting ``timeout`` seconds at most (None: as long as it takes).

        Raises:
          concurrent.futures.TimeoutError: No answer in time.
          Exception: The command's error.
        """
        if not self._done:
            self._wait(timeout)
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The command's error (None when it was answered), waiting as :meth:`result` does."""
        if not self._done:
            self._wait(timeout)
        return self._exception

    def _wait(self, timeout: float | None) -> None:
        with _answer_lock:
            if self._done:
                return
            if self._waiter is None:
                self._waiter = threading.Event()
            waiter = self._waiter
        if not waiter.wait(timeout):
            raise concurrent.futures.TimeoutError()

    def add_done_callback(self, callback: Callable[[Answer[T]], object]) -> None:
        """Call ``callback(self)`` once the answer is there (at once if it is), on the thread
        that sets it.
        """
        with _answer_lock:
            if not self._done:
                self._callbacks = [*(self._callbacks or ()), callback]
                return
        _call(callback, self)

    def set_result(self, result: T) -> None:
        """Set the answer, and wake whoever waits for it.

        Raises:
          concurrent.futures.InvalidStateError: It was set already.
        """
        self._finish(result, None)

    def set_exception(self, exception: BaseException) -> None:
        """Set the command's error, and wake whoever waits for it (see :meth:`set_result`)."""
        self._finish(None, exception)

    def _finish(self, result: Any, exception: BaseException | None) -> None:
        with _answer_lock:
            if self._done:
                raise concurrent.futures.InvalidStateError(f"{self!r} is answered already")
            self._result, self._exception = result, exception
            self._done = True
            waiter, callbacks, self._callbacks = self._waiter, self._callbacks, None
        if waiter is not None:
            waiter.set()
        for callback in callbacks or ():
            _call(callback, self)

    @property
    def sent(self) -> bool:
        """Whether the command was written to Redis's connection (or failed to be)."""
        return self._sent

    def when_sent(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the command is written to Redis's connection (at once if it
        is), on the thread that writes it; also when the write failed.
        """
        with _answer_lock:
            if not self._sent:
                self._on_sent = [*(self._on_sent or ()), callback]
                return
        callback()

    def mark_sent(self) -> None:
        """Note that the command left (or could not): its ``when_sent`` callbacks run now."""
        if self._sent:
            return
        with _answer_lock:
            if self._sent:
                return
            self._sent = True
            callbacks, self._on_sent = self._on_sent, None
        for callback in callbacks or ():
            _call(callback)


def _call(callback: Callable[..., object], *args: Any) -> None:
    """Run an answer's callback; one that fails is logged and stops no other."""
    try:
        callback(*args)
    except Exception:
        logger.exception("A callback of a Redis command failed")


class _Command:
    """One command handed to the writer: its arguments, how its answer is read, its future."""

    __slots__ = ("args", "future", "parse")

    def __init__(self, args: tuple[Any, ...], parse: Callable[[Any], Any] | None) -> None:
        self.args = args
        self.parse = parse
        self.future: Answer[Any] = Answer()


class _AheadAnswer(Answer[Any]):
    """The future of a command sent ahead: its answer is read from the command's connection by
    the thread that asks for it (see :meth:`RedisWriter.read_ahead`).
    """

    def __init__(self, writer: RedisWriter, command: _Command, connection: redis.Connection) -> None:
        super().__init__()
        self._sent = True
        self.writer = writer
        self.command = command
        self.connection: redis.Connection | None = connection

    def result(self, timeout: float | None = None) -> Any:
        """The answer, read now if it has not been (``timeout`` seconds at most)."""
        if not self.done():
            self.writer.read_ahead(self, timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The command's error, its answer read now if it has not been."""
        if not self.done():
            self.writer.read_ahead(self, timeout)
        return super().exception(0)


#: Every writer of this process, settled at exit.
_writers: weakref.WeakSet[RedisWriter] = weakref.WeakSet()


class RedisWriter:
    """Sends commands handed in by any thread, batched, one batch at a time.

    Parameters:
      redis: The Redis to write to (its client's pool gives the connection).
      scripts: Lua scripts the commands run by ``EVALSHA``; loaded again when Redis forgot them
        (a restart), and the commands that got ``NOSCRIPT`` sent once more.
    """

    def __init__(self, redis_connection: RedisConnection, scripts: Sequence[str] = ()) -> None:
        self.redis = redis_connection
        self.scripts = tuple(scripts)
        self._waiting: collections.deque[_Command] = collections.deque()
        self._sending = threading.Lock()
        # When the writer's thread must send by (time.monotonic()); None: nothing is left to it.
        self._due: float | None = None
        self._held = 0
        # Whether a SOON command came, or a caller asked to send (as each NOW command does),
        # since the last batch was taken: whoever sends goes on with another batch for it. Held
        # (LATER) commands alone wait for their time, so that a thread that hands in one write
        # after another is not chased, one write per batch.
        self._pressing = False
        self._call = threading.Condition(threading.Lock())
        # Connected connections for AHEAD commands, each used by one thread from its command
        # to its answer; opened by the writer's thread when one more is wanted.
        self._ahead: list[redis.Connection] = []
        self._ahead_wanted = False
        # The connection batches are sent on, by whoever holds the sending lock.
        self._connection: redis.Connection | None = None
        # The batch being sent, its answers still to come.
        self._in_flight: list[_Command] = []
        self._background = Background("pipeline-redis-writer", self._run)
        _writers.add(self)
        _watch_process()

    def _forked(self) -> None:
        """In a forked child: the parent's waiting commands and locks are not this process's."""
        self._waiting = collections.deque()
        self._sending = threading.Lock()
        self._call = threading.Condition(threading.Lock())
        self._due = None
        self._held = 0
        self._pressing = False
        self._ahead = []
        self._ahead_wanted = False
        self._connection = None
        self._in_flight = []

    def submit(self, *args: Any, parse: Callable[[Any], Any] | None = None, when: When = When.NOW) -> Answer[Any]:
        """Hand in one command; its future holds ``parse(answer)`` (the answer when no ``parse``).

        The future's exception is :class:`~pipeline.errors.ResultBackendUnavailable` when Redis
        failed or answered the command with an error.
        """
        command = _Command(args, parse)
        if when is When.AHEAD:
            ahead = self._send_ahead(command)
            if ahead is not None:
                return ahead
            when = When.SOON
        self._waiting.append(command)
        if when is When.NOW:
            self.send_waiting()
        elif when is When.SOON:
            self._pressing = True
            self._leave_to_thread(0.0)
        else:
            self._held += 1
            # The writer's thread is called on the first held command and once enough are
            # held: not on every one, which would wake it for each.
            if self._held == 1:
                self._leave_to_thread(HOLD_AT_MOST)
            elif self._held == MAX_HELD:
                self._leave_to_thread(0.0)
        return command.future

    def _send_ahead(self, command: _Command) -> _AheadAnswer | None:
        """Send ``command`` on a kept connection; None when none is free or the send failed."""
        try:
            connection = self._ahead.pop()
        except IndexError:
            self._ahead_wanted = True
            self._leave_to_thread(0.0)
            return None
        try:
            # Connected by connect() (a Sentinel connection finds the primary there alone); no
            # health check: it would wait for a PING's answer first.
            connection.connect()
            connection.send_command(*command.args, check_health=False)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            connection.disconnect()
            return None
        return _AheadAnswer(self, command, connection)

    def read_ahead(self, ahead: _AheadAnswer, timeout: float | None) -> None:
        """Read the answer of a command sent ahead, ``timeout`` seconds at most, and resolve its
        future. A connection that broke, or a script Redis forgot, sends the command again
        through the batch (writes are idempotent); one that did not answer in time is closed,
        since its answer would come later to whoever used it next.
        """
        connection, ahead.connection = ahead.connection, None
        if connection is None:
            return
        started = time.monotonic()
        try:
            if not connection.can_read(timeout):
                connection.disconnect()
                ahead.set_exception(ResultBackendUnavailable(f"Redis did not answer within {timeout:.2f} s"))
                return
            answer = connection.read_response()
        except redis.exceptions.NoScriptError:
            self._keep_ahead(connection)
            self._again(ahead, timeout, started)
            return
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            connection.disconnect()
            self._again(ahead, timeout, started)
            return
        except redis.RedisError as exc:
            self._keep_ahead(connection)
            ahead.set_exception(self.redis.unavailable(exc))
            return
        self._keep_ahead(connection)
        parse = ahead.command.parse
        try:
            ahead.set_result(answer if parse is None else parse(answer))
        except (ValueError, TypeError) as exc:
            ahead.set_exception(ResultBackendUnavailable(f"Redis answered {answer!r}: {exc}"))

    def _again(self, ahead: _AheadAnswer, timeout: float | None, started: float) -> None:
        command = ahead.command
        again = self.submit(*command.args, parse=command.parse, when=When.SOON)
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        try:
            ahead.set_result(self.answer(again, left, send=False) if left is not None else again.result())
        except ResultBackendUnavailable as exc:
            ahead.set_exception(exc)

    def _keep_ahead(self, connection: redis.Connection) -> None:
        if len(self._ahead) < MAX_AHEAD_CONNECTIONS:
            self._ahead.append(connection)
        else:
            connection.disconnect()

    def _open_ahead(self) -> None:
        """Open one more connection for AHEAD commands (on the writer's thread)."""
        self._ahead_wanted = False
        connection = self.redis.new_connection()
        try:
            connection.connect()
        except (redis.RedisError, OSError) as exc:
            logger.debug("No connection for commands sent ahead: %s", exc)
            connection.disconnect()
            return
        self._keep_ahead(connection)

    def answer(self, future: Answer[T], timeout: float, *, send: bool = True) -> T:
        """``future``'s result, waiting ``timeout`` seconds at most.

        Parameters:
          send: Send the command first when it still waits (then the caller's thread may wait
            on Redis longer than ``timeout``, up to the socket timeout).

        Raises:
          ResultBackendUnavailable: Redis failed, answered with an error, or not in time.
        """
        if send and not future.done():
            self.send_waiting()
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise ResultBackendUnavailable(f"Redis did not answer within {timeout:.2f} s") from None

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every command handed in so far is answered; whether it was in time."""
        marker = self.submit(when=When.SOON)
        try:
            marker.result(timeout)
        except concurrent.futures.TimeoutError:
            return False
        return True

    def send_waiting(self, blocking: bool = False) -> None:
        """Send what waits, unless another thread is sending (it then takes it), in batches.

        After the first batch, another goes only for a command that is pressing (``NOW``,
        ``SOON``, or any waiting when a caller asked to send) or for enough held ones; held
        commands that came meanwhile wait for their time with whatever follows them.
        """
        if not blocking:
            # A caller wants what waits sent now: if another thread is sending, it takes it.
            self._pressing = True
        for _ in range(MAX_CALLER_BATCHES if not blocking else MAX_BATCH):
            if not self._waiting:
                return
            if not self._sending.acquire(blocking):
                return
            try:
                self._send_next_batch()
            finally:
                self._sending.release()
            # Looked at after the release: a pressing command whose caller found the lock taken
            # had said so before, so it is sent here or by its caller.
            if not self._pressing and len(self._waiting) < MAX_HELD:
                if self._waiting:
                    self._leave_to_thread(HOLD_AT_MOST)
                return
        if self._waiting:
            self._leave_to_thread(0.0)

    def _send_next_batch(self) -> None:
        """Take what waits (a batch at most) and send it; the caller holds the sending lock."""
        self._pressing = False
        batch = [self._waiting.popleft() for _ in range(min(MAX_BATCH, len(self._waiting)))]
        self._held = 0
        self._in_flight = batch
        try:
            self._send(batch)
        finally:
            self._in_flight = []

    def _leave_to_thread(self, within: float) -> None:
        """Have the writer's thread send what waits within ``within`` seconds."""
        if not self._background.running:
            self._background.start()
        by = time.monotonic() + within
        with self._call:
            if self._due is None or by < self._due:
                self._due = by
                self._call.notify()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._call:
                while self._due is None or self._due > time.monotonic():
                    self._call.wait(None if self._due is None else self._due - time.monotonic())
                self._due = None
            self.send_waiting(blocking=True)
            if self._ahead_wanted:
                self._open_ahead()

    def _send(self, batch: list[_Command]) -> None:
        """Send ``batch`` in one round trip and resolve each command's future with its answer."""
        commands = [command for command in batch if command.args]
        try:
            self._send_commands(commands)
        except Exception as exc:  # pragma: no cover - a bug must not leave callers waiting
            logger.exception("The Redis writer failed a batch")
            for command in commands:
                if not command.future.done():
                    command.future.set_exception(self.redis.unavailable(exc))
        for command in batch:
            # Sent, or failed: nothing waits for it to leave any more.
            command.future.mark_sent()
            if not command.args:
                command.future.set_result(None)

    def _send_commands(self, commands: list[_Command]) -> None:
        if not commands:
            return
        try:
            answers = self._execute(commands)
            again = [i for i, answer in enumerate(answers) if isinstance(answer, redis.exceptions.NoScriptError)]
            if again and self.scripts:
                # Redis lost its scripts (a restart, a failover): load them, send those once more.
                for script in self.scripts:
                    self.redis.client.script_load(script)
                for i, answer in zip(again, self._execute([commands[i] for i in again]), strict=True):
                    answers[i] = answer
        except redis.RedisError as exc:
            error = self.redis.unavailable(exc)
            for command in commands:
                command.future.set_exception(error)
            return
        for command, answer in zip(commands, answers, strict=True):
            if isinstance(answer, redis.RedisError):
                command.future.set_exception(self.redis.unavailable(answer))
                continue
            try:
                command.future.set_result(answer if command.parse is None else command.parse(answer))
            except (ValueError, TypeError) as exc:
                command.future.set_exception(ResultBackendUnavailable(f"Redis answered {answer!r}: {exc}"))

    def _execute(self, commands: Sequence[_Command]) -> list[Any]:
        """Send ``commands`` in one write and read their answers in order (an error reply in its
        command's place); once more on a new connection when Redis had closed the kept one, as
        the client's own retry does (the commands are idempotent). The caller holds the sending
        lock.
        """
        client = self.redis.client
        for attempt in (1, 2):
            connection, self._connection = self._connection, None
            try:
                if connection is None:
                    connection = self.redis.new_connection()
                # Connected here (nothing to do when it is), not by the send, which would go to
                # the configured host: a Sentinel connection finds the primary in connect() alone.
                connection.connect()
                connection.send_packed_command(connection.pack_commands([c.args for c in commands]), check_health=False)
                for command in commands:
                    command.future.mark_sent()
                answers: list[Any] = []
                for command in commands:
                    try:
                        answers.append(client.parse_response(connection, command.args[0]))
                    except redis.ResponseError as exc:
                        answers.append(exc)
            except redis.ConnectionError:
                if connection is not None:
                    connection.disconnect()
                if attempt == 2:
                    raise
                continue
            except BaseException:
                # Its answers may still come: they must never be read as another batch's.
                if connection is not None:
                    connection.disconnect()
                raise
            self._connection = connection
            return answers
        raise AssertionError("unreachable")  # pragma: no cover

    def settle(self, timeout: float) -> None:
        """Send the commands still waiting and wait for their answers (at exit): through the
        writer's thread, ``timeout`` seconds at most, when it runs; else on this thread (no new
        thread starts at interpreter shutdown), within the socket timeout.
        """
        if self._background.running:
            unanswered = [*self._waiting, *self._in_flight]
            if unanswered and all(command.args and command.args[0] in READ_COMMANDS for command in unanswered):
                return  # reads only: nobody is left to read their answers
            # Even with nothing waiting: a batch the thread is sending has its answers to come,
            # and a process that ended now would cut it off, unanswered and maybe half sent.
            if not self.flush(timeout):
                logger.warning("Redis did not answer the last record writes within %.1f s", timeout)
            return
        with self._sending:
            while self._waiting:
                self._send_next_batch()


def _settle_all() -> None:
    for writer in list(_writers):
        writer.settle(EXIT_WAIT)


def _forked() -> None:
    for writer in list(_writers):
        writer._forked()


_process_watched = threading.Lock()


def _watch_process() -> None:
    """Settle every writer at exit, and reset it in a forked child (hooked once, with the first
    writer): the one place a writer's life across processes is decided. redis-py's pool opens
    its own connections again in a child.
    """
    if _process_watched.acquire(blocking=False):
        atexit.register(_settle_all)
        os.register_at_fork(after_in_child=_forked)
