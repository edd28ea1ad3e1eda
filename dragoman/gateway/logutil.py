"""Logging helpers for things that can happen thousands of times a second."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class ThrottledLog:
    """Logs at most once per ``interval`` seconds and says how many messages it held back,
    so a flood (queue overflow, Redis down) is visible without drowning the log."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self.suppressed = 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self.suppressed += 1
            return
        if self.suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, self.suppressed)
        self._last = now
        self.suppressed = 0
        self._logger.log(level, msg, *args)
