"""Configuration from the environment alone: dragoman started as a process with no config file, in the
seed's style and with the ``DRAGOMAN_*`` variables, and every backend variable over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from dragoman.app import create_app
from dragoman.config import load_config
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.ollama_upstream import FakeOllama
from tests.fakes.openai_upstream import FakeOpenAI
from tests.processes import clean_environment, dragoman_process, free_port, run_dragoman
from tests.servers import ServerThread

CHAT = [{"role": "user", "content": "hi there"}]


@pytest.fixture
def upstream() -> Iterator[tuple[FakeOpenAI, ServerThread]]:
    fake = FakeOpenAI()
    with ServerThread(fake.app()) as server:
        yield fake, server


def test_seed_style_variables_alone_serve_an_ollama_front(tmp_path: Path,
                                                         upstream: tuple[FakeOpenAI, ServerThread]) -> None:
    """OPENAI_API_BASE_URL (no /v1) + OPENAI_ALLOWED_MODELS (with spaces), no file: the Ollama SDK lists
    exactly the allowed models and chats, and the client's own key reaches the upstream, as in the seed."""
    fake, server = upstream
    port = free_port()
    env = clean_environment(tmp_path, OPENAI_API_BASE_URL=server.url, OPENAI_ALLOWED_MODELS="gpt-test, gpt-reason",
                            DRAGOMAN_PORT=str(port))
    assert not list(tmp_path.glob("*.yaml"))
    with dragoman_process(env=env, cwd=tmp_path) as running:
        assert running.url == f"http://127.0.0.1:{port}"
        assert "openai/gpt-test" in running.output and "echo/echo" not in running.output
        client = ollama.Client(host=running.url, headers={"Authorization": "Bearer sk-or-client-key"})
        assert [m.model for m in client.list().models] == ["openai/gpt-test", "openai/gpt-reason"]
        answer = client.chat(model="gpt-test", messages=CHAT, stream=False)
        assert answer.message.content == "You said: hi there"
        streamed = "".join(part.message.content or "" for part in
                           client.chat(model="openai/gpt-test", messages=CHAT, stream=True))
        assert streamed == "You said: hi there"
        assert httpx.get(running.url).text == "Ollama is running"
    chat = fake.last("/chat/completions")
    assert chat.path == "/v1/chat/completions" and chat.body["model"] == "gpt-test"
    assert chat.headers["authorization"] == "Bearer sk-or-client-key"
    # The data folder was the (temporary) home's, not the working directory.
    assert (tmp_path / ".dragoman" / "dragoman.db").exists()


def test_dragoman_variables_build_a_keyed_gateway(tmp_path: Path, upstream: tuple[FakeOpenAI, ServerThread]) -> None:
    fake, server = upstream
    port, database = free_port(), tmp_path / "data" / "gateway.db"
    database.parent.mkdir()
    env = clean_environment(
        tmp_path, DRAGOMAN_OPENAI_BASE_URL=f"{server.url}/v1", DRAGOMAN_OPENAI_API_KEY="sk-upstream-secret-123",
        DRAGOMAN_OPENAI_MODELS="gpt-test", DRAGOMAN_API_KEY="team-key-from-the-environment",
        DRAGOMAN_DATABASE_URL=f"sqlite:///{database}", DRAGOMAN_HOST="127.0.0.1",
        DRAGOMAN_PORT="1",  # the flag below wins
        DRAGOMAN_ADMIN_PASSWORD="env-admin-password")
    with dragoman_process("--port", str(port), env=env, cwd=tmp_path) as running:
        assert running.url == f"http://127.0.0.1:{port}"
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="team-key-from-the-environment", max_retries=0)
        assert [m.id for m in client.models.list()] == ["openai/gpt-test"]
        reply = client.chat.completions.create(model="gpt-test", messages=CHAT)
        assert reply.choices[0].message.content == "You said: hi there"
        claude = anthropic.Anthropic(base_url=running.url, api_key="team-key-from-the-environment", max_retries=0)
        message = claude.messages.create(model="gpt-test", max_tokens=32, messages=CHAT)
        assert message.content[0].type == "text" and message.content[0].text == "You said: hi there"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{running.url}/v1", api_key="someone-else", max_retries=0).models.list()
        admin = httpx.get(f"{running.url}/admin/api/keys", headers={"authorization": "Bearer env-admin-password"})
        assert [(k["name"], k["source"]) for k in admin.json()["keys"]] == [("default", "config")]
    assert fake.last("/chat/completions").headers["authorization"] == "Bearer sk-upstream-secret-123"
    assert database.exists()
    assert "sk-upstream-secret-123" not in running.output and "team-key-from-the-environment" not in running.output


