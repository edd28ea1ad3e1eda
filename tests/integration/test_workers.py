"""``dragoman serve --workers 2``: real worker processes on one port, over real HTTP.

Each request opens its own connection, so the kernel hands requests to both workers (a pooled
connection would stay with one). Usage is read from the SQLite file after the supervisor is
stopped: every request must be there exactly once, also the ones still queued (or still being
answered) when SIGTERM came.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_upstream import FakeOpenAI
from tests.processes import Running, clean_environment, dragoman_process, run_dragoman
from tests.servers import ServerThread
from tests.services import REDIS_MISSING, ensure_redis

pytestmark = pytest.mark.redis

ADMIN_PASSWORD = "workers-admin-password-1"
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def redis_url() -> str:
    url = ensure_redis()
    if url is None:
        pytest.skip(REDIS_MISSING)
    return url


def write_config(folder: Path, upstream: ServerThread, redis_url: str | None, *, cache_ttl: float = 60,
                 **usage: Any) -> Path:
    config: dict[str, Any] = {
        "backends": [{"name": "up", "type": "openai", "base_url": f"{upstream.url}/v1", "api_key": "upstream-secret",
                      "models": ["gpt-test", "gpt-slow"]}],
        "auth": {"mode": "keys", "cache_ttl": cache_ttl},
        "database": f"sqlite:///{folder / 'dragoman.sqlite'}",
        "server": {"settings_refresh": 0.3},
        "usage": usage,
    }
    if redis_url is not None:
        config["redis"] = redis_url
    path = folder / "dragoman.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(folder: Path, config: Path) -> Any:
    env = clean_environment(folder, DRAGOMAN_ADMIN_PASSWORD=ADMIN_PASSWORD)
    return dragoman_process("--config", str(config), "--port", "0", "--workers", "2", env=env, cwd=folder)


def admin(running: Running, method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(method, f"{running.url}/admin/api{path}", json=body, timeout=TIMEOUT,
                             headers={"authorization": f"Bearer {ADMIN_PASSWORD}"})
    assert response.status_code < 300, response.text
    return response.json()


def create_key(running: Running, **limits: Any) -> tuple[str, str]:
    created = admin(running, "POST", "/keys", {"name": f"k{time.monotonic_ns()}", **limits})
    return created["key"]["id"], created["secret"]


def worker_pids(running: Running) -> set[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{running.process.pid}/task/{running.process.pid}/children").read_text().split()
    pids = set()
    for pid in map(int, children):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.add(pid)
        except FileNotFoundError:
            continue
    return pids


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def burst(url: str, secret: str, count: int, *, model: str = "gpt-test", concurrency: int = 16) -> Counter[int]:
    """``count`` chat requests through the official SDK, each on a new connection; status counts."""
    statuses: Counter[int] = Counter()
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT) as http:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=secret, http_client=http, max_retries=0)

        async def one(i: int) -> None:
            async with gate:
                try:
                    answer = await client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=8)
                    assert answer.choices[0].message.content == f"You said: hello {i}"
                    statuses[200] += 1
                except openai.APIStatusError as exc:
                    statuses[exc.status_code] += 1

        await asyncio.gather(*(one(i) for i in range(count)))
    return statuses


def usage_rows(folder: Path, key_id: str) -> Counter[int]:
    with sqlite3.connect(folder / "dragoman.sqlite") as db:
        rows = db.execute("SELECT status FROM usage_records WHERE key_id = ?", (key_id,)).fetchall()
    return Counter(status for (status,) in rows)


def until(check: Any, what: str, timeout: float = TIMEOUT, running: Running | None = None) -> None:
    """Poll ``check()`` until it is true (the machine may be busy: no fixed sleeps); a failure
    shows what ``running`` printed."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}\n{running.output if running else ''}"
        time.sleep(0.1)


