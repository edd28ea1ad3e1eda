"""Limits that hold under load: bursts of concurrent requests over real HTTP.

Two dragoman instances share one Redis (and one key database); the ``openai`` SDK's async client
fires the bursts at both. A burst must queue for Redis connections, never be taken for Redis
being down (which would admit everything without limits), and budgets must hold against
concurrent requests by reserving each request's estimate at admission.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from dragoman.app import AppServices
from tests.fakes.cutting_proxy import TcpProxy
from tests.fakes.openai_upstream import FakeOpenAI, wait_until
from tests.servers import ServerThread, dragoman_server
from tests.services import REDIS_MISSING, ensure_redis, unique_name

pytestmark = pytest.mark.redis

BURST_SECONDS = 60.0  # a bound on every burst: a hung request fails the test instead of stalling it


def gateway_config(upstream: ServerThread, database: Path, redis_url: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "backends": [
            {"name": "up", "type": "openai", "base_url": f"{upstream.url}/v1", "api_key": "upstream-secret",
             "models": ["gpt-test", "gpt-slow"]},
        ],
        "auth": {"mode": "keys", "cache_ttl": 60},
        "database": f"sqlite:///{database}",
    }
    if redis_url is not None:
        config["redis"] = redis_url
    return config


@pytest.fixture(scope="module")
def pair(upstream: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerThread]]:
    """Two instances on one Redis and one key database, as behind a load balancer."""
    redis_url = ensure_redis()
    if redis_url is None:
        pytest.skip(REDIS_MISSING)
    config = gateway_config(upstream, tmp_path_factory.mktemp("pair") / "keys.sqlite", redis_url)
    with dragoman_server(config) as first, dragoman_server(config) as second:
        yield [first, second]


@pytest.fixture(scope="module")
def single(upstream: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One instance without Redis: limits counted in memory."""
    config = gateway_config(upstream, tmp_path_factory.mktemp("single") / "keys.sqlite", None)
    with dragoman_server(config) as server:
        yield server


def create_key(server: ServerThread, **limits: Any) -> tuple[str, str]:
    services: AppServices = server.app_state.services  # type: ignore[attr-defined]
    assert services.keys is not None
    name = unique_name("load")
    _, secret = server.run_coroutine(services.keys.create(name, **limits))
    return name, str(secret)


@dataclass
class Answer:
    status: int
    tokens: int = 0
    body: Any = None
    retry_after: str | None = None


async def one_request(client: openai.AsyncOpenAI, model: str, text: str, *, stream: bool,
                      max_tokens: int | None) -> Answer:
    extra: dict[str, Any] = {} if max_tokens is None else {"max_tokens": max_tokens}
    try:
        if stream:
            chunks = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                          stream=True, stream_options={"include_usage": True},
                                                          **extra)
            tokens = 0
            async for chunk in chunks:
                if chunk.usage is not None:
                    tokens = chunk.usage.total_tokens
            return Answer(200, tokens)
        answer = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                      **extra)
        return Answer(200, answer.usage.total_tokens if answer.usage else 0)
    except openai.APIStatusError as exc:
        return Answer(exc.status_code, body=exc.body, retry_after=exc.response.headers.get("retry-after"))


async def burst(servers: list[ServerThread], secret: str, count: int, *, model: str = "up/gpt-test",
                text: str = "hello", stream: bool = False, max_tokens: int | None = None) -> list[Answer]:
    """``count`` requests at once, spread evenly over ``servers``."""
    clients = [openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key=secret, max_retries=0, timeout=30,
                                  http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=count)))
               for s in servers]
    try:
        calls = [one_request(clients[i % len(clients)], model, text, stream=stream, max_tokens=max_tokens)
                 for i in range(count)]
        return await asyncio.wait_for(asyncio.gather(*calls), BURST_SECONDS)
    finally:
        for client in clients:
            await client.close()


def statuses(answers: list[Answer]) -> dict[int, int]:
    return dict(Counter(answer.status for answer in answers))


def no_limiter_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """Neither "Redis unavailable; admitting without limits" nor "no Redis connection free"."""
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("dragoman.gateway.limits")]
    assert warnings == []


