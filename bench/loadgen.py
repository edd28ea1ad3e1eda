"""Closed-loop HTTP load: N keep-alive connections, each sending the next request when the last ends.

Two engines, one result shape (requests/s, p50/p99/mean/max of the full response time, errors):

- ``wrk`` (preferred; ``apt-get install -y wrk``): C, one thread does well over 50k requests/s, so it
  never is the bottleneck on a 2-core machine. A generated Lua script sets the POST body and prints
  the figures from wrk's latency histogram (microsecond resolution) as one JSON line. wrk measures a
  response when its last byte arrives, chunked SSE streams included.
- ``python``: the fallback where wrk is missing, and the only one that takes fractional durations or
  an exact request count. Raw ``asyncio.Protocol`` connections on uvloop parsing responses with
  httptools: no client library on the path, so it costs far less than an aiohttp client would.

Run: ``python bench/loadgen.py http://127.0.0.1:9000/v1/chat/completions --stream -c 32 -d 10``;
prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import httptools
import orjson
import uvloop

WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


@dataclass
class LoadResult:
    """What one load run measured; latencies are the full response time in milliseconds."""

    engine: str
    connections: int
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: int
    server_cpu_us_per_req: float = math.nan  # filled in by run.py, which knows the server's pid
    loadgen_cpu_us_per_req: float = math.nan  # filled in by run.py: the load generator's own CPU (shared cores)


def chat_body(model: str, stream: bool) -> bytes:
    """A small, realistic chat request; the same bytes go to every target."""
    return orjson.dumps({
        "model": model,
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "Say hello in five words."}],
        "max_tokens": 32,
        "stream": stream,
    })


def responses_body(model: str, stream: bool) -> bytes:
    """The same request for the Responses API (``POST /v1/responses``)."""
    return orjson.dumps({
        "model": model,
        "instructions": "You are terse.",
        "input": "Say hello in five words.",
        "max_output_tokens": 32,
        "stream": stream,
    })


def _lua_string(data: bytes) -> str:
    """A Lua long-bracket literal that cannot be closed by the payload."""
    text = data.decode()
    level = 0
    while "]" + "=" * level + "]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def run_wrk(url: str, body: bytes, headers: dict[str, str], connections: int,
            duration_s: float, timeout_s: float = 10.0) -> LoadResult:
    """One wrk run (one thread; wrk's duration is whole seconds)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body)}"]
    lines += [f"wrk.headers[ {_lua_string(k.encode())} ] = {_lua_string(v.encode())}"
              for k, v in headers.items()]
    seconds = max(1, round(duration_s))
    with tempfile.TemporaryDirectory(prefix="dragoman-bench-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text("\n".join(lines) + "\n" + WRK_DONE)
        proc = subprocess.run(
            [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={max(1, round(timeout_s))}s",
             "-s", str(script), url],
            capture_output=True, text=True, timeout=seconds + timeout_s + 30, check=False)
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    raw = json.loads(found[-1][len("RESULT "):])
    duration = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(engine="wrk", connections=connections, requests=raw["requests"],
                      duration_s=duration, rps=raw["requests"] / duration, p50_ms=raw["p50_us"] / 1000,
                      p99_ms=raw["p99_us"] / 1000, mean_ms=raw["mean_us"] / 1000,
                      max_ms=raw["max_us"] / 1000, errors=errors)


class _Shared:
    """State all connections of one python-engine run update."""

    def __init__(self, deadline: float, max_requests: int | None) -> None:
        self.deadline = deadline
        self.remaining = max_requests if max_requests is not None else -1
        self.latencies: list[float] = []
        self.errors = 0

    def take(self) -> bool:
        """May one more request start?"""
        if time.perf_counter() >= self.deadline or self.remaining == 0:
            return False
        if self.remaining > 0:
            self.remaining -= 1
        return True


class _Client(asyncio.Protocol):
    """One keep-alive connection sending requests back to back and timing each full response."""

    def __init__(self, request: bytes, shared: _Shared, done: asyncio.Future[None]) -> None:
        self.request = request
        self.shared = shared
        self.done = done
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.started = 0.0
        self.in_flight = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._next()

    def _next(self) -> None:
        assert self.transport is not None
        if not self.shared.take():
            self.transport.close()
            return
        self.in_flight = True
        self.started = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.shared.errors += 1
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        self.in_flight = False
        self.shared.latencies.append(time.perf_counter() - self.started)
        if not 200 <= self.parser.get_status_code() < 400:
            self.shared.errors += 1
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_flight:
            self.shared.errors += 1
        if not self.done.done():
            self.done.set_result(None)


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def _python_load(url: str, body: bytes, headers: dict[str, str], connections: int,
                       duration_s: float, max_requests: int | None) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    shared = _Shared(started + duration_s, max_requests)
    waits: list[asyncio.Future[None]] = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        waits.append(done)
        await loop.create_connection(lambda d=done: _Client(request, shared, d), host, port)  # type: ignore[misc]
    await asyncio.gather(*waits)
    elapsed = time.perf_counter() - started
    lat = sorted(shared.latencies)
    ms = 1000.0
    return LoadResult(engine="python", connections=connections, requests=len(lat), duration_s=elapsed,
                      rps=len(lat) / elapsed, p50_ms=_percentile(lat, 50) * ms,
                      p99_ms=_percentile(lat, 99) * ms,
                      mean_ms=(sum(lat) / len(lat) * ms) if lat else math.nan,
                      max_ms=(lat[-1] * ms) if lat else math.nan, errors=shared.errors)


def run_python(url: str, body: bytes, headers: dict[str, str], connections: int, duration_s: float,
               max_requests: int | None = None) -> LoadResult:
    """One python-engine run in this process (run it in its own process to keep it off other loops)."""
    return uvloop.run(_python_load(url, body, headers, connections, duration_s, max_requests))


def run_load(engine: str, url: str, body: bytes, headers: dict[str, str], connections: int,
             duration_s: float, max_requests: int | None = None) -> LoadResult:
    """``auto`` picks wrk when it is installed and no exact request count is asked for."""
    if engine == "auto":
        engine = "wrk" if shutil.which("wrk") and max_requests is None else "python"
    if engine == "wrk":
        return run_wrk(url, body, headers, connections, duration_s)
    return run_python(url, body, headers, connections, duration_s, max_requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--engine", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("-n", "--requests", type=int, default=None,
                        help="stop after this many requests (python engine)")
    parser.add_argument("--model", default="up/m")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--api", choices=("chat", "responses"), default="chat",
                        help="the request body: chat completions (default) or the Responses API")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    args = parser.parse_args()
    headers = {"Content-Type": "application/json"}
    for item in args.header:
        name, _, value = item.partition(":")
        headers[name.strip()] = value.strip()
    body = (responses_body if args.api == "responses" else chat_body)(args.model, args.stream)
    result = run_load(args.engine, args.url, body, headers, args.connections,
                      args.duration if args.requests is None else max(args.duration, 3600.0), args.requests)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