def scrape(running: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One ``/metrics`` scrape on a new connection (so any worker may answer it): sample -> value."""
    text = httpx.get(f"{running.url}/metrics", timeout=TIMEOUT, headers={
        "authorization": f"Bearer {ADMIN_PASSWORD}", "connection": "close"}).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def metrics_dir(pid: int) -> Path:
    """The private multiprocess metrics directory the supervisor gave its worker ``pid``."""
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return Path(item.split(b"=", 1)[1].decode())
    raise AssertionError(f"worker {pid} has no PROMETHEUS_MULTIPROC_DIR")


def gone(pid: int) -> bool:
    """The process has ended (a zombie not yet reaped by whoever adopted it counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def stop(running: Running, sig: signal.Signals = signal.SIGTERM) -> int:
    running.process.send_signal(sig)
    return running.process.wait(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def shared(upstream: ServerThread, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("workers")
    with start(folder, write_config(folder, upstream, redis_url)) as running:
        yield running


def test_two_workers_serve_and_account_every_request_once(
        upstream: ServerThread, fake: FakeOpenAI, redis_url: str, tmp_path: Path) -> None:
    with start(tmp_path, write_config(tmp_path, upstream, redis_url, flush_interval=30)) as running:
        assert "(2 worker processes)" in running.output
        assert running.output.count("dragoman admin password") == 0  # configured: none generated
        pids = worker_pids(running)
        assert len(pids) == 2
        before = {pid: cpu_ticks(pid) for pid in pids}
        key_id, secret = create_key(running, rpm=100_000, tpm=10_000_000, max_parallel=64)
        received = len(fake.requests)
        statuses = asyncio.run(burst(running.url, secret, 1000))
        assert statuses == Counter({200: 1000})
        assert len(fake.requests) - received == 1000
        assert worker_pids(running) == pids, running.output  # none died or was replaced
        busy = {pid: cpu_ticks(pid) - before[pid] for pid in pids}
        assert all(ticks > 0 for ticks in busy.values()), busy  # both workers answered some
        # usage is flushed every 30 s here: what is written comes from the shutdown's flush
        assert stop(running) == 0
    assert usage_rows(tmp_path, key_id) == Counter({200: 1000})
    assert "Stopping parent process" in running.output


def test_rpm_is_exact_across_workers_with_redis(shared: Running) -> None:
    _, secret = create_key(shared, rpm=25)
    statuses = asyncio.run(burst(shared.url, secret, 60, concurrency=8))
    assert statuses == Counter({200: 25, 429: 35})


def test_a_revoked_key_is_refused_by_every_worker(shared: Running) -> None:
    key_id, secret = create_key(shared)
    assert asyncio.run(burst(shared.url, secret, 40)) == Counter({200: 40})  # cached by both workers
    admin(shared, "DELETE", f"/keys/{key_id}")
    time.sleep(0.5)  # Redis pub/sub evicts it from every worker's cache (else: auth.cache_ttl)
    assert asyncio.run(burst(shared.url, secret, 40)) == Counter({401: 40})


def test_admin_changes_reach_every_worker(shared: Running, upstream: ServerThread) -> None:
    _, secret = create_key(shared)
    admin(shared, "PUT", "/aliases/team-model", {"targets": ["up/gpt-test"]})
    admin(shared, "POST", "/backends", {"name": "second", "type": "openai", "settings": {
        "base_url": f"{upstream.url}/v1", "api_key": "upstream-secret", "models": ["gpt-test"]}})
    time.sleep(1.0)  # server.settings_refresh is 0.3 s here
    assert asyncio.run(burst(shared.url, secret, 40, model="team-model")) == Counter({200: 40})
    assert asyncio.run(burst(shared.url, secret, 40, model="second/gpt-test")) == Counter({200: 40})
    admin(shared, "DELETE", "/backends/second")
    time.sleep(1.0)
    assert asyncio.run(burst(shared.url, secret, 40, model="second/gpt-test")) == Counter({404: 40})


def test_sighup_replaces_every_worker_without_failing_a_request(shared: Running) -> None:
    _, secret = create_key(shared)
    old = worker_pids(shared)
    started = shared.output.count("Application startup complete")

    async def scenario() -> Counter[int]:
        answers = asyncio.ensure_future(burst(shared.url, secret, 400, concurrency=4))
        await asyncio.sleep(0.2)
        shared.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT
        while shared.output.count("Application startup complete") < started + 2 or worker_pids(shared) & old:
            assert time.monotonic() < deadline, shared.output
            await asyncio.sleep(0.1)
        return await answers

    assert asyncio.run(scenario()) == Counter({200: 400})
    assert len(worker_pids(shared)) == 2
    assert "Received SIGHUP, restarting processes" in shared.output


def test_a_killed_worker_is_replaced(shared: Running) -> None:
    _, secret = create_key(shared)
    pids = worker_pids(shared)
    victim = min(pids)
    started = shared.output.count("Application startup complete")
    os.kill(victim, signal.SIGKILL)
    assert shared.wait_for(f"Child process [{victim}] died", timeout=TIMEOUT), shared.output
    deadline = time.monotonic() + TIMEOUT
    while shared.output.count("Application startup complete") <= started:
        assert time.monotonic() < deadline, shared.output
        time.sleep(0.1)
    replaced = worker_pids(shared)
    assert len(replaced) == 2 and victim not in replaced
    assert asyncio.run(burst(shared.url, secret, 40)) == Counter({200: 40})


def test_sigterm_finishes_requests_in_flight_and_writes_their_usage(
        upstream: ServerThread, fake: FakeOpenAI, redis_url: str, tmp_path: Path) -> None:
    with start(tmp_path, write_config(tmp_path, upstream, redis_url, flush_interval=30)) as running:
        key_id, secret = create_key(running)

        async def scenario() -> Counter[int]:
            received = len(fake.requests)
            answers = asyncio.ensure_future(burst(running.url, secret, 12, model="gpt-slow", concurrency=12))
            while len(fake.requests) < received + 12:  # every request is being answered (gpt-slow: ~0.5 s)
                await asyncio.sleep(0.01)
            running.process.send_signal(signal.SIGTERM)
            return await answers

        statuses = asyncio.run(scenario())
        assert running.process.wait(timeout=TIMEOUT) == 0
    assert statuses == Counter({200: 12})
    assert usage_rows(tmp_path, key_id) == Counter({200: 12})


def test_without_redis_limits_are_per_worker_and_a_revoke_lands_within_the_cache_ttl(
        upstream: ServerThread, tmp_path: Path) -> None:
    with start(tmp_path, write_config(tmp_path, upstream, None, cache_ttl=1)) as running:
        assert "limits are counted per worker without Redis" in running.output
        key_id, secret = create_key(running)
        assert asyncio.run(burst(running.url, secret, 40)) == Counter({200: 40})
        admin(running, "DELETE", f"/keys/{key_id}")
        time.sleep(1.5)  # auth.cache_ttl: the longest a worker that did not revoke it keeps a key cached
        assert asyncio.run(burst(running.url, secret, 40)) == Counter({401: 40})


@pytest.mark.parametrize(("changes", "problem"), [
    ({"backends": [{"name": "local", "type": "llamacpp"}]}, "server.local_models_per_worker: true"),
    ({"database": "sqlite://"}, "the database is in memory"),
])
def test_what_workers_cannot_share_is_refused(tmp_path: Path, changes: dict[str, Any], problem: str) -> None:
    config = tmp_path / "dragoman.yaml"
    config.write_text(yaml.safe_dump({"backends": [{"name": "echo", "type": "echo"}], **changes}))
    result = run_dragoman("serve", "--config", str(config), "--port", "0", "--workers", "2",
                          env=clean_environment(tmp_path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert problem in result.stderr


CHAT = (("dragoman_requests_total", (("dialect", "openai"), ("model", "gpt-test"), ("status", "200"))),
        ("dragoman_request_duration_seconds_count", (("dialect", "openai"), ("model", "gpt-test"))))


def test_metrics_report_the_whole_server_in_every_scrape(
        upstream: ServerThread, redis_url: str, tmp_path: Path) -> None:
    with start(tmp_path, write_config(tmp_path, upstream, redis_url)) as running:
        pids = worker_pids(running)
        folder = metrics_dir(min(pids))
        assert folder.is_dir() and folder.stat().st_mode & 0o077 == 0  # private to the user
        _, secret = create_key(running, rpm=100_000, tpm=10_000_000, max_parallel=64)
        before = {pid: cpu_ticks(pid) for pid in pids}
        assert asyncio.run(burst(running.url, secret, 300)) == Counter({200: 300})
        assert all(cpu_ticks(pid) > before[pid] for pid in pids)  # both workers answered some
        for _ in range(20):  # each scrape on a new connection, answered by either worker
            figures = scrape(running)
            assert [figures.get(sample) for sample in CHAT] == [300, 300]
            assert figures[("dragoman_active_streams", ())] == 0
            assert figures[("dragoman_usage_queue_depth", ())] >= 0

        # A worker that dies leaves its counts in the sums; its gauges leave them.
        victim = min(pids)
        started = running.output.count("Application startup complete")
        os.kill(victim, signal.SIGKILL)
        assert running.wait_for(f"Child process [{victim}] died", timeout=TIMEOUT), running.output
        until(lambda: running.output.count("Application startup complete") > started, "a new worker")
        until(lambda: not list(folder.glob(f"gauge_live*_{victim}.db")), "the dead worker's gauges retired")
        for _ in range(10):
            assert [scrape(running).get(sample) for sample in CHAT] == [300, 300]
        assert stop(running) == 0
    assert not folder.exists()  # removed by the supervisor


def test_workers_stop_when_the_supervisor_is_killed(upstream: ServerThread, tmp_path: Path) -> None:
    env = clean_environment(tmp_path, DRAGOMAN_ADMIN_PASSWORD=ADMIN_PASSWORD)
    with dragoman_process("--config", str(write_config(tmp_path, upstream, None)), "--port", "0", "--workers", "2",
                          env=env, cwd=tmp_path, exit_codes=(-signal.SIGKILL,)) as running:
        pids = worker_pids(running)
        assert len(pids) == 2
        folder = metrics_dir(min(pids))
        port = int(running.url.rsplit(":", 1)[1])
        assert httpx.get(f"{running.url}/health", timeout=TIMEOUT).status_code == 200
        running.process.kill()  # SIGKILL: nothing in the supervisor runs
        running.process.wait(timeout=TIMEOUT)
        until(lambda: all(gone(pid) for pid in pids), f"workers {pids} ended")
        until(lambda: port_is_free(port), f"port {port} free")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT)
    for item in folder.glob("*"):  # what only the killed supervisor would have removed
        item.unlink()
    folder.rmdir()


def port_is_free(port: int) -> bool:
    """Nothing listens on ``port``: it can be bound again (without SO_REUSEPORT, which would share it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def every_worker_lists(running: Running, name: str, present: bool, secret: str | None = None) -> bool:
    """40 ``/api/tags`` on new connections (so both workers answer some): each lists ``name`` or not."""
    headers = {"connection": "close", **({"authorization": f"Bearer {secret}"} if secret else {})}
    for _ in range(40):
        tags = httpx.get(f"{running.url}/api/tags", headers=headers, timeout=TIMEOUT).json()
        if (name in {m["name"] for m in tags["models"]}) != present:
            return False
    return True


def test_created_copied_and_deleted_models_reach_every_worker(shared: Running) -> None:
    _, secret = create_key(shared, metadata={"admin": True})
    manager = ollama.Client(host=shared.url, headers={"authorization": f"Bearer {secret}"}, timeout=TIMEOUT)
    statuses = [p.status for p in manager.create(model="team-derived", from_="up/gpt-test", stream=True)]
    assert statuses[-1] == "success"
    until(lambda: every_worker_lists(shared, "team-derived", True, secret), "team-derived listed by every worker")
    assert asyncio.run(burst(shared.url, secret, 40, model="team-derived")) == Counter({200: 40})

    manager.copy("team-derived", "team-copy")
    until(lambda: every_worker_lists(shared, "team-copy", True, secret), "team-copy listed by every worker")
    assert asyncio.run(burst(shared.url, secret, 40, model="team-copy")) == Counter({200: 40})

    manager.delete("team-derived")
    until(lambda: every_worker_lists(shared, "team-derived", False, secret), "team-derived gone from every worker")
    assert asyncio.run(burst(shared.url, secret, 40, model="team-derived")) == Counter({404: 40})
    assert asyncio.run(burst(shared.url, secret, 40, model="team-copy")) == Counter({200: 40})


def test_pulled_and_deleted_models_reach_every_worker(tmp_path: Path) -> None:
    pytest.importorskip("huggingface_hub", reason="huggingface-hub is not installed (pip install 'dragoman[local]')")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'dragoman[local]')")
    from tests.fakes.hf_hub import FakeHub
    from tests.integration.test_model_pull import REPO, tiny_gguf

    hub = FakeHub()
    hub.add(REPO, "tiny-Q4_K_M.gguf", tiny_gguf("tiny q4"))
    with ServerThread(hub.app()) as hub_server:
        config = tmp_path / "dragoman.yaml"
        config.write_text(yaml.safe_dump({
            "backends": [{"name": "local", "type": "llamacpp", "hf_endpoint": hub_server.url,
                          "hf_cache_dir": str(tmp_path / "hf"), "models": []},
                         {"name": "echo", "type": "echo", "models": ["echo"]}],
            "auth": {"mode": "none"},  # anyone may manage models, as with a local Ollama
            "database": f"sqlite:///{tmp_path / 'dragoman.sqlite'}",
            "server": {"settings_refresh": 0.3, "local_models_per_worker": True},
        }))
        with start(tmp_path, config) as running:
            manager = ollama.Client(host=running.url, timeout=TIMEOUT)
            name = f"hf.co/{REPO}:Q4_K_M"
            assert [p.status for p in manager.pull(name, stream=True)][-1] == "success"
            until(lambda: every_worker_lists(running, f"local/{name}", True), "the pulled model on every worker",
                  running=running)
            manager.delete(f"local/{name}")
            until(lambda: every_worker_lists(running, f"local/{name}", False), "the deleted model on no worker",
                  running=running)
