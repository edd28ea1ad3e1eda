"""Console logging for ``dragoman serve``: ``text`` for people, ``json`` (one object a line) for machines.

In JSON, every record (dragoman's, uvicorn's) is one object with ``time``, ``level``, ``logger``
and ``message``; a request log record (:class:`dragoman.request_log.RequestEntry`) carries its
fields instead of a message.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record.msg, "fields", None)
        if callable(fields) and not record.args:
            data.update(fields())
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


def configure(level: str, fmt: LogFormat) -> dict[str, Any] | None:
    """Log ``level`` and up to stderr in ``fmt``; returns the ``log_config`` to give uvicorn
    (None in JSON: its loggers then reach the root handler set here, in the same format)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    if fmt == "json":
        return None
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG
