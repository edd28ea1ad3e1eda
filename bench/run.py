"""One benchmark run: direct upstream vs bare pass-through baseline vs dragoman, in the same run.

Starts the static upstream, the baseline proxy and dragoman as subprocesses, warms them up, then for
non-streaming and streaming chat measures requests/s and p50/p99 at saturation (32 connections) and the
p50 at 1 connection (sequential requests), from which "added latency" = p50(proxy) - p50(direct): at
saturation the difference would be queueing, not the gateway's cost. Rounds interleave the targets so
drift on a shared machine hits them alike; medians over rounds are reported. Then a fresh dragoman serves
the RSS soak (100k non-streaming requests, RSS sampled at the 50k and 100k marks). Prints a table and
PASS/FAIL against the targets and writes ``bench/results.json``.

Run from the repo root: ``python bench/run.py`` (about 7 minutes) or ``python bench/run.py --quick``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from loadgen import LoadResult, chat_body

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MB = 1_000_000
TARGETS = ("direct", "baseline", "dragoman")
MODES = ("non-stream", "stream")
EXPECTED_TEXT = "The quick brown fox jumps over the lazy dog."

# The targets.
MIN_RPS_RATIO = 0.50
MAX_ADDED_P50_MS = 1.0
MAX_RSS_MB = 150.0
MAX_RSS_GROWTH_MB = 2.0  # "no growth": 2 MB over 50k requests catches leaks of 40 bytes/request and up

GATEWAY_CONFIG = """\
server: {{host: 127.0.0.1, port: {port}}}
backends:
  - name: up
    type: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    api_key: dummy
    models: ["*"]
"""


@dataclass
class Settings:
    duration: float
    low_duration: float
    warmup: float
    rounds: int
    connections: int
    soak_requests: int
    engine: str
    pin: bool
    gateway_cmd: str
    skip_dragoman: bool
    profile: bool
    out: Path


@dataclass
class Server:
    """A subprocess we started, with its log file; stopped by its own pid only."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class Run:
    """Everything measured, keyed mode -> target -> list of per-round results."""

    saturated: dict[str, dict[str, list[LoadResult]]] = field(default_factory=dict)
    sequential: dict[str, dict[str, list[LoadResult]]] = field(default_factory=dict)
    rss: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]


GATEWAY_CMD = "{python} -m dragoman serve --config {config} --host {host} --port {port}"


def gateway_command(template: str, logdir: Path, name: str, port: int, upstream_port: int) -> list[str]:
    """The command a ``--gateway-cmd`` template gives, with the benchmark's config written for it."""
    config = logdir / f"{name}.yaml"
    config.write_text(GATEWAY_CONFIG.format(port=port, upstream_port=upstream_port))
    return template.format(python=sys.executable, config=config, host="127.0.0.1", port=port,
                           upstream=f"http://127.0.0.1:{upstream_port}", bench=BENCH).split()


