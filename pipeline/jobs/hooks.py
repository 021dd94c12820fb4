"""Which middleware act on each of Dramatiq's signals, worked out once per signal.

Dramatiq calls every middleware's hook for every signal, a dozen signals per job, and most
middleware leave most hooks as :class:`~dramatiq.middleware.Middleware`'s no-ops; with
pipeline's list of middleware, those calls were a measurable share of a send and of a job.
"""

from __future__ import annotations

from collections.abc import Sequence

from dramatiq.middleware import Middleware


def acts_on(middleware: Middleware, signal: str) -> bool:
    """Whether ``middleware``'s hook for ``signal`` does anything: it has one, and it is not the
    base class's no-op. Pipeline's own signals (``after_enqueue_failure``, say) reach only the
    middleware that define them.
    """
    hook = getattr(middleware, signal, None)
    return hook is not None and getattr(hook, "__func__", None) is not getattr(Middleware, signal, None)


class HookTable:
    """The middleware that act on each signal, in the broker's order.

    Worked out on a signal's first emit and kept until :meth:`clear` (the broker clears it when a
    middleware is added); a list of middleware of another length is worked out again.
    """

    def __init__(self) -> None:
        self._acting: dict[str, tuple[int, list[Middleware]]] = {}

    def clear(self) -> None:
        """Forget every signal's middleware."""
        self._acting.clear()

    def acting(self, middleware: Sequence[Middleware], signal: str) -> list[Middleware]:
        """The middleware of ``middleware`` that act on ``signal``, in order."""
        known = self._acting.get(signal)
        if known is not None and known[0] == len(middleware):
            return known[1]
        acting = [m for m in middleware if acts_on(m, signal)]
        self._acting[signal] = (len(middleware), acting)
        return acting
