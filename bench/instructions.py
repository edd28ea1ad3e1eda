"""Instructions per request under callgrind: a cost figure the machine's noise cannot move.

Times on a shared VM drift by a few percent between sittings, more than many single changes save.
Here the bare proxy and dragoman each run under ``valgrind --tool=callgrind`` (about 50x slower),
serve a warm-up, have their counters zeroed, serve exactly ``--requests`` requests and dump: the
instructions executed per request (all threads) repeat within about 1% whatever else the machine
does. Instructions are not time (cache misses and the kernel's share are not in them), so ``run.py``
and ``paired.py`` stay the judges of the targets; this is for comparing builds. Each
``--gateway-cmd`` (repeatable, as in ``run.py``) is measured against the same baseline.

Run from the repo root: ``python bench/instructions.py [--requests 1000] [--stream]``
(about 2 minutes; needs valgrind). With ``--stream`` each figure is also given per event: the
benchmark's upstream streams ``STREAM_EVENTS`` SSE events per answer (``upstream.py``), and the
bare proxy relays them as they came while dragoman decodes, observes and encodes each one.
``--keep`` leaves the callgrind dumps for ``callgrind_annotate`` and prints where they are.
``--responses`` also measures each gateway's Responses API (``POST /v1/responses``, the same
request in that shape) against the same chat upstream, beside its ``/v1/chat/completions``: what
the Responses translation costs on top.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from loadgen import responses_body
from run import (
    BENCH,
    EXPECTED_TEXT,
    GATEWAY_CMD,
    Server,
    check_answers,
    free_port,
    gateway_command,
    loadgen_cmd,
    start,
)
from upstream import STREAM_EVENTS


def callgrind(cmd: list[str], out: Path) -> list[str]:
    """``cmd`` under callgrind; a leading ``env A=B`` stays outside (callgrind would follow no exec)."""
    prefix: list[str] = []
    if cmd and cmd[0] == "env":
        args = cmd[1:]
        n = next((i for i, arg in enumerate(args) if "=" not in arg), len(args))
        prefix, cmd = ["env", *args[:n]], args[n:]
    return [*prefix, "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *cmd]


def serve(server: Server, *, stream: bool, requests: int, connections: int, api: str = "chat") -> None:
    cmd = loadgen_cmd(server.url, stream, connections, 600.0, "python", requests, api)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=900)


def instructions_per_request(server: Server, out: Path, *, stream: bool, requests: int,
                             connections: int, api: str = "chat") -> float:
    """Zero the counters after a warm-up, serve ``requests``, dump, read the dump's total."""
    serve(server, stream=stream, requests=max(100, requests // 4), connections=connections, api=api)
    pid = str(server.proc.pid)
    subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
    serve(server, stream=stream, requests=requests, connections=connections, api=api)
    subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    dumps = sorted(out.parent.glob(f"{out.name}.{pid}.*"), key=lambda p: p.stat().st_mtime)
    for line in dumps[-1].read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1]) / requests
    raise RuntimeError(f"no summary line in {dumps[-1]}")


def check_responses_answer(url: str) -> None:
    """One whole Responses API answer through the gateway, checked for the upstream's exact text."""
    req = urllib.request.Request(url + "/v1/responses", data=responses_body("up/m", False),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        answer = json.loads(resp.read())
    text = "".join(part["text"] for item in answer["output"] if item["type"] == "message"
                   for part in item["content"])
    if text != EXPECTED_TEXT:
        raise RuntimeError(f"{url}/v1/responses: unexpected answer {text!r}")


def measured(name: str, cmd: list[str], port: int, logdir: Path, *, stream: bool, requests: int,
             connections: int, api: str = "chat") -> float:
    """``cmd`` started under callgrind, checked, measured and stopped."""
    server = start(name, callgrind(cmd, logdir / name), None, logdir, f"http://127.0.0.1:{port}", ready_within=900)
    try:
        check_answers(server.url)
        if api == "responses":
            check_responses_answer(server.url)
        return instructions_per_request(server, logdir / name, stream=stream, requests=requests,
                                        connections=connections, api=api)
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the callgrind dumps (for callgrind_annotate)")
    parser.add_argument("--responses", action="store_true",
                        help="also measure each gateway's POST /v1/responses")
    parser.add_argument("--gateway-cmd", action="append",
                        help=f"command template (repeatable); default {GATEWAY_CMD!r}")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    logdir = Path(tempfile.mkdtemp(prefix="dragoman-instructions-"))
    up_port, base_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    measure = {"stream": args.stream, "requests": args.requests, "connections": args.connections}
    with contextlib.ExitStack() as running:
        upstream = start("upstream", [sys.executable, str(BENCH / "upstream.py"), "--port", str(up_port)],
                         None, logdir, upstream_url)
        running.callback(upstream.stop)
        base_cmd = [sys.executable, str(BENCH / "baseline.py"), "--upstream", upstream_url, "--port", str(base_port)]
        base = measured("baseline", base_cmd, base_port, logdir, **measure)
        print(f"baseline: {base / 1e3:,.0f} k instructions/request{per_event(base, args.stream)}", flush=True)
        for n, template in enumerate(args.gateway_cmd or [GATEWAY_CMD]):
            port = free_port()
            cost = measured(f"dragoman{n}", gateway_command(template, logdir, f"dragoman{n}", port, up_port), port,
                            logdir, **measure)
            print(f"dragoman{n}: {cost / 1e3:,.0f} k instructions/request{per_event(cost, args.stream)}, "
                  f"dragoman/baseline {cost / base:.2f}x, baseline/dragoman {base / cost:.3f}  ({template})",
                  flush=True)
            if args.responses:
                port = free_port()
                name = f"dragoman{n}-responses"
                cost_r = measured(name, gateway_command(template, logdir, name, port, up_port), port, logdir,
                                  **measure, api="responses")
                print(f"dragoman{n} /v1/responses: {cost_r / 1e3:,.0f} k instructions/request"
                      f"{per_event(cost_r, args.stream)}, "
                      f"{cost_r / cost:.3f}x its /v1/chat/completions", flush=True)
    if args.keep:
        print(f"callgrind dumps: {logdir}", flush=True)
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    return 0


def per_event(cost: float, stream: bool) -> str:
    """`` (k per event)`` for a streamed figure: the answer's instructions over its SSE events."""
    return f" ({cost / STREAM_EVENTS / 1e3:,.1f} k/event over {STREAM_EVENTS} events)" if stream else ""


if __name__ == "__main__":
    sys.exit(main())
