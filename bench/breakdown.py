"""Where the instructions go: callgrind's count per request, apportioned to components and functions.

Callgrind counts instructions exactly but names every Python function ``_PyEval_EvalFrameDefault`` (Python
3.11 has no perf trampolines); cProfile names Python functions but measures time, which on a shared VM
also holds syscalls' kernel time and other processes' preemption. So each target (the bare proxy, then
dragoman) serves the same workload three times, with the same upstream, config and request as
``instructions.py`` (warm-up, then exactly ``--requests`` requests measured):

1. under callgrind (``--separate-threads=yes``): the instructions of the main thread (event loop and all
   request code) and of the other threads (dragoman's usage writer and SQLite), and the main thread's
   own instructions per shared object: the interpreter (with libc) and each C extension (uvloop,
   httptools, aiohttp's and multidict's C parts, orjson, pydantic-core, ...), exact;
2. under ``profiled.py opcodes``: the bytecodes each Python function executed in the main thread, a
   deterministic count;
3. under ``profiled.py cprofile``: cProfile's own and inclusive time shares and calls per request, as a
   guide to structure (what calls what, how often), not used for the figures.

The interpreter's instructions are apportioned to Python functions by their share of the bytecodes (so a
function's figure includes the C work of the builtins it calls that live in the interpreter: dict and str
operations, object creation); the C extensions' figures are exact. This assumes an average cost per
bytecode, which is why ``--ablate`` runs measure a piece switched off by instructions and print the
saving beside the apportioned estimate.

Run from the repo root: ``python bench/breakdown.py [--requests 300] [--stream] [--ablate log-off] [--keep]``
(several minutes; needs valgrind); ``--from DIR --requests N [--stream]`` reprints the tables from a
directory ``--keep`` left; ``--json FILE`` writes every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructions import callgrind, serve
from run import BENCH, GATEWAY_CONFIG, check_answers, free_port, start
from upstream import STREAM_EVENTS

# Ablations: (environment, extra config lines) that switch one piece off.
ABLATIONS: dict[str, tuple[dict[str, str], str]] = {
    "log-off": ({"DRAGOMAN_LOG_LEVEL": "warning"}, ""),
}
# The components an ablation switches off, for its apportioned estimate.
ESTIMATES: dict[str, tuple[str, ...]] = {
    "log-off": ("logging", "dragoman.request_log"),
    # a scratch copy whose UsageRecorder.record returns at once (--scratch usage-off=DIR)
    "usage-off": ("dragoman.gateway.usage_store", "sqlalchemy", "other threads"),
}


@dataclass
class Callgrind:
    """Instructions per request: main thread, other threads, main thread's own by shared object."""

    main: float
    others: float
    by_object: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.main + self.others


