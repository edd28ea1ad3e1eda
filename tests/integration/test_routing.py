"""Routing and resilience over real HTTP, with faults injected by fake upstreams.

Two fake OpenAI upstreams (``a`` and ``b``) are two deployments; a closed port is a dead one
(backend ``dead``). The fake's model name picks the fault (tests/fakes/openai_upstream.py). The
client is the ``openai`` SDK with ``max_retries=0``, so every retry seen is dragoman's. Each
scenario checks what the client gets and how fast, what the usage observer recorded, and that
repeating it leaks no asyncio task on the gateway's loop and no socket in the process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx
import openai
import pytest

from dragoman.gateway.outcome import CallOutcome
from tests.fakes.openai_upstream import MODELS, FakeOpenAI, wait_until
from tests.servers import ServerThread, dragoman_server
from tests.services import REDIS_MISSING, ensure_redis, unique_name

FAST_COOLDOWN = {"failures": 3, "window": 30, "period": 1.5}
NO_COOLDOWN = {"failures": 1000, "window": 1, "period": 0.1}


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fake_a() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture(scope="module")
def fake_b() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture(scope="module")
def upstream_a(fake_a: FakeOpenAI) -> Iterator[ServerThread]:
    with ServerThread(fake_a.app()) as server:
        yield server


@pytest.fixture(scope="module")
def upstream_b(fake_b: FakeOpenAI) -> Iterator[ServerThread]:
    with ServerThread(fake_b.app()) as server:
        yield server


@pytest.fixture(scope="module")
def dead_port() -> int:
    """A port nothing listens on: bound, then closed."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


class Outcomes:
    """A usage observer: what the gateway recorded for each finished request."""

    def __init__(self) -> None:
        self.items: list[CallOutcome] = []
        self.lock = threading.Lock()

    def __call__(self, outcome: CallOutcome) -> None:
        with self.lock:
            self.items.append(outcome)

    def mark(self) -> int:
        return len(self.items)

    def since(self, mark: int, count: int, timeout: float = 5.0) -> list[CallOutcome]:
        """The ``count`` outcomes recorded after ``mark``, waiting for them."""
        arrived = wait_until(lambda: len(self.items) >= mark + count, timeout)
        assert arrived, f"{len(self.items) - mark} outcomes, wanted {count}"
        return self.items[mark:mark + count]


class Running:
    """A running dragoman with its observer and an SDK client."""

    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.url = server.url
        self.services = server.app_state.services  # type: ignore[attr-defined]
        self.outcomes = Outcomes()
        self.services.gateway.observers.append(self.outcomes)
        self.client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0, timeout=20)

    def chat(self, model: str, *, stream: bool = False, text: str = "hi") -> tuple[str, Mapping[str, str]]:
        """The answer's text and the response headers (a stream is read to the end)."""
        messages: Any = [{"role": "user", "content": text}]
        if stream:
            with self.client.chat.completions.with_streaming_response.create(
                    model=model, messages=messages, stream=True) as response:
                parts = [chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices]
                return "".join(parts), response.headers
        raw = self.client.chat.completions.with_raw_response.create(model=model, messages=messages)
        return raw.parse().choices[0].message.content or "", raw.headers

    def tasks(self) -> int:
        async def count() -> int:
            return len(asyncio.all_tasks())

        result: int = self.server.run_coroutine(count())
        return result


