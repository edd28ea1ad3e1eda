"""Run real ASGI servers on ephemeral loopback ports, each in its own thread and event loop.

Tests then talk to them over real HTTP with the official (synchronous) SDKs, which would
deadlock a server sharing the test's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from starlette.types import ASGIApp

from dragoman.app import create_app
from dragoman.config import load_config
from dragoman.connections import guarded_protocol


class ServerThread:
    """An ASGI app served by uvicorn in a background thread."""

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", http: str | type[asyncio.Protocol] = "h11") -> None:
        self.app = app
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only then (else ~40 ms per keep-alive request).
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        # proxy_headers off, as ``dragoman serve`` runs without ``server.trusted_proxies``: uvicorn
        # would otherwise believe X-Forwarded-For from loopback, i.e. from every test client.
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                    loop="asyncio", http=http, lifespan="on",
                                                    proxy_headers=False, timeout_graceful_shutdown=3))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        self.loop.close()

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server thread died during startup")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start within 30s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_coroutine(self, coro: Any) -> Any:
        """Run a coroutine on the server's loop (to inspect its state) and wait for it."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)


@contextlib.contextmanager
def dragoman_server(config: dict[str, Any], *, env: dict[str, str] | None = None,
                    workdir: Path | None = None, guarded: str | None = None,
                    tracer_provider: Any = None) -> Iterator[ServerThread]:
    """A dragoman app built from a config dict written to a temporary YAML file.

    ``guarded`` ("httptools" or "h11") serves it over that uvicorn protocol with the connection
    guards of ``dragoman serve`` (``dragoman.connections``); by default, plain h11. With an
    OpenTelemetry ``tracer_provider``, the app makes its spans there."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = workdir or Path(tmp)
        path = directory / "dragoman.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        loaded = load_config(path, environ=env or {})
        app = create_app(loaded, tracer_provider=tracer_provider)
        http = "h11" if guarded is None else guarded_protocol(guarded, loaded.server)
        with ServerThread(app, http=http) as server:
            server.app_state = app.state  # type: ignore[attr-defined]
            yield server