def target_cmd(name: str, logdir: Path, port: int, up_port: int, extra_config: str = "") -> list[str]:
    """The bare proxy's or dragoman's command (the benchmark's config), without any wrapper."""
    if name == "baseline":
        return [str(BENCH / "baseline.py"), "--upstream", f"http://127.0.0.1:{up_port}", "--port", str(port)]
    config = logdir / f"{name}.yaml"
    config.write_text(GATEWAY_CONFIG.format(port=port, upstream_port=up_port) + extra_config)
    return ["-m", "dragoman", "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]


def with_env(env: dict[str, str], cmd: list[str]) -> list[str]:
    return ["env", *(f"{k}={v}" for k, v in env.items()), *cmd] if env else cmd


def parse_callgrind(path: Path) -> tuple[int, dict[str, float]]:
    """A dump's total and its own (self) instructions per shared object."""
    names: dict[str, str] = {}
    by_object: dict[str, int] = defaultdict(int)
    total = totals = 0
    obj = ""
    after_calls = False
    for line in path.read_text(errors="replace").splitlines():
        if not line:
            continue
        head = line[0]
        if head.isdigit() or head in "+-*":
            if after_calls:
                after_calls = False
                continue
            parts = line.split()
            if len(parts) >= 2:
                by_object[obj] += int(parts[1])
        elif line.startswith("ob="):
            obj = _name(line[3:], names, "ob")
        elif line.startswith("calls="):
            after_calls = True
        elif line.startswith("summary:"):
            total = int(line.split()[1])
        elif line.startswith("totals:"):
            totals = int(line.split()[1])
        elif line.startswith("cob="):  # callee objects share the ``ob`` ids
            _name(line[4:], names, "ob")
    # ``totals`` (the sum of the cost lines) runs a few percent above ``summary`` (the counter since the
    # zeroing, which instructions.py reports): the objects are scaled to the summary.
    scale = total / totals if totals else 1.0
    return total, {obj: cost * scale for obj, cost in by_object.items()}


def _name(spec: str, names: dict[str, str], kind: str) -> str:
    """Callgrind's name compression: ``(id) name`` defines, ``(id)`` refers."""
    match = re.match(r"\((\d+)\)\s*(.*)", spec)
    if not match:
        return spec
    key = f"{kind}{match.group(1)}"
    if match.group(2):
        names[key] = match.group(2)
    return names.get(key, spec)


def object_label(path: str) -> str:
    """A shared object's short name: its package for a C extension, else what it is."""
    parts = Path(path).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    base = Path(path).name
    if "lib-dynload" in parts:
        return base.split(".")[0]
    for key, name in (("libpython", "interpreter"), ("python3", "interpreter"), ("libc.so", "libc"),
                      ("ld-linux", "libc"), ("vgpreload", "libc"), ("libm.so", "libc")):
        if key in base:
            return name
    return base or "?"


def measure_callgrind(name: str, cmd: list[str], port: int, logdir: Path, *, stream: bool, requests: int,
                      connections: int) -> Callgrind:
    """``cmd`` under callgrind with threads apart: warm-up, zero, ``requests``, dump; per request."""
    wrapped = callgrind(cmd, logdir / name)
    i = wrapped.index("--tool=callgrind")
    wrapped.insert(i + 1, "--separate-threads=yes")
    server = start(name, wrapped, None, logdir, f"http://127.0.0.1:{port}", ready_within=900)
    try:
        check_answers(server.url)
        serve(server, stream=stream, requests=max(100, requests // 4), connections=connections)
        pid = str(server.proc.pid)
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        serve(server, stream=stream, requests=requests, connections=connections)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    finally:
        server.stop()
    return read_callgrind(logdir, name, requests)


def read_callgrind(logdir: Path, name: str, requests: int) -> Callgrind:
    """The last dump of ``name``'s last run in ``logdir``, one file per thread (thread 1 is the main one)."""
    runs: dict[str, dict[int, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for path in logdir.glob(f"{name}.*"):
        match = re.fullmatch(rf"{re.escape(name)}\.(\d+)\.(\d+)-(\d+)", path.name)
        if match:
            runs[match.group(1)][int(match.group(2))].append(path)
    if not runs:
        raise RuntimeError(f"no callgrind dumps for {name} in {logdir}")
    dumps = max(runs.values(), key=lambda run: max(p.stat().st_mtime for ps in run.values() for p in ps))
    main, others = 0, 0
    by_object: dict[str, float] = defaultdict(float)
    for path in dumps[max(dumps)]:
        total, objects = parse_callgrind(path)
        if path.name.endswith("-01"):
            main = total
            for obj, cost in objects.items():
                by_object[object_label(obj)] += cost / requests
        else:
            others += total
    return Callgrind(main / requests, others / requests, dict(by_object))


def measure_profile(name: str, mode: str, cmd: list[str], port: int, logdir: Path, *, stream: bool,
                    requests: int, connections: int) -> Path:
    """``cmd`` under ``profiled.py MODE``: warm-up, SIGUSR1, ``requests``, SIGUSR2; the output's path."""
    out = logdir / f"{name}.{mode}"
    full = [sys.executable, str(BENCH / "profiled.py"), mode, str(out), *cmd]
    server = start(name, full, None, logdir, f"http://127.0.0.1:{port}", ready_within=300)
    try:
        check_answers(server.url)
        serve(server, stream=stream, requests=max(100, requests // 4), connections=connections)
        os.kill(server.proc.pid, signal.SIGUSR1)
        time.sleep(0.5)
        serve(server, stream=stream, requests=requests, connections=connections)
        os.kill(server.proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 120
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        server.stop()
    return out


@dataclass
class Profile:
    """One target's two profiles: bytecodes per function (deterministic) and cProfile's stats (time)."""

    opcodes: dict[tuple[str, int], tuple[str, int]]  # (file, line) -> (qualname, bytecodes)
    stats: dict[Any, Any]

    @classmethod
    def load(cls, opcodes: Path, stats: Path) -> Profile:
        rows = json.loads(opcodes.read_text())
        return cls({(f, line): (name, n) for f, line, name, n in rows},
                   pstats.Stats(str(stats)).stats)  # type: ignore[attr-defined]


def component(key: tuple[str, int, str]) -> str:
    """A profile entry's component: dragoman's package, a library, or the stdlib module."""
    filename, _, func = key
    if filename == "~":  # a builtin: classify by what it belongs to
        for lib in ("uvloop", "orjson", "pydantic_core", "httptools", "multidict", "yarl", "_asyncio", "sqlite3",
                    "_json", "aiohttp", "_thread", "_contextvars", "time."):
            if lib in func:
                return {"_asyncio": "asyncio", "time.": "builtins", "_thread": "threading"}.get(lib, lib)
        return "builtins"
    if filename == "<string>":
        return "dataclass-generated methods"
    parts = Path(filename).parts
    if "dragoman" in parts:
        rest = parts[len(parts) - 1 - parts[::-1].index("dragoman") + 1:]
        return ".".join(("dragoman", *rest)).removesuffix(".py")
    for lib in ("aiohttp", "uvicorn", "starlette", "pydantic", "sqlalchemy", "httptools", "yarl", "multidict",
                "anyio", "logging", "asyncio", "json", "concurrent", "threading", "queue", "dataclasses", "enum",
                "typing", "bench"):
        if lib in parts or Path(filename).stem == lib:
            return lib
    return Path(filename).stem


def label(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    if filename == "~":
        return func
    parts = Path(filename).parts
    for root in ("dragoman", "site-packages"):
        if root in parts:
            idx = len(parts) - 1 - parts[::-1].index(root)
            rel = "/".join(parts[idx + (1 if root == "site-packages" else 0):])
            return f"{rel}:{line} {func}"
    shown = "/".join(parts[-2:]) if parts and parts[-1] == "__init__.py" else Path(filename).name
    return f"{shown}:{line} {func}"


# The main thread's shared objects whose own instructions are Python code's (the interpreter, and the C
# library and loader it calls): apportioned to Python functions by their bytecodes. Every other object (a
# C extension: uvloop, httptools, orjson, pydantic-core, aiohttp's parser, ...) is a row of its own.
POOL = ("interpreter", "libc", "???")


@dataclass
class Apportioned:
    """One target's instructions per request: per Python function (own), per component, per C object."""

    functions: dict[str, float]
    components: dict[str, float]
    time_share: dict[str, tuple[float, float, float]]  # cProfile: own share, inclusive share, calls/request
    pool: float
    rates: tuple[float, float]  # interpreter instructions per bytecode: shared stack's, own code's


def apportion(cg: Callgrind, prof: Profile, requests: int, shared: tuple[float, set[str]] | None = None) -> Apportioned:
    """The interpreter's instructions spread over Python functions by bytecodes; C extensions as measured.

    ``shared``: the bare proxy's instructions per bytecode and its functions. Its process runs almost
    nothing but the shared stack (aiohttp, uvicorn, asyncio), so that rate is the stack's: the same
    functions in dragoman are charged at it, and dragoman's own code gets the rest of the interpreter's
    instructions over its bytecodes (one average rate for both would move dragoman's dearer bytecodes,
    heavy in calls and object creation, onto the stack's).
    """
    pool = sum(v for obj, v in cg.by_object.items() if obj in POOL)
    total_ops = sum(n for _, n in prof.opcodes.values()) / requests or 1.0  # bytecodes per request
    rate_shared, shared_labels = shared if shared else (pool / total_ops, set())
    names = {key: label((key[0], key[1], name)) for key, (name, _) in prof.opcodes.items()}
    shared_ops = sum(n for key, (_, n) in prof.opcodes.items() if names[key] in shared_labels) / requests
    rate_own = (pool - shared_ops * rate_shared) / max(total_ops - shared_ops, 1)
    functions: dict[str, float] = defaultdict(float)
    components: dict[str, float] = defaultdict(float)
    for (filename, line), (name, n) in prof.opcodes.items():
        cost = n / requests * (rate_shared if names[(filename, line)] in shared_labels else rate_own)
        functions[names[(filename, line)]] += cost
        components[component((filename, line, name))] += cost
    for obj, v in cg.by_object.items():
        if obj not in POOL:
            components[f"{obj} (C)"] += v
    raw = prof.stats
    timed = sum(tt for key, (_, _, tt, _, _) in raw.items() if component(key) != "uvloop") or 1.0
    time_share: dict[str, tuple[float, float, float]] = {}
    for (filename, line, func), (_, nc, tt, ct, _) in raw.items():
        if filename == "~":
            continue
        name = prof.opcodes.get((filename, line), (func, 0))[0]
        time_share[label((filename, line, name))] = (tt / timed, min(ct / timed, 1.0), nc / requests)
    return Apportioned(dict(functions), dict(components), time_share, pool, (rate_shared, rate_own))


def package(components: dict[str, float]) -> dict[str, float]:
    """Modules grouped: dragoman's by subpackage, the standard library's small modules as one row."""
    out: dict[str, float] = defaultdict(float)
    for comp, cost in components.items():
        if comp.startswith("dragoman."):
            key = ".".join(comp.split(".")[:2])
        elif comp.endswith(" (C)") or comp in ("aiohttp", "uvicorn", "starlette", "pydantic", "sqlalchemy",
                                                "yarl", "multidict", "bench", "asyncio", "logging",
                                                "dataclass-generated methods"):
            key = comp
        else:
            key = "other Python (standard library)"
        out[key] += cost
    return dict(out)


def report(mode: str, requests: int, stream: bool, base_cg: Callgrind, drag_cg: Callgrind,
           base: Apportioned, drag: Apportioned, top: int) -> dict[str, Any]:
    """Print the tables for one mode (markdown), return the figures."""
    k = 1e3
    ev = f", {STREAM_EVENTS} events each" if stream else ""
    cols = " k/event (dragoman) |" if stream else ""
    sep = "---|" if stream else ""

    def per_event(x: float) -> str:
        return f" {x / STREAM_EVENTS / k:,.1f} |" if stream else ""

    print(f"\n### {mode}: {requests} requests{ev}\n")
    print("| k instructions per request | bare proxy | dragoman |\n|---|---|---|")
    ratio = drag_cg.total / base_cg.total
    print(f"| all threads | {base_cg.total / k:,.0f} | {drag_cg.total / k:,.0f} ({ratio:.2f}x) |")
    print(f"| main thread (event loop, requests) | {base_cg.main / k:,.0f} | {drag_cg.main / k:,.0f} |")
    print(f"| other threads (usage writer, SQLite) | {base_cg.others / k:,.0f} | {drag_cg.others / k:,.0f} |")
    print(f"| main thread, interpreter + libc: apportioned by bytecodes | {base.pool / k:,.0f} | "
          f"{drag.pool / k:,.0f} |")
    print(f"| interpreter instructions per bytecode (stack's, dragoman's own) | {base.rates[0]:.0f} | "
          f"{drag.rates[0]:.0f}, {drag.rates[1]:.0f} |")
    print(f"| main thread, C extensions (exact) | {(base_cg.main - base.pool) / k:,.0f} | "
          f"{(drag_cg.main - drag.pool) / k:,.0f} |")
    print("\nBy package, k instructions per request (main thread; C extensions exact, Python by bytecodes):\n")
    print(f"| package | bare proxy | dragoman |{cols}\n|---|---|---|{sep}")
    b_pkg, d_pkg = package(base.components), package(drag.components)
    small_b = small_d = 0.0
    for pkg in sorted(set(d_pkg) | set(b_pkg), key=lambda c: -d_pkg.get(c, 0.0)):
        b, d = b_pkg.get(pkg, 0.0), d_pkg.get(pkg, 0.0)
        if max(b, d) < 2 * k:
            small_b, small_d = small_b + b, small_d + d
            continue
        print(f"| {pkg} | {b / k:,.0f} | {d / k:,.0f} |{per_event(d)}")
    print(f"| (the rest, each under 2k) | {small_b / k:,.0f} | {small_d / k:,.0f} |{per_event(small_d)}")
    print(f"| other threads (usage writer: SQLite) | {base_cg.others / k:,.0f} | {drag_cg.others / k:,.0f} |"
          f"{per_event(drag_cg.others)}")
    print(f"| **total** | {base_cg.total / k:,.0f} | {drag_cg.total / k:,.0f} |{per_event(drag_cg.total)}")
    print("\nBy module, k instructions per request (main thread):\n")
    print(f"| component | bare proxy | dragoman |{cols}\n|---|---|---|{sep}")
    comps = sorted(set(drag.components) | set(base.components), key=lambda c: -drag.components.get(c, 0.0))
    for comp in comps[:top]:
        b, d = base.components.get(comp, 0.0), drag.components.get(comp, 0.0)
        print(f"| {comp} | {b / k:,.0f} | {d / k:,.0f} |{per_event(d)}")
    rest = sum(drag.components.get(c, 0.0) for c in comps[top:])
    print(f"| (the other {max(0, len(comps) - top)}) | | {rest / k:,.0f} |{per_event(rest)}")
    print("\nTop Python functions (dragoman): own k instructions per request (bytecodes' share of the interpreter's),"
          " cProfile's own and inclusive share of time, calls per request:\n")
    print("| function | own k | bare proxy own k | time own | time incl | calls/req |\n|---|---|---|---|---|---|")
    for name, cost in sorted(drag.functions.items(), key=lambda kv: -kv[1])[:top]:
        own_t, incl_t, calls = drag.time_share.get(name, (0.0, 0.0, 0.0))
        b = base.functions.get(name, 0.0)
        print(f"| `{name}` | {cost / k:,.1f} | {b / k:,.1f} | {own_t:.1%} | {incl_t:.0%} | {calls:.1f} |")
    return {"baseline": {"callgrind": vars(base_cg), "components": base.components, "functions": base.functions},
            "dragoman": {"callgrind": vars(drag_cg), "components": drag.components, "functions": drag.functions,
                         "time_share": drag.time_share}}


def measure_all(logdir: Path, args: argparse.Namespace) -> None:
    """Every run into ``logdir``: per target its two profiles and its callgrind run, then the ablations."""
    up_port = free_port()
    measure = {"stream": args.stream, "requests": args.requests, "connections": args.connections}
    with contextlib.ExitStack() as running:
        upstream = start("upstream", [sys.executable, str(BENCH / "upstream.py"), "--port", str(up_port)],
                         None, logdir, f"http://127.0.0.1:{up_port}")
        running.callback(upstream.stop)
        for name in ("baseline", "dragoman"):
            for mode in ("opcodes", "cprofile"):
                port = free_port()
                measure_profile(f"{name}-{mode}", mode, target_cmd(name, logdir, port, up_port), port, logdir,
                                **measure)
            port = free_port()
            cg = measure_callgrind(name, [sys.executable, *target_cmd(name, logdir, port, up_port)], port, logdir,
                                   **measure)
            print(f"{name}: {cg.total / 1e3:,.0f} k instr/request", file=sys.stderr, flush=True)
        variants = [(name, *ABLATIONS[name]) for name in args.ablate]
        variants += [(name, {"PYTHONPATH": folder}, "") for name, _, folder in
                     (spec.partition("=") for spec in args.scratch)]
        for name, env, extra in variants:
            port = free_port()
            cg = measure_callgrind(f"dragoman-{name}", with_env(env, [sys.executable, *target_cmd(
                f"dragoman-{name}", logdir, port, up_port, extra)]), port, logdir, **measure)
            print(f"dragoman-{name}: {cg.total / 1e3:,.0f} k instr/request", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--ablate", action="append", default=[], choices=sorted(ABLATIONS),
                        help="also measure dragoman with this piece off, by instructions (repeatable)")
    parser.add_argument("--scratch", action="append", default=[], metavar="NAME=DIR",
                        help="also measure a scratch copy of dragoman in DIR (its parent folder, with a piece "
                             "switched off) as ablation NAME (repeatable)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--keep", action="store_true", help="keep the dumps and profiles")
    parser.add_argument("--from", dest="source", type=Path,
                        help="measure nothing: report from a directory --keep left (same --requests, --stream)")
    args = parser.parse_args()
    if args.source is None and (shutil.which("valgrind") is None or shutil.which("callgrind_control") is None):
        print("needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    logdir = args.source or Path(tempfile.mkdtemp(prefix="dragoman-breakdown-"))
    if args.source is None:
        measure_all(logdir, args)
    grinds = {name: read_callgrind(logdir, name, args.requests) for name in ("baseline", "dragoman")}
    profiles = {name: Profile.load(logdir / f"{name}-opcodes.opcodes", logdir / f"{name}-cprofile.cprofile")
                for name in grinds}
    split = {"baseline": apportion(grinds["baseline"], profiles["baseline"], args.requests)}
    base_ops = sum(n for _, n in profiles["baseline"].opcodes.values()) / args.requests
    split["dragoman"] = apportion(grinds["dragoman"], profiles["dragoman"], args.requests,
                                  (split["baseline"].pool / base_ops, set(split["baseline"].functions)))
    mode = "streaming" if args.stream else "non-streaming"
    figures = {mode: report(mode, args.requests, args.stream, grinds["baseline"], grinds["dragoman"],
                            split["baseline"], split["dragoman"], args.top)}
    ablations = sorted({m.group(1) for p in logdir.glob("dragoman-*-01")
                        if (m := re.fullmatch(r"dragoman-(.+)\.\d+\.\d+-01", p.name))})
    if ablations:
        print("\nAblations (callgrind, all threads), k instructions per request:\n")
        print("| ablation | dragoman | saved | of it main thread | other threads | apportioned estimate |\n"
              "|---|---|---|---|---|---|")
    for name in ablations:
        cg = read_callgrind(logdir, f"dragoman-{name}", args.requests)
        saved = grinds["dragoman"].total - cg.total
        parts = ESTIMATES.get(name, ())
        estimate = sum(split["dragoman"].components.get(c, 0.0) for c in parts)
        if "other threads" in parts:
            estimate += grinds["dragoman"].others
        main_saved, others_saved = grinds["dragoman"].main - cg.main, grinds["dragoman"].others - cg.others
        print(f"| {name} | {cg.total / 1e3:,.0f} | {saved / 1e3:,.0f} | {main_saved / 1e3:,.0f} | "
              f"{others_saved / 1e3:,.0f} | {estimate / 1e3:,.0f} "
              f"({' + '.join(parts)}) |", flush=True)
        figures.setdefault("ablations", {})[name] = {"total": cg.total, "saved": saved, "estimate": estimate}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    if args.keep or args.source:
        print(f"\ndumps and profiles: {logdir}", file=sys.stderr)
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