def config(a: ServerThread, b: ServerThread, dead_port: int, *, models: list[dict[str, Any]] | None = None,
           routing: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    routing = {"backoff": 0.05, "backoff_max": 0.2, "cooldown": NO_COOLDOWN, "health_interval": 0, **(routing or {})}
    return {
        "backends": [
            {"name": "a", "type": "openai", "base_url": f"{a.url}/v1", "models": MODELS},
            {"name": "b", "type": "openai", "base_url": f"{b.url}/v1", "models": MODELS},
            {"name": "dead", "type": "openai", "base_url": f"http://127.0.0.1:{dead_port}/v1",
             "models": ["gpt-test"]},
        ],
        "timeouts": {"connect": 2, "first_byte": 5, "idle": 5},
        "routing": routing,
        "models": models or [],
        **extra,
    }


@pytest.fixture()
def make_gateway(upstream_a: ServerThread, upstream_b: ServerThread,
                 dead_port: int) -> Iterator[Callable[..., Running]]:
    opened: list[Any] = []

    def make(**kwargs: Any) -> Running:
        manager = dragoman_server(config(upstream_a, upstream_b, dead_port, **kwargs))
        gateway = Running(manager.__enter__())
        opened.append((manager, gateway))
        return gateway

    yield make
    for manager, gateway in reversed(opened):
        gateway.client.close()
        manager.__exit__(None, None, None)


def chat_requests(fake: FakeOpenAI, model: str) -> int:
    with fake.lock:
        return sum(1 for r in fake.requests if r.path.endswith("/chat/completions") and r.body["model"] == model)


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def assert_no_leaks(gateway: Running, scenario: Callable[[], object], repeat: int = 2) -> None:
    """Run once to warm pools up, then ``repeat`` times more: no task or socket may be left over."""
    scenario()
    time.sleep(0.2)
    tasks, sockets = gateway.tasks(), open_sockets()
    for _ in range(repeat):
        scenario()
    settled = wait_until(lambda: gateway.tasks() <= tasks and open_sockets() <= sockets, timeout=5)
    assert settled, f"tasks {tasks} -> {gateway.tasks()}, sockets {sockets} -> {open_sockets()}"


def pair(name: str, primary: str, **model: Any) -> dict[str, Any]:
    """Model ``name``: ``primary`` first, ``b/gpt-test`` only when it fails."""
    return {"name": name, "deployments": [{"target": primary, "priority": 0},
                                          {"target": "b/gpt-test", "priority": 1}], **model}


FAILOVER_FAULTS = [  # (primary deployment, seconds within which the client has its answer)
    ("a/gpt-error-500", 1.5),
    ("a/gpt-error-503", 1.5),
    ("a/gpt-error-429", 1.5),  # retry-after 2 s, but another deployment is free: no wait
    ("a/gpt-hang", 0.5 + 1.5),  # first_byte 0.5 s
    ("dead/gpt-test", 1.5),  # connection refused
]
MIDSTREAM_FAULTS = [
    ("a/gpt-stall", openai.APIStatusError, 504, "stalled"),  # idle 0.5 s
    ("a/gpt-eof", openai.InternalServerError, 502, "closed the connection"),
]

# One gateway serves every scenario that needs no routing settings of its own (cooldowns off).
SHARED_MODELS: list[dict[str, Any]] = [
    *(pair(f"fo:{primary}", primary, timeouts={"first_byte": 0.5}) for primary, _ in FAILOVER_FAULTS),
    *(pair(f"ms:{primary}", primary, timeouts={"idle": 0.5, "first_byte": 0.5}) for primary, *_ in MIDSTREAM_FAULTS),
    pair("bad:400", "a/gpt-error-400"),
    pair("bad:401", "a/gpt-error-401"),
    pair("tiered", "a/gpt-test"),
    {"name": "spread", "deployments": ["a/gpt-test", "b/gpt-test"]},
    {"name": "weighted", "deployments": [{"target": "a/gpt-test", "weight": 9},
                                         {"target": "b/gpt-test", "weight": 1}]},
    {"name": "fastest", "strategy": "lowest_latency", "deployments": ["a/gpt-slow", "b/gpt-test"]},
    {"name": "all-fail", "retries": 0, "deployments": ["dead/gpt-test", "a/gpt-error-500"]},
    {"name": "solo-503", "retries": 2, "deployments": ["a/gpt-error-503"]},
    {"name": "solo-429", "retries": 1, "deployments": ["a/gpt-error-429"]},
    {"name": "solo-hang", "retries": 2, "deployments": ["a/gpt-hang"], "timeouts": {"first_byte": 0.5}},
    {"name": "small", "deployments": ["a/gpt-context"], "fallbacks": ["big"]},
    {"name": "big", "deployments": ["b/gpt-test"]},
    {"name": "small-only", "deployments": ["a/gpt-context", "b/gpt-context"]},
    {"name": "with-backup", "retries": 0, "deployments": ["a/gpt-error-500", "dead/gpt-test"],
     "fallbacks": ["big"]},
    {"name": "slow", "deployments": ["a/gpt-slow"]},
    {"name": "hang-30", "deployments": ["a/gpt-hang"], "timeouts": {"first_byte": 30}},
]


@pytest.fixture(scope="module")
def shared(upstream_a: ServerThread, upstream_b: ServerThread, dead_port: int) -> Iterator[Running]:
    cfg = config(upstream_a, upstream_b, dead_port, models=SHARED_MODELS, routing={"max_retry_after": 10},
                 aliases={"chain": ["a/gpt-error-503", "big"]})
    with dragoman_server(cfg) as server:
        running = Running(server)
        yield running
        running.client.close()


# ----------------------------------------------------------------------- load balancing


def test_two_deployments_share_the_load(shared: Running, fake_a: FakeOpenAI, fake_b: FakeOpenAI) -> None:
    before_a, before_b = chat_requests(fake_a, "gpt-test"), chat_requests(fake_b, "gpt-test")
    mark = shared.outcomes.mark()
    served = [shared.chat("spread")[1]["x-dragoman-backend"] for _ in range(16)]
    assert set(served) == {"a/gpt-test", "b/gpt-test"}
    assert chat_requests(fake_a, "gpt-test") - before_a == served.count("a/gpt-test")
    assert chat_requests(fake_b, "gpt-test") - before_b == served.count("b/gpt-test")
    assert [o.target for o in shared.outcomes.since(mark, 16)] == served
    assert [m.id for m in shared.client.models.list().data].count("spread") == 1


def test_weights_skew_the_share(shared: Running) -> None:
    # 100 draws at 9:1: the assertion fails by chance about once in 10^10 runs (20 draws: 1 in 400).
    served = [shared.chat("weighted")[1]["x-dragoman-backend"] for _ in range(100)]
    assert served.count("a/gpt-test") > 2 * served.count("b/gpt-test")


def test_lowest_latency_prefers_the_fast_deployment(shared: Running) -> None:
    # gpt-slow waits 50 ms before every frame, so its first event comes 50 ms later.
    # b/gpt-test may already have a figure from earlier tests (latencies are kept per deployment),
    # and 5% of choices explore at random: so the unmeasured slow one is tried within the first
    # two requests, and the fast one serves nearly all the rest.
    served = [shared.chat("fastest", stream=True)[1]["x-dragoman-backend"] for _ in range(16)]
    assert "a/gpt-slow" in served[:2]
    assert served.count("b/gpt-test") >= 12


def test_priority_sends_everything_to_the_first_tier(shared: Running) -> None:
    assert {shared.chat("tiered")[1]["x-dragoman-backend"] for _ in range(10)} == {"a/gpt-test"}


# ------------------------------------------------------------------- faults and failover


@pytest.mark.parametrize(("primary", "within"), FAILOVER_FAULTS)
@pytest.mark.parametrize("stream", [False, True])
def test_failure_before_the_first_byte_moves_to_the_next_deployment(
        shared: Running, primary: str, within: float, stream: bool) -> None:
    model = f"fo:{primary}"
    mark = shared.outcomes.mark()
    started = time.monotonic()
    text, headers = shared.chat(model, stream=stream)
    elapsed = time.monotonic() - started
    assert text == "You said: hi"
    assert headers["x-dragoman-backend"] == "b/gpt-test"
    assert headers["x-dragoman-attempts"] == "2"
    assert elapsed < within, elapsed
    # The waiting was upstream's: the gateway's own share stays small, whatever the fault cost.
    assert float(headers["x-dragoman-overhead-ms"]) < 100
    outcome = shared.outcomes.since(mark, 1)[0]
    assert (outcome.status, outcome.target, outcome.attempts, outcome.cancelled) == (200, "b/gpt-test", 2, False)
    assert_no_leaks(shared, lambda: shared.chat(model, stream=stream))


@pytest.mark.parametrize(("primary", "exc", "status", "message"), MIDSTREAM_FAULTS)
def test_failure_after_the_first_event_is_a_precise_error(
        shared: Running, primary: str, exc: type[openai.APIStatusError], status: int, message: str) -> None:
    model = f"ms:{primary}"
    mark = shared.outcomes.mark()
    started = time.monotonic()
    with pytest.raises(openai.APIError, match=message):  # the stream's error frame
        shared.chat(model, stream=True)
    assert time.monotonic() - started < 2

    # A non-streaming client gets a whole upstream answer, so the same fault strikes before the
    # first byte: the next deployment answers instead.
    started = time.monotonic()
    text, headers = shared.chat(model)
    assert time.monotonic() - started < 2
    assert text == "You said: hi"
    assert (headers["x-dragoman-backend"], headers["x-dragoman-attempts"]) == ("b/gpt-test", "2")
    outcomes = shared.outcomes.since(mark, 2)
    assert [(o.status, o.target, o.stream, o.cancelled) for o in outcomes] == [
        (status, primary, True, False), (200, "b/gpt-test", False, False)]

    def scenario() -> None:
        with pytest.raises(openai.APIError):
            shared.chat(model, stream=True)

    assert_no_leaks(shared, scenario)


def test_stalled_stream_ends_with_an_error_frame_and_done(shared: Running) -> None:
    body = {"model": "ms:a/gpt-stall", "messages": [{"role": "user", "content": "x"}], "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", f"{shared.url}/v1/chat/completions", json=body, timeout=5) as response:
        lines = [line for line in response.iter_lines() if line]
    assert time.monotonic() - started < 2
    assert lines[-1] == "data: [DONE]"
    assert '"error"' in lines[-2] and "stalled" in lines[-2]


@pytest.mark.parametrize("status", [400, 401])
def test_errors_the_request_caused_are_never_retried(shared: Running, fake_a: FakeOpenAI, fake_b: FakeOpenAI,
                                                     status: int) -> None:
    model = f"gpt-error-{status}"
    before_a, before_b = chat_requests(fake_a, model), chat_requests(fake_b, "gpt-test")
    mark = shared.outcomes.mark()
    with pytest.raises(openai.APIStatusError) as info:
        shared.chat(f"bad:{status}")
    assert info.value.status_code == status
    assert chat_requests(fake_a, model) - before_a == 1
    assert chat_requests(fake_b, "gpt-test") == before_b
    assert shared.outcomes.since(mark, 1)[0].status == status


def test_all_deployments_failing_is_the_last_error(shared: Running) -> None:
    mark = shared.outcomes.mark()
    with pytest.raises(openai.APIStatusError) as info:
        shared.chat("all-fail")
    assert info.value.status_code in (502, 503)
    assert shared.outcomes.since(mark, 1)[0].status == info.value.status_code


# ---------------------------------------------------------------------------------- retries


def test_single_deployment_is_retried_with_backoff(shared: Running, fake_a: FakeOpenAI) -> None:
    before = chat_requests(fake_a, "gpt-error-503")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        shared.chat("solo-503")
    elapsed = time.monotonic() - started
    assert info.value.status_code == 503
    assert chat_requests(fake_a, "gpt-error-503") - before == 3
    assert 0.05 * 0.5 + 0.1 * 0.5 <= elapsed < 2  # two backoffs (0.05 s, then 0.1 s, with jitter)


def test_retry_after_is_honoured_up_to_the_cap(shared: Running, fake_a: FakeOpenAI) -> None:
    before = chat_requests(fake_a, "gpt-error-429")
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        shared.chat("solo-429")  # max_retry_after is 10
    assert 2 <= time.monotonic() - started < 4  # the upstream's retry-after: 2
    assert chat_requests(fake_a, "gpt-error-429") - before == 2
    assert info.value.response.headers["retry-after"] == "2"


def test_retry_after_beyond_the_cap_is_not_waited_for(make_gateway: Callable[..., Running],
                                                      fake_a: FakeOpenAI) -> None:
    gw = make_gateway(models=[{"name": "m", "retries": 2, "deployments": ["a/gpt-error-429"]}],
                      routing={"max_retry_after": 1})
    before = chat_requests(fake_a, "gpt-error-429")
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        gw.chat("m")
    assert time.monotonic() - started < 1
    assert chat_requests(fake_a, "gpt-error-429") - before == 1
    assert info.value.response.headers["retry-after"] == "2"  # the client may wait instead


def test_a_timeout_is_not_retried_on_the_same_deployment(shared: Running) -> None:
    mark = shared.outcomes.mark()
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        shared.chat("solo-hang")
    assert info.value.status_code == 504
    assert time.monotonic() - started < 1.5  # the model's 0.5 s, not the global 5 s, and only once
    assert shared.outcomes.since(mark, 1)[0].error_kind == "timeout"


# -------------------------------------------------------------------------------- fallbacks


@pytest.mark.parametrize("stream", [False, True])
def test_context_window_exceeded_falls_back_to_a_bigger_model(shared: Running, stream: bool) -> None:
    text, headers = shared.chat("small", stream=stream)
    assert text == "You said: hi"
    assert (headers["x-dragoman-backend"], headers["x-dragoman-attempts"]) == ("b/gpt-test", "2")


def test_context_window_exceeded_without_fallback_is_the_upstream_error(shared: Running) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        shared.chat("small-only")
    assert info.value.code == "context_length_exceeded"


def test_fallbacks_after_every_deployment_failed(shared: Running) -> None:
    text, headers = shared.chat("with-backup")
    assert text == "You said: hi"
    assert (headers["x-dragoman-backend"], headers["x-dragoman-attempts"]) == ("b/gpt-test", "3")


def test_alias_lists_stay_ordered_fallbacks_tried_once_each(shared: Running, fake_a: FakeOpenAI) -> None:
    before = chat_requests(fake_a, "gpt-error-503")
    text, headers = shared.chat("chain")
    assert text == "You said: hi"
    assert headers["x-dragoman-attempts"] == "2"
    assert chat_requests(fake_a, "gpt-error-503") - before == 1


# --------------------------------------------------------------------------------- cooldown


def test_a_failing_deployment_cools_down_then_is_probed(make_gateway: Callable[..., Running],
                                                        fake_a: FakeOpenAI) -> None:
    gw = make_gateway(models=[pair("m", "a/gpt-error-503")], routing={"cooldown": FAST_COOLDOWN})
    before = chat_requests(fake_a, "gpt-error-503")
    attempts = [gw.chat("m")[1]["x-dragoman-attempts"] for _ in range(6)]
    assert attempts == ["2", "2", "2", "1", "1", "1"]  # three failures, then skipped
    assert chat_requests(fake_a, "gpt-error-503") - before == 3
    time.sleep(1.6)  # the cooldown period is 1.5 s
    attempts = [gw.chat("m")[1]["x-dragoman-attempts"] for _ in range(3)]
    assert attempts == ["2", "1", "1"]  # one probe, which fails: skipped again
    assert chat_requests(fake_a, "gpt-error-503") - before == 4


def test_a_dead_deployment_is_skipped_without_waiting(make_gateway: Callable[..., Running]) -> None:
    gw = make_gateway(models=[{"name": "m", "strategy": "least_busy",
                               "deployments": ["dead/gpt-test", "b/gpt-test"]}],
                      routing={"cooldown": FAST_COOLDOWN})
    failed = 0
    for _ in range(60):  # the dead one is picked first about every other request
        text, headers = gw.chat("m")
        assert text == "You said: hi"  # never an error for the client
        failed += headers["x-dragoman-attempts"] == "2"
        if failed == 3:
            break
    assert failed == 3
    attempts = [gw.chat("m")[1]["x-dragoman-attempts"] for _ in range(10)]
    assert attempts == ["1"] * 10


def test_every_deployment_cooling_down_fails_fast(make_gateway: Callable[..., Running]) -> None:
    gw = make_gateway(models=[{"name": "m", "retries": 0, "deployments": ["dead/gpt-test", "a/gpt-error-500"]}],
                      routing={"cooldown": {"failures": 1, "window": 30, "period": 30}})
    with pytest.raises(openai.APIStatusError):
        gw.chat("m")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        gw.chat("m")
    assert time.monotonic() - started < 0.5
    assert info.value.status_code == 503
    assert "cooling down" in info.value.message
    assert int(info.value.response.headers["retry-after"]) >= 1


@pytest.fixture()
def redis_prefix() -> Iterator[tuple[str, str]]:
    """(Redis URL, a key prefix of this test's own); its keys are deleted after."""
    url = ensure_redis()
    if url is None:
        pytest.skip(REDIS_MISSING)
    import redis

    prefix = unique_name("cd") + ":"
    yield url, prefix
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)


