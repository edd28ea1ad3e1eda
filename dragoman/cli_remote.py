"""CLI commands that ask a running dragoman: ``models load|unload NAME`` and ``pull NAME``.

They speak HTTP with the standard library (the gateway's own dependencies have no sync client):
``models`` goes to the admin API with the admin password, ``pull`` to ``/api/pull`` with an API
key whose metadata says ``admin: true`` (or none under ``auth.mode: none``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import IO, Any

from dragoman.config import DEFAULT_PORT

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


class RemoteError(Exception):
    """The server refused or could not be reached; the message says which and why."""


def add_remote_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None,
                        help=f"the running dragoman (default $DRAGOMAN_URL or {DEFAULT_URL})")


def _url(args: argparse.Namespace, path: str) -> str:
    base = args.url or os.environ.get("DRAGOMAN_URL") or DEFAULT_URL
    return base.rstrip("/") + path


def _post(url: str, body: dict[str, Any], secret: str | None, *, timeout: float) -> Any:
    headers = {"content-type": "application/json"}
    if secret:
        headers["authorization"] = f"Bearer {secret}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise RemoteError(f"{url}: {exc.code} {_message(exc.read())}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RemoteError(f"cannot reach {url}: {reason} (is `dragoman serve` running? see --url)") from None


def _message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:300]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error if error is not None else data)


def models_load(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"model": args.name}
    for field in ("keep_alive", "n_ctx", "n_threads"):
        if getattr(args, field, None) is not None:
            body[field] = getattr(args, field)
    return _admin_call(args, "/admin/api/models/load", body)


def models_unload(args: argparse.Namespace) -> int:
    return _admin_call(args, "/admin/api/models/unload", {"model": args.name})


def _admin_call(args: argparse.Namespace, path: str, body: dict[str, Any]) -> int:
    password = os.environ.get("DRAGOMAN_ADMIN_PASSWORD")
    if not password:
        print("dragoman: set DRAGOMAN_ADMIN_PASSWORD to the admin password", file=sys.stderr)
        return 2
    try:
        with _post(_url(args, path), body, password, timeout=600) as response:
            answer = json.loads(response.read())
    except RemoteError as exc:
        print(f"dragoman: {exc}", file=sys.stderr)
        return 1
    if answer.get("loaded"):
        until = answer.get("expires_at")
        when = "until unloaded" if until is None else time.strftime("until %H:%M:%S if idle", time.localtime(until))
        print(f"loaded {answer['target']} ({when})")
    else:
        print(f"unloaded {answer['target']}")
    return 0


def pull(args: argparse.Namespace) -> int:
    key = os.environ.get("DRAGOMAN_API_KEY")
    try:
        with _post(_url(args, "/api/pull"), {"model": args.name, "stream": True}, key, timeout=600) as response:
            return show_progress(_lines(response), sys.stderr)
    except RemoteError as exc:
        print(f"dragoman: {exc}", file=sys.stderr)
        return 1


def _lines(response: IO[bytes]) -> Iterator[dict[str, Any]]:
    for raw in response:
        if raw.strip():
            yield json.loads(raw)


def show_progress(lines: Iterator[dict[str, Any]], out: IO[str]) -> int:
    """Ollama's pull progress as a one-line bar per file; 0 on ``success``, 1 on an error line."""
    status = ""
    for line in lines:
        if "error" in line:
            out.write(f"\ndragoman: pull failed: {line['error']}\n")
            return 1
        total, completed = line.get("total"), line.get("completed")
        if total:
            done = min(completed or 0, total)
            width = 30
            filled = int(width * done / total)
            out.write(f"\r{line['status']}  [{'#' * filled}{'.' * (width - filled)}] "
                      f"{done / 2**20:7.1f}/{total / 2**20:.1f} MiB {100 * done / total:3.0f}%")
        elif line.get("status") != status:
            out.write(("\n" if status else "") + line["status"])
        status = line.get("status", status)
        out.flush()
    out.write("\n")
    return 0 if status == "success" else 1
