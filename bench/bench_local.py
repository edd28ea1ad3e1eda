"""What does dragoman cost on a local model? Tokens/s and time to first token, three ways.

- **direct**: llama-cpp-python in this process, a plain ``Llama.generate`` loop, run on the
  backend's compute thread: llama.cpp's OpenMP build slows every computation by ~40% once two
  threads of a process have computed (see ``dragoman.backends.llamacpp.compute``), so a direct
  run on the main thread next to the backend's thread would be a handicapped baseline;
- **backend**: dragoman's ``LlamaCppBackend.stream`` in this process (compute thread, asyncio queue,
  canonical events), no HTTP;
- **gateway**: ``python -m dragoman serve`` on a free loopback port, streaming
  ``POST /v1/chat/completions`` read chunk by chunk with httpx.

All three use the same GGUF file (the built-in Gemma 3 270M unless ``--model-path``), the same
rendered prompt, greedy sampling, the same ``max_tokens``, context and thread count, and no prompt
cache (each run evaluates the whole prompt), so they do the same work. Rounds interleave the targets
so drift on a shared machine hits all alike; medians over rounds are reported.

Decode rate = (tokens - 1) / (time of last token - time of first token); TTFT = first token - send.
On a shared machine the medians move with the neighbours' load, so the table also gives the best
round of each target (the least disturbed: closest to what the code itself costs) and the median of
the per-round ratios (each round runs the targets back to back), and the load average is recorded.
Run from the repo root: ``python bench/bench_local.py`` (about a minute) or ``--quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from dragoman.backends.base import BackendDeps, CallOptions  # noqa: E402
from dragoman.backends.llamacpp import LlamaCppBackend  # noqa: E402
from dragoman.backends.llamacpp.engine import load_llama  # noqa: E402
from dragoman.backends.llamacpp.models import LlamaCppSettings  # noqa: E402
from dragoman.backends.llamacpp.templates import GEMMA, ChatTemplate  # noqa: E402
from dragoman.core.events import MessageEnd, PartDelta  # noqa: E402
from dragoman.core.types import ChatRequest, Message, Role, Sampling, TextPart  # noqa: E402

MODEL = "gemma3:270m"
PROMPT = "Write a long story about a dragon who learns to speak every language."


@dataclass
class Run:
    target: str
    tokens: int
    ttft_s: float
    total_s: float

    @property
    def decode_tps(self) -> float:
        span = self.total_s - self.ttft_s
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_prompt(target: str, count: int, expected: int) -> None:
    """Every target must read exactly the prompt the direct run reads, or they do different work."""
    if count != expected:
        raise SystemExit(f"{target} evaluated {count} prompt tokens, direct {expected}: not comparable")


def request(max_tokens: int) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=[Message(Role.USER, [TextPart(PROMPT)])],
                       sampling=Sampling(temperature=0.0, max_tokens=max_tokens, seed=1), stream=True)


# ------------------------------------------------------------------------------------ targets


def run_direct(llama: Any, prompt_tokens: list[int], max_tokens: int) -> Run:
    """The fastest plain use of llama-cpp-python: ``Llama.generate`` with the same sampler settings,
    detokenizing each token, stopping at end of turn."""
    import llama_cpp

    llama.reset()
    llama.set_seed(1)
    vocab = llama._model.vocab
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    for token in llama.generate(prompt_tokens, temp=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        llama.detokenize([token])
        tokens += 1
        if tokens == 1:
            first = time.perf_counter()
        if tokens >= max_tokens:
            break
    end = time.perf_counter()
    return Run("direct", tokens, first - started, end - started)


async def run_backend(backend: LlamaCppBackend, max_tokens: int, expected_prompt: int) -> Run:
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    async for event in backend.stream(request(max_tokens), MODEL, CallOptions()):
        if isinstance(event, PartDelta) and not first:
            first = time.perf_counter()
        elif isinstance(event, MessageEnd):
            tokens = event.usage.completion_tokens
            check_prompt("backend", event.usage.prompt_tokens, expected_prompt)
    end = time.perf_counter()
    return Run("backend", tokens, first - started, end - started)


def run_gateway(client: httpx.Client, url: str, max_tokens: int, expected_prompt: int) -> Run:
    body = {"model": f"local/{MODEL}", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": max_tokens,
            "seed": 1}
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
                check_prompt("gateway", chunk["usage"]["prompt_tokens"], expected_prompt)
            if not first and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter()
    end = time.perf_counter()
    return Run("gateway", tokens, first - started, end - started)


class Gateway:
    """``python -m dragoman serve`` with one llamacpp backend, on a free port."""

    def __init__(self, model_path: str, n_ctx: int, threads: int, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "backends": [{"name": "local", "type": "llamacpp", "cache_prompt": False, "n_threads": threads,
                          "models": [{"name": MODEL, "path": model_path, "n_ctx": n_ctx}]}],
            "database": f"sqlite:///{workdir / 'bench.db'}",
        }
        self.config = workdir / "dragoman.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = (workdir / "gateway.log").open("w")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Gateway:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dragoman", "serve", "--config", str(self.config), "--host", "127.0.0.1",
             "--port", str(self.port)], cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dragoman exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("dragoman did not start within 60s")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------------------- main


def summarize(runs: list[Run]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    direct = [r for r in runs if r.target == "direct"]
    for target in dict.fromkeys(r.target for r in runs):
        mine = [r for r in runs if r.target == target]
        out[target] = {
            "tokens": statistics.median(r.tokens for r in mine),
            "decode_tps": statistics.median(r.decode_tps for r in mine),
            "ttft_ms": statistics.median(r.ttft_s for r in mine) * 1000,
            "total_s": statistics.median(r.total_s for r in mine),
            "best_decode_tps": max(r.decode_tps for r in mine),
            "best_ttft_ms": min(r.ttft_s for r in mine) * 1000,
            # Paired with the direct run of the same round (rounds interleave the targets).
            "round_ratio": statistics.median(r.decode_tps / d.decode_tps for r, d in zip(mine, direct, strict=True)
                                             if d.decode_tps),
            "round_ttft_ms": statistics.median((r.ttft_s - d.ttft_s) * 1000 for r, d in zip(mine, direct,
                                                                                          strict=True)),
        }
    return out


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model-path", default="builtin:gemma3-270m",
                        help="a GGUF path or builtin:gemma3-270m (the prompt uses the Gemma template)")
    parser.add_argument("--skip-gateway", action="store_true", help="direct and in-process backend only")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 32 tokens")
    parser.add_argument("--out", type=Path, default=BENCH / "results_local.json")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.max_tokens = 2, 32


    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dragoman-bench-local-") as tmp:
        workdir = Path(tmp)
        backend = LlamaCppBackend("local", LlamaCppSettings.model_validate({
            "cache_prompt": False, "n_threads": args.threads,
            "models": [{"name": MODEL, "path": args.model_path, "n_ctx": args.n_ctx}]}), BackendDeps(workdir))
        slot = backend._slots[MODEL]
        model_file = slot.file(download=True)
        assert model_file is not None
        # Loaded as the backend loads it (on AMX CPUs without repacked weights, which crash there).
        llama = load_llama(MODEL, model_file.path, n_ctx=args.n_ctx, n_threads=args.threads, n_batch=512)
        template = ChatTemplate(MODEL, GEMMA.source, GEMMA)
        prompt_text = template.render(request(args.max_tokens), bos_token="<bos>", eos_token="", with_tools=False)
        prompt_tokens = llama.tokenize(prompt_text.encode(), add_bos=False, special=True)

        runs: list[Run] = []
        gateway = None if args.skip_gateway else Gateway(args.model_path, args.n_ctx, args.threads, workdir)
        client = httpx.Client(timeout=120)
        try:
            if gateway is not None:
                gateway.__enter__()
            # Warm-up: load every instance and touch the weights once.
            on_compute = backend._compute.call  # the thread the backend computes on
            on_compute(partial(run_direct, llama, prompt_tokens, 4)).result()
            await run_backend(backend, 4, len(prompt_tokens))
            if gateway is not None:
                run_gateway(client, gateway.url, 4, len(prompt_tokens))
            for round_no in range(args.rounds):
                round_runs = [on_compute(partial(run_direct, llama, prompt_tokens, args.max_tokens)).result(),
                              await run_backend(backend, args.max_tokens, len(prompt_tokens))]
                if gateway is not None:
                    round_runs.append(run_gateway(client, gateway.url, args.max_tokens, len(prompt_tokens)))
                runs += round_runs
                print(f"round {round_no + 1}: " + ", ".join(
                    f"{r.target} {r.tokens} tok {r.decode_tps:.1f} tok/s ttft {r.ttft_s * 1000:.0f} ms"
                    for r in round_runs), flush=True)
        finally:
            client.close()
            if gateway is not None:
                gateway.__exit__(None, None, None)
            await backend.aclose()
            llama.close()

    summary = summarize(runs)
    load = {"before": load_before, "after": os.getloadavg()}
    direct = summary["direct"]
    print(f"\n{'':<10}{'':>8}{'median':>31}{'best round':>22}{'per-round median':>27}")
    print(f"{'target':<10}{'tokens':>8}{'tok/s':>8}{'vs direct':>11}{'+TTFT ms':>12}"
          f"{'tok/s':>8}{'vs direct':>11}{'+TTFT ms':>10}{'vs direct':>13}{'+TTFT ms':>10}")
    for target, row in summary.items():
        ratio = row["decode_tps"] / direct["decode_tps"] if direct["decode_tps"] else 0.0
        best = row["best_decode_tps"] / direct["best_decode_tps"] if direct["best_decode_tps"] else 0.0
        print(f"{target:<10}{row['tokens']:>8.0f}{row['decode_tps']:>8.1f}{ratio:>11.1%}"
              f"{row['ttft_ms'] - direct['ttft_ms']:>+12.1f}{row['best_decode_tps']:>8.1f}{best:>11.1%}"
              f"{row['best_ttft_ms'] - direct['best_ttft_ms']:>+10.1f}{row['round_ratio']:>13.1%}"
              f"{row['round_ttft_ms']:>+10.1f}")
    print(f"direct TTFT: median {direct['ttft_ms']:.1f} ms, best {direct['best_ttft_ms']:.1f} ms; "
          f"load average before {load['before'][0]:.2f}, after {load['after'][0]:.2f}")
    args.out.write_text(json.dumps({"summary": summary, "load_average": load, "runs": [asdict(r) for r in runs],
                                    "settings": {"rounds": args.rounds, "max_tokens": args.max_tokens,
                                                 "n_ctx": args.n_ctx, "threads": args.threads,
                                                 "model_path": args.model_path, "prompt": PROMPT}}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
