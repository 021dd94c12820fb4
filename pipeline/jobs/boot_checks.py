"""A worker that stops at boot on a bad setting, with one line naming it.

The broker and the actors are built without reading the settings (nothing happens at import);
a worker process reads them as it boots, and stops there when one cannot be used, rather than
run half-configured.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import dramatiq
from dramatiq.middleware import Middleware

from pipeline.errors import SettingsError
from pipeline.settings import Settings

logger = logging.getLogger(__name__)


#: Exit code of a worker process that stops for a bad setting.
RET_BAD_SETTING = 2


class SettingsAtStart(Middleware):
    """Reads the settings when a worker process boots, and stops the process, naming the
    variable, when one is bad: the broker and the actors were built without reading them.

    Parameters:
      settings: The settings the broker was built with.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        """Read the settings; exit the process when one cannot be used."""
        try:
            self.settings.broker_url  # noqa: B018 - reading them is the check
        except SettingsError as exc:
            stop_at_boot(exc)


def stop_at_boot(error: SettingsError) -> NoReturn:
    """Stop a booting worker process over a bad setting, with one line naming it.

    Raises:
      SystemExit: Always, which passes Dramatiq's hook dispatch: that logs any other exception
        with its traceback and goes on, and the worker would run half-configured.
    """
    logger.critical("The worker cannot start: %s", error)
    raise SystemExit(RET_BAD_SETTING) from error
