"""Tokens and sampling against OpenAI-compatible fake upstreams (tests/fakes/openai_upstream.py),
driven by the official ``openai`` SDK and httpx: ``/tokenize`` forwarded to a vLLM-style upstream
(a clear 400 where there is none), logprobs passed through, ``n > 1`` (passed through to an
OpenAI-compatible upstream as one request, one request per choice to Ollama), prompt arrays, the extra
sampling fields sent or dropped (``extra_params``), per-request ``think`` and ``reasoning.exclude``.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fakes.ollama_upstream import FakeOllama
from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import ServerThread, dragoman_server

EXTRAS = {"top_k": 20, "min_p": 0.1, "repetition_penalty": 1.2, "typical_p": 0.9, "mirostat": 2,
          "mirostat_tau": 4.0, "mirostat_eta": 0.2, "grammar": 'root ::= "yes" | "no"'}


@pytest.fixture(scope="module")
def vllm() -> FakeOpenAI:
    return FakeOpenAI(tokenizer=True, max_model_len=4096)


@pytest.fixture(scope="module")
def plain() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture(scope="module")
def gateway(vllm: FakeOpenAI, plain: FakeOpenAI) -> Iterator[ServerThread]:
    with ServerThread(vllm.app()) as up_vllm, ServerThread(plain.app()) as up_plain:
        config = {
            "backends": [
                {"name": "vllm", "type": "openai", "base_url": f"{up_vllm.url}/v1", "models": ["gpt-test"]},
                {"name": "plain", "type": "openai", "base_url": f"{up_plain.url}/v1", "extra_params": "drop",
                 "models": ["gpt-test", "gpt-reason"]},
                {"name": "echo", "type": "echo", "models": ["echo"]},
            ],
            "routing": {"retries": 0},
        }
        with dragoman_server(config) as server:
            yield server


@pytest.fixture(scope="module")
def ollama() -> FakeOllama:
    return FakeOllama()


@pytest.fixture(scope="module")
def ollama_gateway(ollama: FakeOllama) -> Iterator[ServerThread]:
    with ServerThread(ollama.app()) as upstream:
        config = {"backends": [{"name": "ollama", "type": "ollama", "base_url": upstream.url}],
                  "routing": {"retries": 0}}
        with dragoman_server(config) as server:
            yield server


@pytest.fixture(scope="module")
def oai(gateway: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=30) as client:
        yield client


def test_tokenize_is_forwarded_to_an_upstream_that_has_it(gateway: ServerThread, vllm: FakeOpenAI) -> None:
    answer = httpx.post(gateway.url + "/tokenize", json={"model": "vllm/gpt-test", "prompt": "hi"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"tokens": [1, ord("h"), ord("i")], "count": 3, "max_model_len": 4096}
    sent = vllm.last("/tokenize")
    assert sent.path == "/tokenize" and sent.body == {"model": "gpt-test", "add_special_tokens": True, "prompt": "hi"}

    chat = httpx.post(gateway.url + "/tokenize", json={"model": "vllm/gpt-test", "add_special": False,
                                                       "messages": [{"role": "user", "content": "yo"}]})
    assert chat.json()["tokens"] == [ord(c) for c in "user: yo\n"]
    assert vllm.last("/tokenize").body["add_generation_prompt"] is True

    back = httpx.post(gateway.url + "/detokenize", json={"model": "vllm/gpt-test", "tokens": [104, 105]})
    assert back.status_code == 200 and back.json() == {"prompt": "hi"}


@pytest.mark.parametrize("model", ["plain/gpt-test", "echo/echo"])
def test_tokenize_without_a_tokenizer_is_a_clear_400(gateway: ServerThread, model: str) -> None:
    calls = (("/tokenize", {"model": model, "prompt": "hi"}), ("/detokenize", {"model": model, "tokens": [1]}))
    for path, body in calls:
        answer = httpx.post(gateway.url + path, json=body)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert "cannot tokenize" in error["message"] and error["code"] == "tokenize_unsupported"


def test_tokenize_bad_input_is_a_400(gateway: ServerThread) -> None:
    for body in ({"model": "vllm/gpt-test"}, {"model": "vllm/gpt-test", "prompt": "a", "messages": [
            {"role": "user", "content": "b"}]}, {"model": "vllm/gpt-test", "prompt": 3}):
        answer = httpx.post(gateway.url + "/tokenize", json=body)
        assert answer.status_code == 400, answer.text
    assert httpx.post(gateway.url + "/detokenize", json={"model": "vllm/gpt-test", "tokens": ["a"]}).status_code == 400


def test_logprobs_pass_through_whole_and_streamed(oai: openai.OpenAI, vllm: FakeOpenAI) -> None:
    messages = [{"role": "user", "content": "abcd"}]
    whole = oai.chat.completions.create(model="vllm/gpt-test", messages=messages, logprobs=True, top_logprobs=2)
    sent = vllm.last().body
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    content = whole.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and "".join(t.token for t in content) == whole.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob == -0.25 for t in content)

    chunks = list(oai.chat.completions.create(model="vllm/gpt-test", messages=messages, logprobs=True, stream=True))
    streamed = [t for c in chunks for ch in c.choices if ch.logprobs and ch.logprobs.content
                for t in ch.logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert vllm.last().body["logprobs"] is True and "top_logprobs" not in vllm.last().body


def test_logprobs_for_a_backend_without_them_is_a_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="does not report logprobs"):
        oai.chat.completions.create(model="echo/echo", messages=[{"role": "user", "content": "x"}], logprobs=True)
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        oai.chat.completions.create(model="vllm/gpt-test", messages=[{"role": "user", "content": "x"}], top_logprobs=2)


def test_n_is_passed_through_to_an_openai_upstream_as_one_request(oai: openai.OpenAI, vllm: FakeOpenAI) -> None:
    before = len(vllm.requests)
    whole = oai.chat.completions.create(model="vllm/gpt-test", messages=[{"role": "user", "content": "hey"}], n=3,
                                        seed=7)
    assert [(c.index, c.message.content) for c in whole.choices] == [
        (0, "You said: hey"), (1, "You said: hey #1"), (2, "You said: hey #2")]
    assert {c.finish_reason for c in whole.choices} == {"stop"}
    sent = [r.body for r in vllm.requests[before:] if r.path.endswith("/chat/completions")]
    assert [(b["n"], b["seed"], b["stream"]) for b in sent] == [(3, 7, False)]  # one upstream request with n
    # The upstream's usage, once: the prompt read once, every choice's answer (7 tokens each).
    assert whole.usage is not None and (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (11, 21)

    before = len(vllm.requests)
    chunks = list(oai.chat.completions.create(model="vllm/gpt-test", messages=[{"role": "user", "content": "hey"}],
                                              n=2, stream=True, stream_options={"include_usage": True}))
    sent = [r.body for r in vllm.requests[before:] if r.path.endswith("/chat/completions")]
    assert [(b["n"], b["stream"]) for b in sent] == [(2, True)]
    texts: dict[int, str] = {}
    finished = set()
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished.add(choice.index)
    assert texts == {0: "You said: hey", 1: "You said: hey #1"} and finished == {0, 1}
    indexes = [c.index for chunk in chunks for c in chunk.choices if c.delta.content]
    assert indexes[:2] == [0, 1]  # relayed as the upstream interleaves them, not one after the other
    assert [c.usage is not None for c in chunks].count(True) == 1
    assert chunks[-1].usage is not None and (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) \
        == (11, 14)
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="vllm/gpt-test", messages=[{"role": "user", "content": "x"}], n=17)


def test_n_with_hidden_reasoning_asks_for_each_choice_in_turn(oai: openai.OpenAI, plain: FakeOpenAI) -> None:
    """``reasoning.exclude`` is applied by the gateway to a one-choice stream, so such a request
    keeps the sequential path (each choice its own upstream request, none showing reasoning)."""
    before = len(plain.requests)
    answer = oai.chat.completions.create(model="plain/gpt-reason", messages=[{"role": "user", "content": "x"}], n=2,
                                         extra_body={"reasoning": {"exclude": True}})
    sent = [r.body for r in plain.requests[before:] if r.path.endswith("/chat/completions")]
    assert len(sent) == 2 and all("n" not in b for b in sent)
    assert [c.message.content for c in answer.choices] == ["Answer.", "Answer."]
    assert all(getattr(c.message, "reasoning_content", None) is None for c in answer.choices)


def test_n_to_an_ollama_backend_runs_each_choice_in_turn(ollama_gateway: ServerThread, ollama: FakeOllama) -> None:
    with openai.OpenAI(base_url=ollama_gateway.url + "/v1", api_key="unused", max_retries=0) as client:
        before = ollama.count("/api/chat")
        whole = client.chat.completions.create(model="ollama/llama3:latest", n=2,
                                               messages=[{"role": "user", "content": "hey"}])
        assert ollama.count("/api/chat") - before == 2  # Ollama has no n: one request per choice
        assert [(c.index, c.message.content) for c in whole.choices] == [(0, "You said: hey"), (1, "You said: hey")]
        chunks = list(client.chat.completions.create(model="ollama/llama3:latest", n=2, stream=True,
                                                     messages=[{"role": "user", "content": "hey"}],
                                                     stream_options={"include_usage": True}))
        assert ollama.count("/api/chat") - before == 4
        assert {c.index for chunk in chunks for c in chunk.choices} == {0, 1}
        assert "n" not in ollama.last("/api/chat").body and "n" not in ollama.last("/api/chat").body.get("options", {})


def test_completion_prompt_arrays(oai: openai.OpenAI, vllm: FakeOpenAI) -> None:
    before = len(vllm.requests)
    answer = oai.completions.create(model="vllm/gpt-test", prompt=["one", "two"], n=2)
    sent = [r.body for r in vllm.requests[before:] if r.path.endswith("/completions")]
    assert [(b["prompt"], b["n"]) for b in sent] == [("one", 2), ("two", 2)]  # each prompt once, with n
    assert [(c.index, c.text) for c in answer.choices] == [
        (0, "completed: one"), (1, "completed: one #1"), (2, "completed: two"), (3, "completed: two #1")]
    assert answer.usage is not None and answer.usage.prompt_tokens == 4 and answer.usage.completion_tokens == 12
    streamed = list(oai.completions.create(model="vllm/gpt-test", prompt=["one", "two"], stream=True))
    texts: dict[int, str] = {}
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: "completed: one", 1: "completed: two"}
    streamed = list(oai.completions.create(model="vllm/gpt-test", prompt=["one", "two"], n=2, stream=True,
                                           stream_options={"include_usage": True}))
    texts = {}
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: "completed: one", 1: "completed: one #1", 2: "completed: two", 3: "completed: two #1"}
    assert streamed[-1].usage is not None and (streamed[-1].usage.prompt_tokens,
                                               streamed[-1].usage.completion_tokens) == (4, 12)
    with pytest.raises(openai.BadRequestError, match="more than the 16"):
        oai.completions.create(model="vllm/gpt-test", prompt=["a"] * 9, n=2)


def test_extra_sampling_fields_pass_to_a_non_openai_host_and_drop_when_told(
        oai: openai.OpenAI, vllm: FakeOpenAI, plain: FakeOpenAI) -> None:
    extra = {**EXTRAS}
    oai.chat.completions.create(model="vllm/gpt-test", messages=[{"role": "user", "content": "x"}],
                                logit_bias={"42": -100}, extra_body=extra)
    sent = vllm.last().body
    assert {k: sent[k] for k in EXTRAS} == EXTRAS and sent["logit_bias"] == {"42": -100}
    oai.completions.create(model="vllm/gpt-test", prompt="x", extra_body={"top_k": 5, "mirostat_mode": 1})
    completion = vllm.last("/completions").body
    assert completion["top_k"] == 5 and completion["mirostat"] == 1

    oai.chat.completions.create(model="plain/gpt-test", messages=[{"role": "user", "content": "x"}],
                                logit_bias={"42": -100}, extra_body=extra)
    dropped = plain.last().body
    assert not set(EXTRAS) & set(dropped) and dropped["logit_bias"] == {"42": -100}  # an OpenAI field: kept


def test_bad_extra_sampling_values_are_400s(oai: openai.OpenAI) -> None:
    for extra in ({"top_k": -1}, {"mirostat": 3}, {"typical_p": 0}, {"grammar": ""}):
        with pytest.raises(openai.BadRequestError):
            oai.chat.completions.create(model="vllm/gpt-test", messages=[{"role": "user", "content": "x"}],
                                        extra_body=extra)
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        oai.chat.completions.create(model="vllm/gpt-test", messages=[{"role": "user", "content": "x"}],
                                    logit_bias={"x": 1})
    with pytest.raises(openai.BadRequestError, match="either grammar or response_format"):
        oai.chat.completions.create(model="vllm/gpt-test", messages=[{"role": "user", "content": "x"}],
                                    response_format={"type": "json_object"}, extra_body={"grammar": "root ::= x"})


def test_per_request_think_and_reasoning_exclude(oai: openai.OpenAI, plain: FakeOpenAI) -> None:
    oai.chat.completions.create(model="plain/gpt-test", messages=[{"role": "user", "content": "x"}],
                                extra_body={"think": "high"})
    assert plain.last().body["reasoning_effort"] == "high"
    oai.chat.completions.create(model="plain/gpt-test", messages=[{"role": "user", "content": "x"}],
                                extra_body={"think": False})
    assert plain.last().body["reasoning_effort"] == "none"

    shown = oai.chat.completions.create(model="plain/gpt-reason", messages=[{"role": "user", "content": "x"}])
    assert shown.choices[0].message.model_extra["reasoning_content"] == "Let me think."  # type: ignore[index]
    hidden = oai.chat.completions.create(model="plain/gpt-reason", messages=[{"role": "user", "content": "x"}],
                                         extra_body={"reasoning": {"exclude": True}})
    assert "reasoning_content" not in (hidden.choices[0].message.model_extra or {})
    assert hidden.choices[0].message.content == "Answer."