def start(name: str, cmd: list[str], cpu: int | None, logdir: Path, url: str, ready_within: float = 30.0) -> Server:
    log = logdir / f"{name}.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with log.open("wb") as out:
        proc = subprocess.Popen(pinned(cmd, cpu), stdout=out, stderr=subprocess.STDOUT, cwd=logdir, env=env)
    server = Server(name, proc, log, url)
    deadline = time.monotonic() + ready_within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{server.tail()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{name} not ready after {ready_within:g} s:\n{server.tail()}")


def check_answers(url: str) -> None:
    """One request of each kind through the target, checked for the upstream's exact text."""
    for stream in (False, True):
        req = urllib.request.Request(url + "/v1/chat/completions", data=chat_body("up/m", stream),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        if stream:
            frames = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
            if not frames or frames[-1] != "[DONE]":
                raise RuntimeError(f"{url}: stream did not end with [DONE]: {raw[-300:]!r}")
            text = "".join(choice["delta"].get("content") or "" for frame in frames[:-1]
                           for choice in json.loads(frame).get("choices", []))
        else:
            text = json.loads(raw)["choices"][0]["message"]["content"]
        if text != EXPECTED_TEXT:
            raise RuntimeError(f"{url}: unexpected answer {text!r} (stream={stream})")


def loadgen_cmd(url: str, stream: bool, connections: int, duration: float, engine: str,
                requests: int | None = None, api: str = "chat") -> list[str]:
    """``loadgen.py`` against ``url``'s chat endpoint (or, with ``api="responses"``, its Responses
    API endpoint) with the benchmark's model."""
    path = "/v1/responses" if api == "responses" else "/v1/chat/completions"
    cmd = [sys.executable, str(BENCH / "loadgen.py"), url + path, "--engine", engine, "--api", api,
           "-c", str(connections), "-d", str(duration), "--model", "up/m"]
    if stream:
        cmd.append("--stream")
    if requests is not None:
        cmd += ["-n", str(requests)]
    return cmd


def load(settings: Settings, url: str, stream: bool, connections: int, duration: float,
         requests: int | None = None, cpu: int = 1, engine: str | None = None) -> LoadResult:
    """One loadgen subprocess, on ``cpu`` when pinning (the proxies' core only for direct runs)."""
    cmd = loadgen_cmd(url, stream, connections, duration, engine or settings.engine, requests)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(pinned(cmd, cpu if settings.pin else None), capture_output=True, text=True,
                         check=False, timeout=duration + 120 if requests is None else 3600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    result = LoadResult(**json.loads(out.stdout.strip().splitlines()[-1]))
    # The load generator shares the machine's cores with what it loads: its CPU per request says how much.
    spent = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return replace(result, loadgen_cpu_us_per_req=spent / max(result.requests, 1) * 1e6)


def proc_tree(pid: int) -> list[int]:
    pids = [pid]
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            pids += proc_tree(int(child))
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process tree (all threads) so far."""
    ticks = 0
    for one in proc_tree(pid):
        fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def timed_load(settings: Settings, server: Server, stream: bool, connections: int, duration: float,
               cpu: int) -> LoadResult:
    """A load run that also charges the server's CPU time to each request: on a shared machine
    CPU per request is far steadier than requests/s, which move with whatever else runs."""
    before = cpu_seconds(server.proc.pid)
    res = load(settings, server.url, stream, connections, duration, cpu=cpu)
    spent = cpu_seconds(server.proc.pid) - before
    return replace(res, server_cpu_us_per_req=spent / max(res.requests, 1) * 1e6)


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) summed over the process and its children, in MB."""
    totals = {"rss_mb": 0.0, "peak_mb": 0.0}
    for one in proc_tree(pid):
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                totals["rss_mb" if key == "VmRSS" else "peak_mb"] += int(value.split()[0]) * 1024 / MB
    return totals


def upstream_calls(upstream: Server) -> int:
    with urllib.request.urlopen(upstream.url + "/stats", timeout=5) as resp:
        counts: dict[str, int] = json.loads(resp.read())
    return counts.get("POST /v1/chat/completions", 0)


def soak(settings: Settings, gateway: Server, upstream: Server) -> dict[str, Any]:
    """Exact request counts through a fresh gateway, memory sampled at the half and full marks.

    The python load generator runs the soak because it stops at an exact count (wrk only runs for a
    time); the rate of the soak does not matter, only the count."""
    samples: list[dict[str, Any]] = [{"requests": 0, **memory_mb(gateway.proc.pid)}]
    served, errors, calls = 0, 0, upstream_calls(upstream)
    for mark in (settings.soak_requests // 2, settings.soak_requests):
        res = load(settings, gateway.url, False, settings.connections, 3600.0, mark - served, engine="python")
        served += res.requests
        errors += res.errors
        samples.append({"requests": served, "rps": res.rps, **memory_mb(gateway.proc.pid)})
    return {"samples": samples, "errors": errors,
            "growth_mb": samples[-1]["rss_mb"] - samples[-2]["rss_mb"],
            "upstream_calls_per_request": (upstream_calls(upstream) - calls) / max(served, 1)}


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU-seconds per thread (``tid name``) of one process."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        out[f"{tid} {name}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def profile(settings: Settings, gateway: Server, logdir: Path) -> dict[str, Any]:
    """py-spy on the gateway's main thread during one saturated run per mode.

    Only the event-loop thread is ranked: py-spy counts helper threads blocked in ``queue.get``
    (aiosqlite's) as busy, so their share comes from the kernel's per-thread CPU time instead."""
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        return {"error": "py-spy not installed (pip install py-spy)"}
    report: dict[str, Any] = {}
    for mode in MODES:
        raw = BENCH / "profiles" / f"{mode}.txt"
        raw.parent.mkdir(exist_ok=True)
        duration = max(2, round(settings.duration))
        spy = subprocess.Popen(pinned([pyspy, "record", "--pid", str(gateway.proc.pid), "--duration",
                                       str(duration), "--rate", "200", "--nonblocking", "--threads",
                                       "--format", "raw", "-o", str(raw)], 1 if settings.pin else None),
                               stdout=subprocess.DEVNULL, stderr=(logdir / "py-spy.log").open("ab"))
        time.sleep(0.5)
        before = thread_cpu(gateway.proc.pid)
        load(settings, gateway.url, mode == "stream", settings.connections, duration)
        after = thread_cpu(gateway.proc.pid)
        spy.wait(timeout=60)
        spent = {k: after[k] - before.get(k, 0.0) for k in after}
        total = sum(spent.values()) or 1.0
        threads = sorted(((k, round(100 * v / total, 1)) for k, v in spent.items() if v > 0),
                         key=lambda kv: -kv[1])
        report[mode] = {"file": str(raw.relative_to(REPO)), "thread_cpu_share": threads,
                        **top_frames(raw)}
    return report


def top_frames(raw: Path, limit: int = 12) -> dict[str, list[tuple[str, float]]]:
    """From py-spy's collapsed stacks of the main thread: self-time share per package and per
    function, and inclusive share per dragoman function (its own code, callees included)."""
    by_package: dict[str, int] = {}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    if not raw.exists():
        return {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[0].startswith("thread ("):
            if "MainThread" not in frames[0]:
                continue
            frames = frames[1:]
        if not frames:
            continue
        n = int(count)
        total += n
        frames = [frame.rsplit(":", 1)[0] + ")" if ":" in frame else frame for frame in frames]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        path = frames[-1].rpartition("(")[2].rstrip(")").split("/")
        package = "/".join(path[:2]) if path[0] == "dragoman" else path[0]
        by_package[package] = by_package.get(package, 0) + n
        for frame in set(frames):
            if "dragoman/" in frame and "dragoman/cli.py" not in frame and "dragoman/__main__" not in frame:
                inclusive[frame] = inclusive.get(frame, 0) + n

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
        return [(name, round(100 * n / max(total, 1), 1)) for name, n in top]

    return {"self_by_package": ranked(by_package), "self": ranked(own), "dragoman_inclusive": ranked(inclusive)}


def median(results: list[LoadResult], key: Callable[[LoadResult], float]) -> float:
    return statistics.median(key(r) for r in results) if results else math.nan


def summarise(run: Run, targets: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for mode in MODES:
        rows: dict[str, Any] = {}
        for target in targets:
            sat, seq = run.saturated[mode][target], run.sequential[mode][target]
            rows[target] = {
                "rps": median(sat, lambda r: r.rps), "p50_ms": median(sat, lambda r: r.p50_ms),
                "p99_ms": median(sat, lambda r: r.p99_ms),
                "cpu_us_per_req": median(sat, lambda r: r.server_cpu_us_per_req),
                "seq_p50_ms": median(seq, lambda r: r.p50_ms),
                "seq_p99_ms": median(seq, lambda r: r.p99_ms),
                "errors": sum(r.errors for r in sat + seq),
            }
            if target != "direct":
                direct = run.sequential[mode]["direct"]
                rows[target]["added_p50_ms"] = statistics.median(
                    a.p50_ms - d.p50_ms for a, d in zip(seq, direct, strict=True))
        if "dragoman" in targets:
            rows["dragoman"]["over_baseline_p50_ms"] = statistics.median(
                g.p50_ms - b.p50_ms for g, b in zip(run.sequential[mode]["dragoman"],
                                                    run.sequential[mode]["baseline"], strict=True))
            pairs = list(zip(run.saturated[mode]["dragoman"], run.saturated[mode]["baseline"], strict=True))
            rows["rps_ratio"] = statistics.median(g.rps / b.rps for g, b in pairs)
            rows["cpu_ratio"] = statistics.median(
                b.server_cpu_us_per_req / g.server_cpu_us_per_req for g, b in pairs)
        summary[mode] = rows
    return summary


def checks(summary: dict[str, Any], rss: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(verdict, what, figure) for each target of the issue."""
    out: list[tuple[str, str, str]] = []

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    if "rps_ratio" not in summary["non-stream"]:
        return [("SKIP", "dragoman targets", "dragoman was not measured")]
    ratio = summary["non-stream"]["rps_ratio"]
    out.append((verdict(ratio >= MIN_RPS_RATIO), "non-stream req/s dragoman/baseline",
                f"{ratio:.2f} >= {MIN_RPS_RATIO:.2f}"))
    for mode in MODES:
        added = summary[mode]["dragoman"]["added_p50_ms"]
        out.append((verdict(added <= MAX_ADDED_P50_MS), f"{mode} p50 added latency (1 connection)",
                    f"{added:.3f} ms <= {MAX_ADDED_P50_MS:.1f} ms"))
    if "samples" in rss:
        last = rss["samples"][-1]
        out.append((verdict(last["rss_mb"] <= MAX_RSS_MB), f"RSS after {last['requests']:,} requests",
                    f"{last['rss_mb']:.1f} MB <= {MAX_RSS_MB:.0f} MB"))
        growth = rss["growth_mb"]
        out.append((verdict(growth <= MAX_RSS_GROWTH_MB),
                    f"RSS growth {rss['samples'][-2]['requests']:,} -> {last['requests']:,} requests",
                    f"{growth:+.1f} MB <= {MAX_RSS_GROWTH_MB:.1f} MB"))
        if rss.get("errors"):
            out.append(("FAIL", "soak errors", str(rss["errors"])))
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, steal) CPU-seconds of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def own_cpu() -> float:
    """CPU-seconds of this script and every descendant it has reaped (servers, load generators)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def foreign_load(start: tuple[float, float, float, float], end: tuple[float, float, float, float]) -> dict[str, float]:
    """How much of the machine other processes took during the run: the noise figure."""
    (busy0, steal0, own0, wall0), (busy1, steal1, own1, wall1) = start, end
    wall = max(wall1 - wall0, 1e-9)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    other = max(0.0, (busy1 - busy0) - (own1 - own0))
    return {"other_cpus": round(other / wall, 2), "steal_cpus": round((steal1 - steal0) / wall, 2),
            "share_of_machine": round(other / wall / (os.cpu_count() or cpus), 3)}


def machine(settings: Settings) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    wrk = shutil.which("wrk")
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "loadavg_start": os.getloadavg(), "wrk": wrk is not None,
            "pinning": "proxies on cpu0; upstream, loadgen and this script on cpu1" if settings.pin else "none"}


def print_report(settings: Settings, info: dict[str, Any], summary: dict[str, Any],
                 rss: dict[str, Any], verdicts: list[tuple[str, str, str]]) -> None:
    print(f"\n{info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, load generator "
          f"{'wrk' if info['wrk'] and settings.engine != 'python' else 'python'}, pinning: {info['pinning']}")
    other = info["foreign_load"]
    print(f"other processes on the machine during the run: {other['other_cpus']:.2f} CPUs on average "
          f"({100 * other['share_of_machine']:.0f}% of it), hypervisor steal {other['steal_cpus']:.2f} CPUs"
          + ("  << busy machine: absolute figures are unreliable, ratios less so" if other["share_of_machine"]
             > 0.1 else ""))
    print(f"{settings.rounds} round(s); saturated: {settings.connections} connections x {settings.duration:g} s; "
          f"sequential: 1 connection x {settings.low_duration:g} s; medians over rounds\n")
    head = (f"{'mode':<11}{'target':<10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>11}  |"
            f"{'1-conn p50':>11}{'added ms':>10}{'errors':>8}")
    print(head)
    print("-" * len(head))
    for mode in MODES:
        for i, (target, row) in enumerate((t, r) for t, r in summary[mode].items() if t in TARGETS):
            added = f"{row['added_p50_ms']:+.3f}" if "added_p50_ms" in row else "-"
            print(f"{mode if i == 0 else '':<11}{target:<10}{row['rps']:>9.0f}{row['p50_ms']:>9.2f}"
                  f"{row['p99_ms']:>9.2f}{row['cpu_us_per_req']:>11.0f}  |{row['seq_p50_ms']:>11.3f}{added:>10}"
                  f"{row['errors']:>8}")
    if "rps_ratio" in summary["non-stream"]:
        print("\ndragoman / baseline req/s: " + ", ".join(
            f"{mode} {summary[mode]['rps_ratio']:.2f}" for mode in MODES)
              + "  (from CPU per request, steadier on a shared machine: " + ", ".join(
            f"{mode} {summary[mode]['cpu_ratio']:.2f}" for mode in MODES) + ")")
        print("dragoman's 1-connection p50 over the baseline's (its own work): " + ", ".join(
            f"{mode} {summary[mode]['dragoman']['over_baseline_p50_ms']:+.3f} ms" for mode in MODES))
    for name in ("baseline", "dragoman"):
        if name in rss.get("after_runs", {}):
            mem = rss["after_runs"][name]
            print(f"{name} memory after the runs above: RSS {mem['rss_mb']:.1f} MB, peak {mem['peak_mb']:.1f} MB")
    if "samples" in rss:
        marks = ", ".join(f"{s['requests']:,} req: {s['rss_mb']:.1f} MB" for s in rss["samples"])
        print(f"dragoman soak RSS ({marks}); peak {rss['samples'][-1]['peak_mb']:.1f} MB; "
              f"errors {rss['errors']}; upstream calls per request {rss['upstream_calls_per_request']:.3f}")
    print("\nchecks:")
    for mark, what, figure in verdicts:
        print(f"  {mark}  {what}: {figure}")


def print_profile(report: dict[str, Any]) -> None:
    for mode, found in report.items():
        if not isinstance(found, dict) or "self" not in found:
            print(f"\nprofile {mode}: {found}")
            continue
        print(f"\nprofile, {mode} (py-spy, {found['file']}); CPU by thread: "
              + ", ".join(f"{name} {pct:.0f}%" for name, pct in found["thread_cpu_share"]))
        print("  main thread, self time by package (a bare file name where py-spy shortens the path):")
        for name, pct in found["self_by_package"]:
            print(f"  {pct:5.1f}%  {name}")
        print("  main thread, self time by function:")
        for name, pct in found["self"]:
            print(f"  {pct:5.1f}%  {name}")
        print("  main thread, dragoman code, inclusive:")
        for name, pct in found["dragoman_inclusive"]:
            print(f"  {pct:5.1f}%  {name}")


def measure(settings: Settings, servers: dict[str, Server], run: Run) -> None:
    """Warm-up, then rounds interleaving the targets. Direct runs put the load generator on the
    proxies' (then idle) core, so the direct path crosses cores like the client's hop to a proxy does."""
    targets = list(servers)

    def cpu(target: str) -> int:
        return 0 if target == "direct" else 1

    for mode in MODES:
        run.saturated[mode] = {t: [] for t in targets}
        run.sequential[mode] = {t: [] for t in targets}
        for target in targets:  # warm-up: connection pools, caches, allocator
            load(settings, servers[target].url, mode == "stream", settings.connections, settings.warmup,
                 cpu=cpu(target))
    for rnd in range(settings.rounds):
        for mode in MODES:
            stream = mode == "stream"
            for target in targets:
                res = timed_load(settings, servers[target], stream, settings.connections,
                                 settings.duration, cpu(target))
                run.saturated[mode][target].append(res)
                print(f"  round {rnd + 1} {mode:<10} {target:<9} {settings.connections:>3} conn: "
                      f"{res.rps:8.0f} req/s p50 {res.p50_ms:.2f} ms p99 {res.p99_ms:.2f} ms, server CPU "
                      f"{res.server_cpu_us_per_req:.0f} us/req, load generator CPU "
                      f"{res.loadgen_cpu_us_per_req:.0f} us/req", flush=True)
            for target in targets:
                res = load(settings, servers[target].url, stream, 1, settings.low_duration, cpu=cpu(target))
                run.sequential[mode][target].append(res)
                print(f"  round {rnd + 1} {mode:<10} {target:<9}   1 conn: "
                      f"{res.rps:8.0f} req/s p50 {res.p50_ms:.3f} ms", flush=True)


def bench(settings: Settings, logdir: Path) -> int:
    info = machine(settings)
    start_cpu = (*machine_busy(), own_cpu(), time.monotonic())
    run = Run()
    core0, core1 = (0, 1) if settings.pin else (None, None)
    up_port, base_port, gw_port = free_port(), free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    servers: dict[str, Server] = {}
    started: list[Server] = []

    def start_gateway() -> Server:
        cmd = gateway_command(settings.gateway_cmd, logdir, "dragoman", gw_port, up_port)
        server = start("dragoman", cmd, core0, logdir, f"http://127.0.0.1:{gw_port}")
        started.append(server)
        check_answers(server.url)
        return server

    try:
        servers["direct"] = start("upstream", [sys.executable, str(BENCH / "upstream.py"), "--port",
                                               str(up_port)], core1, logdir, upstream_url)
        started.append(servers["direct"])
        servers["baseline"] = start("baseline", [sys.executable, str(BENCH / "baseline.py"), "--upstream",
                                                 upstream_url, "--port", str(base_port)], core0, logdir,
                                    f"http://127.0.0.1:{base_port}")
        started.append(servers["baseline"])
        for server in servers.values():
            check_answers(server.url)
        if not settings.skip_dragoman:
            try:
                servers["dragoman"] = start_gateway()
            except (RuntimeError, OSError) as exc:
                run.notes.append(f"dragoman not measured: {exc}")
                print(f"!! dragoman not measured: {exc}", file=sys.stderr)
        print(f"measuring {', '.join(servers)} (logs in {logdir})", flush=True)
        measure(settings, servers, run)
        run.rss["after_runs"] = {name: memory_mb(servers[name].proc.pid)
                                 for name in ("baseline", "dragoman") if name in servers}
        if "dragoman" in servers:
            if settings.profile:
                run.profile = profile(settings, servers["dragoman"], logdir)
            servers["dragoman"].stop()
            print(f"soak: {settings.soak_requests:,} non-streaming requests through a fresh dragoman",
                  flush=True)
            fresh = start_gateway()
            run.rss.update(soak(settings, fresh, servers["direct"]))
    finally:
        for server in reversed(started):
            server.stop()
    summary = summarise(run, list(servers))
    verdicts = checks(summary, run.rss)
    info["loadavg_end"] = os.getloadavg()
    info["foreign_load"] = foreign_load(start_cpu, (*machine_busy(), own_cpu(), time.monotonic()))
    print_report(settings, info, summary, run.rss, verdicts)
    print_profile(run.profile)
    for note in run.notes:
        print(f"note: {note.splitlines()[0]}")
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "summary": summary, "memory": run.rss, "profile": run.profile,
        "checks": [{"verdict": v, "what": w, "figure": f} for v, w, f in verdicts],
        "raw": {"saturated": {m: {t: [asdict(r) for r in rs] for t, rs in per.items()}
                              for m, per in run.saturated.items()},
                "sequential": {m: {t: [asdict(r) for r in rs] for t, rs in per.items()}
                               for m, per in run.sequential.items()}},
        "notes": run.notes,
    }
    settings.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {settings.out}")
    return 1 if any(v == "FAIL" for v, _, _ in verdicts) else 0


def parse_args() -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s runs, 1 round, 4k-request soak")
    parser.add_argument("--duration", type=float, help="seconds per saturated run (default 5)")
    parser.add_argument("--low-duration", type=float, help="seconds per 1-connection run (default 2)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds, medians reported (default 6)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--soak-requests", type=int, help="default 100000")
    parser.add_argument("--engine", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--skip-dragoman", action="store_true", help="upstream and baseline only")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway (bench/profiles/*.txt)")
    parser.add_argument("--gateway-cmd", default=GATEWAY_CMD,
                        help="command template for the gateway; fields: python config host port upstream bench")
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    args = parser.parse_args()
    quick = args.quick

    def pick(value: Any, full: Any, fast: Any) -> Any:
        return value if value is not None else (fast if quick else full)

    can_pin = not args.no_pin and shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2
    return Settings(duration=pick(args.duration, 5.0, 1.0), low_duration=pick(args.low_duration, 2.0, 1.0),
                    warmup=1.0 if quick else 2.0, rounds=pick(args.rounds, 6, 1),
                    connections=args.connections, soak_requests=pick(args.soak_requests, 100_000, 4_000),
                    engine=args.engine, pin=can_pin, gateway_cmd=args.gateway_cmd,
                    skip_dragoman=args.skip_dragoman, profile=args.profile, out=args.out)


def main() -> int:
    settings = parse_args()
    if settings.pin:
        os.sched_setaffinity(0, {1})  # keep this script off the proxies' core
    with tempfile.TemporaryDirectory(prefix="dragoman-bench-") as tmp:
        return bench(settings, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