def test_config_show_prints_the_effective_config_masked(tmp_path: Path) -> None:
    (tmp_path / "dragoman.yaml").write_text(
        "server: {port: 9000}\n"
        "backends:\n  - {name: openai, type: openai, base_url: 'http://127.0.0.1:9/v1', headers: {X-Team: web}}\n"
        "  - {name: test, type: echo, models: [echo]}\n"
        "database: postgresql://dragoman:db-password-123@db.internal/dragoman\n")
    env = clean_environment(tmp_path, DRAGOMAN_CONFIG="dragoman.yaml", DRAGOMAN_PORT="9100",
                            DRAGOMAN_OPENAI_API_KEY="sk-upstream-secret-abcd", DRAGOMAN_API_KEY="0123456789abcdef-key",
                            DRAGOMAN_ADMIN_PASSWORD="admin-secret-password", DRAGOMAN_REDIS_URL="redis://:rpass@r:6379/0")
    result = run_dragoman("config", "show", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("# dragoman configuration in effect (secrets masked)\n"
                          f"# file: {tmp_path / 'dragoman.yaml'}\n"
                          "# environment variables applied: DRAGOMAN_PORT, DRAGOMAN_ADMIN_PASSWORD, DRAGOMAN_API_KEY, "
                          "DRAGOMAN_REDIS_URL, DRAGOMAN_OPENAI_API_KEY\n")
    assert "  port: 9100\n" in out
    # The file's backend is changed, not replaced: its base URL and header stay, the key is the environment's.
    assert ("- name: openai\n  type: openai\n  base_url: http://127.0.0.1:9/v1\n  headers:\n    X-Team: web\n"
            "  api_key: sk-...abcd\n") in out
    assert "admin_password: ••••" in out and "  - name: default\n    key: ••••\n" in out and "mode: keys" in out
    assert "database: postgresql://dragoman:••••@db.internal/dragoman" in out
    assert "redis:\n  url: redis://:••••@r:6379/0\n" in out
    for secret in ("sk-upstream-secret-abcd", "0123456789abcdef-key", "admin-secret-password", "db-password-123",
                   "rpass"):
        assert secret not in out


def test_every_backend_variable_over_http(tmp_path: Path) -> None:
    """DRAGOMAN_OLLAMA_URL and DRAGOMAN_ANTHROPIC_API_KEY/BASE_URL/MODELS, no file: both backends serve."""
    ollama_fake, anthropic_fake = FakeOllama(), FakeAnthropic()
    with ServerThread(ollama_fake.app()) as lab, ServerThread(anthropic_fake.app()) as claude:
        env = {"DRAGOMAN_OLLAMA_URL": lab.url, "DRAGOMAN_OLLAMA_MODELS": "llama3:*",
               "DRAGOMAN_ANTHROPIC_API_KEY": "sk-ant-upstream", "DRAGOMAN_ANTHROPIC_BASE_URL": claude.url,
               "DRAGOMAN_ANTHROPIC_MODELS": "claude-echo", "DRAGOMAN_DATABASE_URL": f"sqlite:///{tmp_path / 'db'}",
               "HOME": str(tmp_path)}
        config = load_config(None, environ=env)
        assert [(b.name, b.type) for b in config.backends] == [("ollama", "ollama"), ("anthropic", "anthropic")]
        with ServerThread(create_app(config)) as gateway:
            client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
            assert sorted(m.id for m in client.models.list()) == ["anthropic/claude-echo", "ollama/llama3:latest"]
            for model, expected in (("llama3:latest", "You said: hi there"), ("claude-echo", "Echo: hi there")):
                reply = client.chat.completions.create(model=model, messages=CHAT)
                assert reply.choices[0].message.content == expected
        assert anthropic_fake.last().headers["x-api-key"] == "sk-ant-upstream"


@pytest.mark.parametrize(("env", "message"), [
    ({"DRAGOMAN_PORT": "eighty"}, "DRAGOMAN_PORT: 'eighty' is not a port number (0-65535)"),
    ({"DRAGOMAN_LOG_LEVEL": "loud"}, "DRAGOMAN_LOG_LEVEL: 'loud' is not one of debug, info, warning, error"),
    ({"DRAGOMAN_FORWARDED_ALLOW_IPS": "10.0.0.1, proxy.internal"},
     "configuration (with the environment variables DRAGOMAN_FORWARDED_ALLOW_IPS): server.forwarded_allow_ips: "
     "'proxy.internal' is not an IP address, a network (10.0.0.0/8) or '*'"),
])
def test_a_bad_variable_is_a_config_error_naming_it(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = run_dragoman("serve", env=clean_environment(tmp_path, **env), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"dragoman: configuration error: {message}\n"
