"""Burst check: do limits hold when a key's requests all arrive at once?

Starts the static upstream and two dragoman instances sharing one Redis and one key database (as
behind a load balancer), creates a key limited to ``--rpm`` requests per minute with the
``dragoman keys create`` command, then sends ``--requests`` chat requests at once, spread evenly
over both instances. Prints how many were admitted; every other answer must be a 429 with
``retry-after``. The exit status is 1 when more than ``--rpm`` were admitted or another answer came.

Run from the repo root: ``python bench/burst.py [--redis URL] [--requests 200] [--rpm 60]``
(a few seconds; needs a Redis server, 127.0.0.1:6379 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
from loadgen import chat_body
from run import BENCH, Server, free_port, start

GATEWAY_CONFIG = """\
server: {{host: 127.0.0.1, port: {port}}}
backends:
  - name: up
    type: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    api_key: dummy
    models: ["*"]
auth: {{mode: keys}}
database: sqlite:///{database}
redis: {redis}
"""


def create_key(config: Path, rpm: int) -> str:
    """A fresh key through the CLI, as an operator makes one; its secret."""
    out = subprocess.run([sys.executable, "-m", "dragoman", "keys", "create", "--config", str(config),
                          "--name", f"burst-{time.time_ns()}", "--rpm", str(rpm)],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return next(word for word in out.split() if word.startswith("sk-dm-"))


async def fire(urls: list[str], secret: str, count: int) -> tuple[Counter[int], int, float]:
    """``count`` requests at once; the statuses, how many 429s lacked retry-after, and the seconds."""
    body = chat_body("up/m", False)
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        async def one(url: str) -> tuple[int, bool]:
            async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
                await resp.read()
                return resp.status, resp.status != 429 or "retry-after" in resp.headers

        started = time.perf_counter()
        answers = await asyncio.gather(*(one(urls[i % len(urls)]) for i in range(count)))
        elapsed = time.perf_counter() - started
    return Counter(status for status, _ in answers), sum(not ok for _, ok in answers), elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rpm", type=int, default=60)
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="dragoman-burst-"))
    up_port = free_port()
    started: list[Server] = []
    try:
        started.append(start("upstream", [sys.executable, str(BENCH / "upstream.py"), "--port", str(up_port)],
                             None, logdir, f"http://127.0.0.1:{up_port}"))
        urls = []
        for name in ("dragoman-a", "dragoman-b"):
            port = free_port()
            config = logdir / f"{name}.yaml"
            config.write_text(GATEWAY_CONFIG.format(port=port, upstream_port=up_port, redis=args.redis,
                                                    database=logdir / "keys.sqlite"))
            cmd = [sys.executable, "-m", "dragoman", "serve", "--config", str(config)]
            started.append(start(name, cmd, None, logdir, f"http://127.0.0.1:{port}"))
            urls.append(started[-1].url)
        secret = create_key(logdir / "dragoman-a.yaml", args.rpm)
        statuses, bare_429s, elapsed = asyncio.run(fire(urls, secret, args.requests))
    finally:
        for server in reversed(started):
            server.stop()
    admitted = statuses.get(200, 0)
    others = {status: n for status, n in statuses.items() if status not in (200, 429)}
    print(f"burst: {args.requests} concurrent requests, a {args.rpm} rpm key, 2 instances on {args.redis}")
    other = f"other {sum(others.values())}" + (f" {others}" if others else "")
    print(f"admitted {admitted} (at most {args.rpm}), refused {statuses.get(429, 0)} with 429, {other}, "
          f"in {elapsed:.2f} s (logs in {logdir})")
    if bare_429s:
        print(f"FAIL: {bare_429s} answers 429 without retry-after")
    ok = admitted <= args.rpm and not others and not bare_429s
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
