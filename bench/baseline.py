"""The bare pass-through proxy: the least work a Python proxy on dragoman's stack can do.

Same stack class as the gateway (one uvicorn worker, uvloop + httptools, one pooled aiohttp
``ClientSession``) but a raw ASGI app with no framework, no parsing and no translation: read the
request body, forward it to the same path on the upstream, write the response back (streamed through
chunk by chunk when the upstream answers ``text/event-stream``). The gateway's requests/s are judged
against this process's in the same run.

Run: ``python bench/baseline.py --upstream http://127.0.0.1:9000 --port 9001``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HEALTH_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"2")]


class PassThrough:
    """A raw ASGI app holding one keep-alive pool to the upstream, opened in lifespan."""

    def __init__(self, upstream: str, api_key: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=256, limit_per_host=256)
                self.session = aiohttp.ClientSession(connector=connector,
                                                     timeout=aiohttp.ClientTimeout(total=None))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": HEALTH_HEADERS})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        assert self.session is not None
        url = self.upstream + scope["path"]
        async with self.session.request(scope["method"], url, data=b"".join(chunks),
                                        headers=self.headers) as resp:
            content_type = resp.headers.get("Content-Type", "application/json").encode()
            if content_type.startswith(b"text/event-stream"):
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")]})
                async for data in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            body = await resp.read()
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": [(b"content-type", content_type),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", default="http://127.0.0.1:9000")
    parser.add_argument("--api-key", default="dummy")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    uvicorn.run(PassThrough(args.upstream, args.api_key), host=args.host, port=args.port, loop="uvloop",
                http="httptools", lifespan="on", access_log=False, log_level="warning", workers=1)


if __name__ == "__main__":
    main()