def test_cooldown_is_shared_through_redis(make_gateway: Callable[..., Running], fake_a: FakeOpenAI,
                                         redis_prefix: tuple[str, str]) -> None:
    redis_url, prefix = redis_prefix
    cooldown = {**FAST_COOLDOWN, "period": 30, "key_prefix": prefix}
    first = make_gateway(models=[pair("m", "a/gpt-error-503")], routing={"cooldown": cooldown}, redis=redis_url)
    second = make_gateway(models=[pair("m", "a/gpt-error-503")], routing={"cooldown": cooldown}, redis=redis_url)
    before = chat_requests(fake_a, "gpt-error-503")
    assert [first.chat("m")[1]["x-dragoman-attempts"] for _ in range(3)] == ["2", "2", "2"]
    # The other instance never saw a failure, yet skips the deployment at once.
    assert [second.chat("m")[1]["x-dragoman-attempts"] for _ in range(3)] == ["1", "1", "1"]
    assert chat_requests(fake_a, "gpt-error-503") - before == 3


def test_unreachable_redis_falls_back_to_memory(make_gateway: Callable[..., Running], dead_port: int,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dragoman.cooldown"):
        gw = make_gateway(models=[pair("m", "a/gpt-error-503")], routing={"cooldown": FAST_COOLDOWN},
                          redis=f"redis://127.0.0.1:{dead_port}/0")
        attempts = [gw.chat("m")[1]["x-dragoman-attempts"] for _ in range(5)]
    assert attempts == ["2", "2", "2", "1", "1"]
    assert any("Redis unavailable" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- cancellation


def test_streaming_client_leaving_cancels_the_upstream(shared: Running, fake_a: FakeOpenAI) -> None:
    body = {"model": "slow", "messages": [{"role": "user", "content": "a long answer " * 5}], "stream": True}

    def leave_early() -> None:
        before, mark = fake_a.disconnects, shared.outcomes.mark()
        with httpx.stream("POST", f"{shared.url}/v1/chat/completions", json=body, timeout=10) as response:
            for line in response.iter_lines():
                if "content" in line and '""' not in line:
                    break
        assert wait_until(lambda: fake_a.disconnects > before), "the upstream stream was not closed"
        outcome = shared.outcomes.since(mark, 1)[0]
        assert outcome.cancelled and outcome.status == 499 and outcome.stream

    leave_early()
    assert_no_leaks(shared, leave_early)
    assert wait_until(lambda: fake_a.open_streams == 0)


def test_non_streaming_client_leaving_cancels_the_upstream(shared: Running, fake_a: FakeOpenAI) -> None:
    body = {"model": "slow", "messages": [{"role": "user", "content": "a long answer " * 5}]}

    def leave_early() -> None:
        before, mark = fake_a.disconnects, shared.outcomes.mark()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{shared.url}/v1/chat/completions", json=body, timeout=0.3)
        assert wait_until(lambda: fake_a.disconnects > before), "the upstream request was not closed"
        outcome = shared.outcomes.since(mark, 1)[0]
        assert outcome.cancelled and outcome.status == 499 and not outcome.stream

    leave_early()
    assert_no_leaks(shared, leave_early)


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_before_the_first_byte_stops_routing(shared: Running, fake_a: FakeOpenAI,
                                                            stream: bool) -> None:
    body = {"model": "hang-30", "messages": [{"role": "user", "content": "x"}], "stream": stream}

    def leave_early() -> None:
        before, mark = fake_a.disconnects, shared.outcomes.mark()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{shared.url}/v1/chat/completions", json=body, timeout=0.3)
        outcome = shared.outcomes.since(mark, 1, timeout=3)[0]  # recorded at once, not after 30 s
        assert outcome.cancelled and outcome.status == 499
        assert wait_until(lambda: fake_a.disconnects > before, timeout=3), "the upstream request was not closed"

    leave_early()
    assert_no_leaks(shared, leave_early)


# ----------------------------------------------------------------------------------- health


def test_readiness_and_background_health(upstream_a: ServerThread, upstream_b: ServerThread,
                                         dead_port: int) -> None:
    cfg = config(upstream_a, upstream_b, dead_port, routing={"health_interval": 0.2})
    cfg["backends"][2]["models"] = ["*"]  # discovery, so its health check reaches the dead port
    with dragoman_server(cfg) as server:
        services = server.app_state.services  # type: ignore[attr-defined]
        assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
        ready = httpx.get(f"{server.url}/health/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ready"
        assert body["backends"]["a"]["ok"] and body["backends"]["a"]["models"] == len(MODELS)
        assert not body["backends"]["dead"]["ok"] and body["backends"]["dead"]["error"]
        health = services.backend_health
        assert health["b"].ok and not health["dead"].ok
        checked = health["a"].checked_at
        assert wait_until(lambda: services.backend_health["a"].checked_at > checked, timeout=3)

        async def database_down() -> str | None:
            return "database unreachable"

        services.readiness_checks.append(database_down)
        not_ready = httpx.get(f"{server.url}/health/ready")
        assert not_ready.status_code == 503
        assert not_ready.json()["problems"] == ["database unreachable"]


def test_not_ready_when_no_backend_is_up(dead_port: int) -> None:
    cfg = {"backends": [{"name": "dead", "type": "openai", "base_url": f"http://127.0.0.1:{dead_port}/v1",
                         "models": ["*"]}], "routing": {"health_interval": 0}}
    with dragoman_server(cfg) as server:
        response = httpx.get(f"{server.url}/health/ready")
        assert response.status_code == 503
        assert "no backend is healthy" in response.json()["problems"]
