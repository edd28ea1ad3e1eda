"""What the HTTP backends share: model discovery's cache and the auth headers."""

from __future__ import annotations

import asyncio

from dragoman.backends.anthropic import AnthropicBackend, AnthropicSettings
from dragoman.backends.http import ModelDiscovery
from dragoman.backends.ollama import OllamaBackend, OllamaSettings
from dragoman.backends.openai import OpenAIBackend, OpenAISettings
from dragoman.errors import ErrorKind, GatewayError


class Upstream:
    """A stand-in model list: counts the calls, fails when told to."""

    def __init__(self) -> None:
        self.calls = 0
        self.models = {"llama-3": 1, "qwen-2": 2, "mistral": 3}
        self.failure: BaseException | None = None

    async def __call__(self) -> dict[str, int]:
        self.calls += 1
        await asyncio.sleep(0)
        if self.failure is not None:
            raise self.failure
        return dict(self.models)


async def test_names_need_no_discovery_and_globs_are_filtered() -> None:
    upstream = Upstream()
    discovery = ModelDiscovery(upstream, ttl=60)
    assert await discovery.select(["a", "b"]) == {"a": 0, "b": 0}
    assert upstream.calls == 0
    assert await discovery.select(["mistral", "*-*"]) == {"mistral": 3, "llama-3": 1, "qwen-2": 2}
    assert list(await discovery.select(["pinned", "q*"])) == ["pinned", "qwen-2"]


async def test_one_call_per_ttl_however_many_ask() -> None:
    upstream = Upstream()
    discovery = ModelDiscovery(upstream, ttl=60)
    await asyncio.gather(*(discovery.select(["*"]) for _ in range(5)))
    await discovery.select(["*"])
    assert upstream.calls == 1
    discovery.ttl = 0.0
    await asyncio.sleep(0.001)
    await discovery.select(["*"])
    assert upstream.calls == 2


async def test_a_failed_call_keeps_what_was_known_and_says_why() -> None:
    upstream = Upstream()
    discovery = ModelDiscovery(upstream, ttl=0.0)
    await discovery.select(["*"])
    upstream.failure = GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, "upstream 'up' is unreachable")
    await asyncio.sleep(0.001)
    assert await discovery.select(["*"]) == upstream.models
    assert discovery.last_error == "upstream 'up' is unreachable"
    upstream.failure = TimeoutError()
    await asyncio.sleep(0.001)
    await discovery.select(["*"])
    assert discovery.last_error == "TimeoutError"
    upstream.failure = None
    await asyncio.sleep(0.001)
    await discovery.select(["*"])
    assert discovery.last_error is None


async def test_a_first_failed_call_lists_no_discovered_model() -> None:
    upstream = Upstream()
    upstream.failure = OSError("connection refused")
    discovery = ModelDiscovery(upstream, ttl=60)
    assert await discovery.select(["fixed", "*"]) == {"fixed": 0}
    assert discovery.last_error == "connection refused"


def test_auth_headers_by_backend_and_forwarding() -> None:
    openai = OpenAIBackend("o", OpenAISettings(base_url="http://x/v1", api_key="sk-own", headers={"X-Org": "a"}))
    assert openai.headers("sk-client") == {"Content-Type": "application/json", "X-Org": "a",
                                           "Authorization": "Bearer sk-own"}
    forward = OllamaBackend("l", OllamaSettings(api_key="forward"))
    assert forward.headers("sk-client")["Authorization"] == "Bearer sk-client"
    assert "Authorization" not in forward.headers(None)
    anthropic = AnthropicBackend("a", AnthropicSettings(api_key="sk-ant", beta=["b1", "b2"],
                                                        headers={"anthropic-beta": "ignored", "X-Id": "7"}))
    assert anthropic.headers(None) == {"Content-Type": "application/json", "anthropic-version": "2023-06-01",
                                       "anthropic-beta": "b1,b2", "X-Id": "7", "x-api-key": "sk-ant"}
    bearer = AnthropicBackend("b", AnthropicSettings(api_key="forward", auth="bearer"))
    assert bearer.headers("sk-oauth")["Authorization"] == "Bearer sk-oauth"
    assert "x-api-key" not in bearer.headers("sk-oauth")
