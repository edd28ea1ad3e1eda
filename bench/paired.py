"""Paired runs: the bare proxy and dragoman loaded at the same moment, sharing one core.

``run.py`` measures the targets one after another; on a shared VM the machine's speed drifts
between those runs, and its ratios move by 10-20% from run to run. Here both proxies are pinned to
the same core and saturated at once, so any drift hits both alike: each one's CPU time per request
(from ``/proc``) is measured over the same seconds. Rounds of one sitting agree within about 1%,
but sittings minutes apart moved by up to 4% on the same build; ``instructions.py`` is the steadier
judge of small changes.
Both run slower than alone (they evict each other's caches), so the absolute figures are not
``run.py``'s; the ratio is what this is for. ``--gateway-cmd`` (as in ``run.py``) pairs the bare
proxy with another build, e.g. an older checkout, to compare two versions in one sitting.

Run from the repo root: ``python bench/paired.py [--rounds 5] [--duration 10] [--stream]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from loadgen import LoadResult
from run import (
    BENCH,
    GATEWAY_CMD,
    Server,
    check_answers,
    cpu_seconds,
    free_port,
    gateway_command,
    loadgen_cmd,
    pinned,
    start,
)

PROXY_CORE, CLIENT_CORE = 0, 1


def spawn_load(url: str, stream: bool, connections: int, duration: float) -> subprocess.Popen[str]:
    cmd = loadgen_cmd(url, stream, connections, duration, "wrk")
    return subprocess.Popen(pinned(cmd, CLIENT_CORE), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen[str]) -> LoadResult:
    out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed: {err[-2000:]}")
    return LoadResult(**json.loads(out.strip().splitlines()[-1]))


def paired_round(baseline: Server, gateway: Server, stream: bool, connections: int,
                 duration: float) -> tuple[float, float]:
    """CPU us per request of the baseline and of dragoman over the same seconds."""
    before = cpu_seconds(baseline.proc.pid), cpu_seconds(gateway.proc.pid)
    loads = spawn_load(baseline.url, stream, connections, duration), spawn_load(gateway.url, stream,
                                                                                 connections, duration)
    done = result(loads[0]), result(loads[1])
    after = cpu_seconds(baseline.proc.pid), cpu_seconds(gateway.proc.pid)
    for res in done:
        if res.errors:
            raise RuntimeError(f"{res.errors} failed requests")
    return ((after[0] - before[0]) * 1e6 / done[0].requests, (after[1] - before[1]) * 1e6 / done[1].requests)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--connections", type=int, default=32, help="per proxy")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--gateway-cmd", default=GATEWAY_CMD)
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="dragoman-paired-"))
    up_port, base_port, gw_port = free_port(), free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    started: list[Server] = []
    try:
        started.append(start("upstream", [sys.executable, str(BENCH / "upstream.py"), "--port", str(up_port)],
                             CLIENT_CORE, logdir, upstream_url))
        baseline = start("baseline", [sys.executable, str(BENCH / "baseline.py"), "--upstream", upstream_url,
                                      "--port", str(base_port)], PROXY_CORE, logdir, f"http://127.0.0.1:{base_port}")
        started.append(baseline)
        cmd = gateway_command(args.gateway_cmd, logdir, "dragoman", gw_port, up_port)
        gateway = start("dragoman", cmd, PROXY_CORE, logdir, f"http://127.0.0.1:{gw_port}")
        started.append(gateway)
        for server in (baseline, gateway):
            check_answers(server.url)
        paired_round(baseline, gateway, args.stream, args.connections, 3.0)  # warm-up
        ratios = []
        for rnd in range(args.rounds):
            base_us, gw_us = paired_round(baseline, gateway, args.stream, args.connections, args.duration)
            ratios.append(base_us / gw_us)
            print(f"round {rnd + 1}: baseline {base_us:.0f} us/req, dragoman {gw_us:.0f} us/req, "
                  f"ratio {ratios[-1]:.3f}", flush=True)
        mode = "streaming" if args.stream else "non-streaming"
        print(f"{mode}: baseline/dragoman CPU per request, median of {args.rounds}: {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    finally:
        for server in reversed(started):
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
