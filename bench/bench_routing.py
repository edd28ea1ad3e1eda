"""Routing under load: does spreading over deployments cost throughput, and does a dead one hurt?

Starts two static upstreams (``upstream.py``) and dragoman (one worker) with these models:

- ``one``: one deployment (the reference);
- ``two``: two deployments, ``weighted_random``; ``two-least``: the same, ``least_busy``;
- ``with-dead``: one healthy deployment and one on a closed port (connection refused), cooldown
  after 3 failures for 2 s, so the measured run spans several probe cycles.

Then, in interleaved rounds, it measures requests/s at saturation for each (closed loop, 32
connections, loadgen.py). Targets:

- ``two`` and ``two-least`` within 10% of ``one`` (the median of per-round ratios);
- ``with-dead``: a first run trips the breaker, then no client sees an error (a failed attempt
  moves to the healthy deployment before the first byte, probes included).

It also times the router's own work per request in process (no HTTP), which the noise of a shared
machine does not blur. Run from the repo root: ``python bench/bench_routing.py`` (about two minutes;
``--quick`` for a smoke run). Prints a table and PASS/FAIL; the exit status is 1 when a target fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from loadgen import LoadResult, chat_body
from run import REPO, Server, free_port, pinned, start

sys.path.insert(0, str(REPO))

from dragoman.backends.base import Backend, BackendDeps, CallOptions, NoSettings
from dragoman.core.events import Event, MessageEnd, MessageStart
from dragoman.core.models import ModelInfo
from dragoman.core.types import ChatRequest, FinishReason, Message, Role, TextPart, Usage
from dragoman.gateway.cooldown import CooldownSettings, MemoryCooldownStore
from dragoman.gateway.deployments import Deployment, ModelRoute, Step, Target
from dragoman.gateway.router import Router

BENCH = Path(__file__).resolve().parent
MODELS = ("one", "two", "two-least")
MAX_SLOWDOWN = 0.10

CONFIG = """\
server: {{host: 127.0.0.1, port: {port}}}
backends:
  - {{name: up1, type: openai, base_url: "http://127.0.0.1:{up1}/v1", api_key: dummy, models: [m]}}
  - {{name: up2, type: openai, base_url: "http://127.0.0.1:{up2}/v1", api_key: dummy, models: [m]}}
  - {{name: dead, type: openai, base_url: "http://127.0.0.1:{dead}/v1", api_key: dummy, models: [m]}}
routing:
  cooldown: {{failures: 3, window: 60, period: 2}}
  health_interval: 0
models:
  - {{name: one, deployments: [up1/m]}}
  - {{name: two, deployments: [up1/m, up2/m]}}
  - {{name: two-least, strategy: least_busy, deployments: [up1/m, up2/m]}}
  - {{name: with-dead, deployments: [up1/m, dead/m]}}
"""


def load(url: str, model: str, *, stream: bool, connections: int, duration: float, engine: str,
         cpu: int | None) -> LoadResult:
    """One loadgen run in its own process (off the gateway's core when pinning)."""
    cmd = [sys.executable, str(BENCH / "loadgen.py"), url + "/v1/chat/completions", "--engine", engine,
           "-c", str(connections), "-d", str(duration), "--model", model]
    if stream:
        cmd.append("--stream")
    out = subprocess.run(pinned(cmd, cpu), capture_output=True, text=True, check=False, timeout=duration + 120)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    return LoadResult(**json.loads(out.stdout.strip().splitlines()[-1]))


def answers(url: str, model: str) -> str:
    body = chat_body(model, False)
    request = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["choices"][0]["message"]["content"])


class _Instant(Backend):
    """A backend that answers at once: what is left to time is the router's own work."""

    type = "instant"

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(name="m")]

    async def stream(self, request: ChatRequest, model: str, options: CallOptions) -> AsyncIterator[Event]:
        yield MessageStart("id", model, 0)
        yield MessageEnd(FinishReason.STOP, Usage())


