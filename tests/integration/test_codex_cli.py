"""Codex CLI (``codex exec``) through dragoman's Responses API, offline.

Codex speaks only the Responses API (``wire_api = "responses"``); dragoman serves it from a fake
OpenAI *chat* upstream whose model calls Codex's ``exec_command`` tool and then answers with the
tool's output. Twice: under a gateway model name Codex does not know, and under an alias Codex
knows (``gpt-5.5``), for which it sends more (apply_patch, reasoning, text.verbosity). The npm
package is installed once into ``~/.cache/dragoman-tests/codex`` and reused; without npm (or the
registry) the test is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import ServerThread, dragoman_server

CODEX_VERSION = "0.171.0"
KEY = "sk-codex-0123456789abcdef0123456789abcdef"
KNOWN_MODEL = "gpt-5.5"  # a model Codex knows, so it sends apply_patch, reasoning and text.verbosity
CACHE = Path.home() / ".cache" / "dragoman-tests" / "codex"


def codex_binary() -> Path:
    """The cached Codex CLI, installed with npm on first use."""
    binary = CACHE / "node_modules" / ".bin" / "codex"
    package = CACHE / "node_modules" / "@openai" / "codex" / "package.json"
    if binary.exists() and package.exists() and json.loads(package.read_text())["version"] == CODEX_VERSION:
        return binary
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed, so Codex CLI cannot be installed")
    CACHE.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(CACHE),
                             f"@openai/codex@{CODEX_VERSION}"], capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0 or not binary.exists():
        pytest.skip(f"npm could not install @openai/codex@{CODEX_VERSION}: {result.stderr.strip()[-300:]}")
    return binary


@pytest.fixture(scope="module")
def fake() -> FakeOpenAI:
    fake = FakeOpenAI()
    fake.agent_calls["exec_command"] = json.dumps({"cmd": "echo hello-from-codex"})
    return fake


@pytest.fixture(scope="module")
def gateway(fake: FakeOpenAI) -> Iterator[ServerThread]:
    with ServerThread(fake.app()) as upstream, dragoman_server({
            "backends": [{"name": "up", "type": "openai", "base_url": f"{upstream.url}/v1", "models": ["gpt-agent"]}],
            "aliases": {KNOWN_MODEL: "up/gpt-agent"},
            "auth": {"keys": [{"name": "codex", "key": KEY}]}}) as server:
        yield server


def run_codex(gateway: ServerThread, tmp_path: Path, model: str, *, trace: bool = False) -> tuple[list[Any], str]:
    """``codex exec --json`` against the gateway, checked to exit 0 with the tool's output in its
    final text: its JSON events and its stderr (with ``trace``, Codex logs the request bodies there)."""
    binary = codex_binary()
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(f"""
model = "{model}"
model_provider = "dragoman"

[model_providers.dragoman]
name = "dragoman"
base_url = "{gateway.url}/v1"
wire_api = "responses"
env_key = "DRAGOMAN_API_KEY"
request_max_retries = 0
stream_max_retries = 0
""")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "CODEX_HOME": str(home),
           "DRAGOMAN_API_KEY": KEY, **({"RUST_LOG": "trace"} if trace else {})}
    result = subprocess.run([str(binary), "exec", "--skip-git-repo-check", "--json", "-C", str(work),
                             "Say hello from the shell."], env=env, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "turn.completed", kinds
    commands = [e["item"] for e in events if e["type"] == "item.completed"
                and e["item"]["type"] == "command_execution"]
    assert commands and "hello-from-codex" in commands[0]["aggregated_output"]
    [answer] = [e["item"]["text"] for e in events if e["type"] == "item.completed"
                and e["item"]["type"] == "agent_message"]
    assert answer.startswith("Tool said:") and "hello-from-codex" in answer
    return events, result.stderr


def chat_requests(fake: FakeOpenAI, since: int) -> list[dict[str, Any]]:
    return [r.body for r in fake.requests[since:] if r.path.endswith("/chat/completions")]


def test_codex_exec_runs_a_tool_and_completes(gateway: ServerThread, fake: FakeOpenAI, tmp_path: Path) -> None:
    since = len(fake.requests)
    run_codex(gateway, tmp_path, "up/gpt-agent")
    chats = chat_requests(fake, since)
    assert len(chats) == 2
    assert chats[1]["messages"][-1]["role"] == "tool"
    names = [t["function"]["name"] for t in chats[0]["tools"]]
    assert "exec_command" in names
    assert "multi_agent_v1__spawn_agent" in names  # Codex's namespace tools, flattened


def test_codex_with_a_model_it_knows(gateway: ServerThread, fake: FakeOpenAI, tmp_path: Path) -> None:
    """For a model it knows, Codex also sends its apply_patch custom tool, tool_search, web_search,
    reasoning and text.verbosity; the alias leads to the same fake chat model."""
    since = len(fake.requests)
    _, log = run_codex(gateway, tmp_path, KNOWN_MODEL, trace=True)
    # What Codex sent (its trace log of the request body) and what dragoman echoed back.
    for sent in ('{"type":"custom","name":"apply_patch"', '"type":"tool_search"', '"type":"web_search"',
                 '"reasoning":{"effort":"medium"}', '"text":{"verbosity":"low"}'):
        assert sent in log, sent
    assert '"text":{"format":{"type":"text"},"verbosity":"low"}' in log  # the response object's echo
    chats = chat_requests(fake, since)
    assert len(chats) == 2
    first = chats[0]
    assert first["model"] == "gpt-agent" and first["reasoning_effort"] == "medium"
    tools = {t["function"]["name"]: t["function"] for t in first["tools"]}
    assert {"exec_command", "apply_patch"} <= set(tools)
    assert "tool_search" not in tools and "web_search" not in tools  # hosted: dropped for a chat upstream
    patch = tools["apply_patch"]["parameters"]  # the custom tool as a function with one string argument
    assert patch["properties"] == {"input": {"type": "string", "description": patch["properties"]["input"][
        "description"]}} and patch["required"] == ["input"]