async def test_a_used_up_key_stays_limited_during_another_keys_burst(
        pair: list[ServerThread], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    name, limited = create_key(pair[0], rpm=5)
    _, busy = create_key(pair[1], rpm=100_000)
    assert statuses(await burst(pair, limited, 5)) == {200: 5}  # its five requests this minute
    during, load = await asyncio.gather(burst(pair, limited, 20), burst(pair[1:], busy, 150))
    after = await burst(pair, limited, 20)
    assert statuses(load) == {200: 150}  # the burst on one instance: all served, none refused as busy
    assert statuses(during) == {429: 20} and statuses(after) == {429: 20}
    assert after[0].body == {"message": f"Rate limit exceeded for key '{name}': 5 requests per minute.",
                             "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}
    no_limiter_warnings(caplog)


async def test_60_rpm_admits_at_most_60_of_200_concurrent(pair: list[ServerThread],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    name, secret = create_key(pair[0], rpm=60)
    answers = await burst(pair, secret, 200)
    no_limiter_warnings(caplog)
    assert statuses(answers) == {200: 60, 429: 140}
    refused = [a for a in answers if a.status == 429]
    assert all(a.body == {"message": f"Rate limit exceeded for key '{name}': 60 requests per minute.",
                          "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}
               for a in refused)
    assert all(a.retry_after is not None and 1 <= int(a.retry_after) <= 60 for a in refused)


async def test_parallel_limit_holds_for_streams_right_after_a_burst(
        pair: list[ServerThread], fake: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    _, busy = create_key(pair[0], rpm=100_000)
    name, secret = create_key(pair[1], max_parallel=2)
    assert statuses(await burst(pair[:1], busy, 200)) == {200: 200}
    fake.peak_streams = 0
    answers = await burst(pair, secret, 50, model="up/gpt-slow", stream=True)
    assert fake.peak_streams <= 2
    counts = statuses(answers)
    assert set(counts) == {200, 429} and counts[200] >= 2
    refused = next(a for a in answers if a.status == 429)
    assert refused.body == {"message": f"Rate limit exceeded for key '{name}': 2 parallel requests.",
                            "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}
    assert refused.retry_after == "1"
    no_limiter_warnings(caplog)


# The fake upstream reports 11 prompt and 7 completion tokens for every answer. A 44-character
# prompt is 11 tokens by dragoman's estimate (four characters a token), so with max_tokens=7 each
# request reserves exactly what it spends: 18 tokens.
PROMPT = "Please count these words for the budget test"
RESERVATION = 18


async def test_a_budget_holds_against_concurrent_requests_on_two_instances(pair: list[ServerThread]) -> None:
    assert len(PROMPT) == 44
    name, secret = create_key(pair[0], budget_tokens=100, budget_period="day")
    answers = await burst(pair, secret, 50, text=PROMPT, max_tokens=7)
    assert all(a.tokens == RESERVATION for a in answers if a.status == 200)
    spent = sum(a.tokens for a in answers)
    assert 100 <= spent <= 100 + RESERVATION
    refused = [a for a in answers if a.status != 200]
    assert len(refused) == 50 - spent // RESERVATION
    assert all(a.status == 429 and a.body["code"] == "budget_exceeded" and a.body["message"].startswith(
        f"Budget exhausted for key '{name}': ") for a in refused)


async def test_a_budget_holds_against_concurrent_requests_in_memory(single: ServerThread) -> None:
    name, secret = create_key(single, budget_tokens=100, budget_period="day")
    answers = await burst([single], secret, 50, text=PROMPT, max_tokens=7)
    spent = sum(a.tokens for a in answers)
    assert 100 <= spent <= 100 + RESERVATION
    refused = [a for a in answers if a.status != 200]
    assert len(refused) == 50 - spent // RESERVATION
    assert all(a.status == 429 and a.body["code"] == "budget_exceeded" and a.body["message"].startswith(
        f"Budget exhausted for key '{name}': ") for a in refused)


def first_refusal(call: Any, deadline: float = 10.0) -> Any:
    """Calls ``call`` until it is refused other than with a 503 (within ``deadline`` seconds)."""
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        try:
            call()
        except openai.APIStatusError as exc:
            if exc.status_code != 503:
                return exc
        time.sleep(0.2)
    raise AssertionError(f"still admitted after {deadline} s")


@pytest.mark.parametrize("failure", ["open", "closed"])
def test_redis_failure_is_the_operators_choice(upstream: ServerThread, tmp_path: Path, failure: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    redis_url = ensure_redis()
    if redis_url is None:
        pytest.skip(REDIS_MISSING)
    target = httpx.URL(redis_url)
    caplog.set_level(logging.WARNING)
    with TcpProxy(target.host, target.port or 6379) as proxy:
        config = gateway_config(upstream, tmp_path / "keys.sqlite", f"redis://127.0.0.1:{proxy.port}/0")
        config["limits"] = {"redis_failure": failure}
        with dragoman_server(config) as server:
            name, secret = create_key(server, rpm=2)
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0, timeout=10)
            messages: Any = [{"role": "user", "content": "hi"}]

            def chat() -> None:
                client.chat.completions.create(model="up/gpt-test", messages=messages)

            chat()  # counted in Redis: one of two this minute
            proxy.cut()
            if failure == "closed":
                with pytest.raises(openai.InternalServerError) as refused:
                    chat()
                assert refused.value.status_code == 503 and refused.value.response.headers["retry-after"] == "1"
                assert refused.value.body == {"message": "The rate limiter is unavailable; try again shortly.",
                                              "type": "overloaded_error", "param": None, "code": "overloaded"}
                anthropic_client = anthropic.Anthropic(base_url=server.url, api_key=secret, max_retries=0)
                with pytest.raises(anthropic.InternalServerError) as in_anthropic:
                    anthropic_client.messages.create(model="up/gpt-test", max_tokens=5, messages=messages)
                assert in_anthropic.value.status_code == 503
                body: Any = in_anthropic.value.body
                assert body["type"] == "error" and body["error"] == {
                    "type": "overloaded_error", "message": "The rate limiter is unavailable; try again shortly."}
            else:
                for _ in range(3):  # over the limit, admitted: an unreachable Redis is no outage
                    chat()
                assert any("Redis unavailable" in r.getMessage() and "admitting without limits" in r.getMessage()
                           for r in caplog.records)
            proxy.restore()
            # Redis is tried again within seconds, and the limit holds again.
            refusal = first_refusal(chat)
            assert refusal.status_code == 429
            assert refusal.body["message"] == f"Rate limit exceeded for key '{name}': 2 requests per minute."


def test_a_cancelled_stream_settles_its_reservation_to_what_it_used(single: ServerThread, fake: FakeOpenAI) -> None:
    name, secret = create_key(single, budget_tokens=10, budget_period="day")
    client = openai.OpenAI(base_url=f"{single.url}/v1", api_key=secret, max_retries=0, timeout=10)
    messages: Any = [{"role": "user", "content": PROMPT}]
    disconnects = fake.disconnects
    stream = client.chat.completions.create(model="up/gpt-slow", messages=messages, stream=True, max_tokens=1000)
    chunks = iter(stream)
    next(chunks), next(chunks)  # the role chunk, then "You "
    stream.close()  # the client leaves: 1011 tokens were reserved for it
    assert wait_until(lambda: fake.disconnects > disconnects, timeout=5)
    deadline = time.monotonic() + 5
    while True:
        with pytest.raises(openai.RateLimitError) as refused:  # a budget that forgot the stream would admit
            client.chat.completions.create(model="up/gpt-slow", messages=messages, max_tokens=5)
        spent = int(refused.value.body["message"].split(": ", 1)[1].split(" of ", 1)[0])  # type: ignore[index]
        if spent < 1000 or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # the lease is released once the gateway has closed the stream
    # Settled to the estimate: 11 for the prompt, a token per four characters the upstream sent
    # before the client left (at least "You ", at most all of "You said: " + the prompt).
    assert 12 <= spent <= 11 + (10 + len(PROMPT)) // 4
    body: Any = refused.value.body
    assert (body["type"], body["param"], body["code"]) == ("rate_limit_error", None, "budget_exceeded")
    assert body["message"].startswith(
        f"Budget exhausted for key '{name}': {spent} of 10 tokens used this day (requests in progress included)")