async def _router_cost(requests: int) -> dict[str, float]:
    """Microseconds per request the router adds over calling the backend directly, per route shape."""
    one, two = _Instant("one", NoSettings(), BackendDeps()), _Instant("two", NoSettings(), BackendDeps())
    first = Deployment(Target(one, "m", ModelInfo(name="m")))
    second = Deployment(Target(two, "m", ModelInfo(name="m")))
    request = ChatRequest(model="m", messages=[Message(Role.USER, [TextPart("hi")])])
    options = CallOptions()
    shapes = {
        "one deployment": ModelRoute("m", (Step("m", (first,)),)),
        "two, weighted_random": ModelRoute("m", (Step("m", (first, second)),)),
        "two, least_busy": ModelRoute("m", (Step("m", (first, second), "least_busy"),)),
        "two, lowest_latency": ModelRoute("m", (Step("m", (first, second), "lowest_latency"),)),
    }

    async def direct() -> None:
        events = one.stream(request, "m", options)
        await anext(events)
        await events.aclose()  # type: ignore[attr-defined]

    async def routed(router: Router, route: ModelRoute) -> None:
        started = await router.start(route, lambda step, target: (request, options), started_at=0.0)
        await started.aclose()

    async def timed(call: Callable[[], Awaitable[None]]) -> float:
        for _ in range(1000):
            await call()
        began = time.perf_counter()
        for _ in range(requests):
            await call()
        return (time.perf_counter() - began) / requests * 1e6

    base = await timed(direct)
    costs = {}
    for name, route in shapes.items():
        router = Router(cooldowns=MemoryCooldownStore())
        costs[name] = await timed(lambda r=router, rt=route: routed(r, rt)) - base  # type: ignore[misc]
    tripped = MemoryCooldownStore(CooldownSettings(failures=1))
    await tripped.record_failure(second.id)
    router = Router(cooldowns=tripped)
    costs["two, one cooling down"] = await timed(lambda: routed(router, shapes["two, weighted_random"])) - base
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s runs, 1 round")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--engine", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--stream", action="store_true", help="streaming requests")
    args = parser.parse_args()
    duration, rounds = (1.0, 1) if args.quick else (args.duration, args.rounds)
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    gateway_cpu, other_cpu = (0, 1) if pin else (None, None)

    costs = asyncio.run(_router_cost(2000 if args.quick else 20000))
    print("the router's own work per request (in process, over calling the backend directly):")
    for name, micros in costs.items():
        print(f"  {name:<24} {micros:6.1f} us")

    up1, up2, dead, port = free_port(), free_port(), free_port(), free_port()
    started: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        logdir = Path(tmp)
        config = logdir / "dragoman.yaml"
        config.write_text(CONFIG.format(port=port, up1=up1, up2=up2, dead=dead))
        try:
            for name, upstream_port in (("up1", up1), ("up2", up2)):
                started.append(start(name, [sys.executable, str(BENCH / "upstream.py"), "--port",
                                            str(upstream_port)], other_cpu, logdir, f"http://127.0.0.1:{upstream_port}"))
            gateway = start("dragoman", [sys.executable, "-m", "dragoman", "serve", "--config", str(config),
                                         "--host", "127.0.0.1", "--port", str(port)], gateway_cpu, logdir,
                            f"http://127.0.0.1:{port}")
            started.append(gateway)
            for model in (*MODELS, "with-dead"):
                answers(gateway.url, model)

            def measure(model: str, seconds: float) -> LoadResult:
                return load(gateway.url, model, stream=args.stream, connections=args.connections,
                            duration=seconds, engine=args.engine, cpu=other_cpu)

            print(f"warming up ({'streaming' if args.stream else 'non-streaming'}, {args.connections} connections, "
                  f"{duration:g} s runs, {rounds} rounds)", flush=True)
            for model in MODELS:
                measure(model, min(duration, 1.0))
            results: dict[str, list[LoadResult]] = {m: [] for m in MODELS}
            for round_ in range(rounds):  # rotated, so drift of a shared machine hits each model alike
                for model in MODELS[round_ % len(MODELS):] + MODELS[:round_ % len(MODELS)]:
                    results[model].append(measure(model, duration))
            tripping = measure("with-dead", 1.0)  # the dead deployment fails 3 times, then cools down
            dead_runs = [measure("with-dead", max(duration, 5.0)) for _ in range(rounds)]
        finally:
            for server in reversed(started):
                server.stop()

    rps = {m: statistics.median(r.rps for r in results[m]) for m in MODELS}
    print(f"\n{'model':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for model in MODELS:
        runs = results[model]
        print(f"{model:<12} {rps[model]:>9.0f} {statistics.median(r.p50_ms for r in runs):>8.2f} "
              f"{statistics.median(r.p99_ms for r in runs):>8.2f} {sum(r.errors for r in runs):>7}")
    for label, runs in (("with-dead*", [tripping]), ("with-dead", dead_runs)):
        print(f"{label:<12} {statistics.median(r.rps for r in runs):>9.0f} "
              f"{statistics.median(r.p50_ms for r in runs):>8.2f} {statistics.median(r.p99_ms for r in runs):>8.2f} "
              f"{sum(r.errors for r in runs):>7}")
    print("(* the first run, while the breaker trips)")

    verdicts: list[tuple[bool, str]] = []
    for model in ("two", "two-least"):
        ratio = statistics.median(t.rps / o.rps for t, o in zip(results[model], results["one"], strict=True))
        verdicts.append((ratio >= 1 - MAX_SLOWDOWN, f"{model} / one req/s = {ratio:.3f} (>= {1 - MAX_SLOWDOWN:.2f})"))
    request_us = 1e6 / rps["one"]  # one gateway worker, saturated: its time per request
    extra = costs["two, weighted_random"] - costs["one deployment"]
    print(f"\nthe second deployment's routing work: {extra:.1f} us of ~{request_us:.0f} us per request "
          f"({extra / request_us:.2%}); the req/s ratios below are that plus the machine's noise")
    errors = sum(r.errors for r in dead_runs)
    requests = sum(r.requests for r in dead_runs)
    verdicts.append((errors == 0, f"with one deployment dead: {errors} errors in {requests:,} requests after "
                                  f"the first cooldown (0)"))
    verdicts.append((all(r.errors == 0 for r in results["one"]), "no errors on healthy deployments"))
    print()
    for ok, what in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
    return 0 if all(ok for ok, _ in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
