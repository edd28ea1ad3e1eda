"""A TCP proxy a test puts between dragoman and a real server (PostgreSQL) to make that server
hang or refuse connections, without touching the server that other tests share.

* ``hang()``: connections are still accepted (the kernel of a stopped server does that too) but
  nothing is forwarded either way, as with a SIGSTOPped or wedged server; ``resume()`` forwards
  what was held back.
* ``refuse()``: the listening socket closes and open connections are cut, so connecting fails
  with ``ECONNREFUSED`` as with a server that is down; ``resume()`` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any


class PausableProxy:
    """``with PausableProxy(host, port) as proxy:`` forwards ``127.0.0.1:proxy.port`` to ``host:port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="tcp-proxy")
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- control, from the test's thread -----------------------------------------------------

    def __enter__(self) -> PausableProxy:
        self._thread.start()
        self._call(self._start)
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def hang(self) -> None:
        self._call(self._hang)

    def refuse(self) -> None:
        self._call(self._refuse)

    def resume(self) -> None:
        self._call(self._resume)

    def _call(self, action: Callable[[], Any]) -> None:
        async def run() -> None:
            await action()
        asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    # -- on the proxy's loop ---------------------------------------------------------------------

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _hang(self) -> None:
        assert self._flowing is not None
        self._flowing.clear()

    async def _refuse(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._cut_all()

    async def _resume(self) -> None:
        assert self._flowing is not None
        self._flowing.set()
        if self._server is None:
            await self._listen()

    async def _stop(self) -> None:
        await self._refuse()
        for task in list(self._tasks):
            task.cancel()

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, server_writer))
        pumps = [asyncio.create_task(self._pump(client_reader, server_writer)),
                 asyncio.create_task(self._pump(server_reader, client_writer))]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
            self._tasks.discard(pump)
        for writer in (client_writer, server_writer):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                await self._flowing.wait()  # hung: hold the bytes, as a stopped server would
                writer.write(data)
                await writer.drain()
