"""Static keys (``auth.keys`` with ``${VAR}``, ``DRAGOMAN_API_KEY``, ``--api-key``) on the real request
path: the same checks as generated keys in every dialect, never stored or logged, read-only in the
admin API and ``dragoman keys``, and refused at start when too short."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from dragoman.app import AppServices
from dragoman.cli import main
from tests.processes import clean_environment, dragoman_process, free_port, run_dragoman
from tests.servers import ServerThread, dragoman_server

TEAM_KEY = "team-key-0123456789abcdef"
LIMITED_KEY = "limited-key-0123456789abcdef"
DEFAULT_KEY = "default-key-from-env-0123456789"
ADMIN_PASSWORD = "static-keys-admin-password"
CHAT = [{"role": "user", "content": "hello"}]


def services_of(server: ServerThread) -> AppServices:
    services: AppServices = server.app_state.services  # type: ignore[attr-defined]
    return services


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("static-keys") / "dragoman.db"


@pytest.fixture(scope="module")
def gateway(database: Path) -> Iterator[ServerThread]:
    config: dict[str, Any] = {
        "backends": [{"name": "test", "type": "echo", "models": ["echo", "other"]}],
        "database": f"sqlite:///{database}",
        "usage": {"flush_interval": 0.1},
        "auth": {  # no mode: static keys imply keys
            "admin_password": ADMIN_PASSWORD,
            "keys": [
                {"name": "team", "key": "${TEAM_KEY}", "models": ["test/echo"], "metadata": {"team": "web"}},
                {"name": "limited", "key": "${LIMITED_KEY}", "rpm": 2},
                {"name": "paused", "key": "paused-key-0123456789abcdef", "enabled": False},
                {"name": "old", "key": "old-key-0123456789abcdefgh", "expires_at": "2020-01-01T00:00:00Z"},
            ],
        },
    }
    env = {"TEAM_KEY": TEAM_KEY, "LIMITED_KEY": LIMITED_KEY, "DRAGOMAN_API_KEY": DEFAULT_KEY}
    with dragoman_server(config, env=env) as server:
        yield server


def test_a_static_key_works_in_every_dialect_with_its_model_list(gateway: ServerThread) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TEAM_KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["test/echo"]
    reply = client.chat.completions.create(model="test/echo", messages=CHAT)
    assert reply.choices[0].message.content == "hello"
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(model="test/other", messages=CHAT)
    assert denied.value.status_code == 403

    claude = anthropic.Anthropic(base_url=gateway.url, api_key=TEAM_KEY, max_retries=0)
    message = claude.messages.create(model="test/echo", max_tokens=16, messages=CHAT)
    assert message.content[0].type == "text" and message.content[0].text == "hello"
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        claude.messages.create(model="test/other", max_tokens=16, messages=CHAT)
    assert refused.value.body["error"]["type"] == "permission_error"  # type: ignore[index]

    local = ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {TEAM_KEY}"})
    assert [m.model for m in local.list().models] == ["test/echo"]
    assert local.chat(model="test/echo", messages=CHAT, stream=False).message.content == "hello"
    with pytest.raises(ollama.ResponseError) as forbidden:
        local.chat(model="test/other", messages=CHAT, stream=False)
    assert forbidden.value.status_code == 403


def test_the_environment_key_reaches_every_model(gateway: ServerThread) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=DEFAULT_KEY, max_retries=0)
    assert sorted(m.id for m in client.models.list()) == ["test/echo", "test/other"]
    assert client.chat.completions.create(model="test/other", messages=CHAT).choices[0].message.content == "hello"


def test_wrong_disabled_and_expired_static_keys_get_401(gateway: ServerThread) -> None:
    for key in (TEAM_KEY[:-1] + "X", "paused-key-0123456789abcdef", "old-key-0123456789abcdefgh", "team"):
        with pytest.raises(openai.AuthenticationError) as info:
            openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0).models.list()
        assert info.value.status_code == 401
        assert info.value.body["message"] == "Invalid API key"  # type: ignore[index]


def test_static_key_limits_apply_like_generated_ones(gateway: ServerThread) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=LIMITED_KEY, max_retries=0)
    for _ in range(2):
        client.chat.completions.create(model="test/echo", messages=CHAT)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="test/echo", messages=CHAT)
    assert int(info.value.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.RateLimitError):
        anthropic.Anthropic(base_url=gateway.url, api_key=LIMITED_KEY, max_retries=0).messages.create(
            model="test/echo", max_tokens=5, messages=CHAT)


def test_static_keys_are_never_stored_or_logged(gateway: ServerThread, database: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="dragoman"):
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TEAM_KEY, max_retries=0)
        client.chat.completions.create(model="test/echo", messages=CHAT)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TEAM_KEY + "x", max_retries=0).models.list()
    control = services_of(gateway).control
    assert control is not None
    gateway.run_coroutine(control.recorder.flush())
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM api_keys").fetchone() == (0,)
        rows = db.execute("SELECT DISTINCT key_id, key_name FROM usage_records WHERE key_name = 'team'").fetchall()
    assert len(rows) == 1 and rows[0][0].startswith("cfg_")
    for path in database.parent.glob("dragoman.db*"):  # the database and its WAL: no secret in any byte
        data = path.read_bytes()
        for secret in (TEAM_KEY, LIMITED_KEY, DEFAULT_KEY):
            assert secret.encode() not in data, path
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "rejected openai request" in logged and TEAM_KEY not in logged and TEAM_KEY[-6:] not in logged


def test_the_admin_api_shows_static_keys_read_only(gateway: ServerThread) -> None:
    with httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {ADMIN_PASSWORD}"}) as admin:
        keys = {k["name"]: k for k in admin.get("/admin/api/keys").json()["keys"]}
        team = keys["team"]
        assert team["source"] == "config" and team["hint"] == "" and team["models"] == ["test/echo"]
        assert team["id"].startswith("cfg_") and team["metadata"] == {"team": "web"}
        assert keys["default"]["source"] == "config" and keys["default"]["models"] == ["*"]
        assert TEAM_KEY not in admin.get("/admin/api/keys").text

        for method in ("PATCH", "DELETE"):
            response = admin.request(method, f"/admin/api/keys/{team['id']}",
                                     json={"enabled": False} if method == "PATCH" else None)
            assert response.status_code == 409
            assert response.json()["error"]["message"] == (
                "key 'team' is set in the configuration (auth.keys, --api-key or DRAGOMAN_API_KEY); "
                "change or remove it there")
        same_name = admin.post("/admin/api/keys", json={"name": "team"})
        assert same_name.status_code == 400
        assert "a key named 'team' is set in the configuration" in same_name.json()["error"]["message"]
        usage = admin.get(f"/admin/api/keys/{team['id']}/usage")
        assert usage.status_code == 200 and usage.json()["key"]["name"] == "team"
    # Still working after the refused edits.
    openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TEAM_KEY, max_retries=0).models.list()


def test_keys_cli_lists_config_keys_and_refuses_to_revoke_them(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "dragoman.yaml"
    config.write_text("backends: [{name: test, type: echo, models: [echo]}]\n"
                      f"database: sqlite:///{tmp_path / 'db.sqlite'}\n"
                      "auth: {keys: [{name: ci, key: '${CI_KEY}', models: ['test/*'], rpm: 30}]}\n")
    monkeypatch.setenv("CI_KEY", "ci-key-0123456789abcdef")
    assert main(["keys", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("ci "))
    assert "(config)" in row and "test/*" in row and "30" in row and "ci-key" not in out
    assert main(["keys", "revoke", "ci", "--config", str(config)]) == 1
    assert "key 'ci' is set in the configuration" in capsys.readouterr().err


def test_api_key_flag_guards_a_started_server(tmp_path: Path) -> None:
    (tmp_path / "dragoman.yaml").write_text("backends: [{name: test, type: echo, models: [echo]}]\n"
                                            f"database: sqlite:///{tmp_path / 'db.sqlite'}\n")
    key = "flag-key-0123456789abcdef"
    env = clean_environment(tmp_path, DRAGOMAN_ADMIN_PASSWORD=ADMIN_PASSWORD)
    with dragoman_process("--config", "dragoman.yaml", "--port", str(free_port()), "--api-key", key, env=env,
                          cwd=tmp_path) as running:
        assert "-H 'Authorization: Bearer YOUR_KEY'" in running.output
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{running.url}/v1", api_key="sk-dm-anything", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key=key, max_retries=0)
        assert client.chat.completions.create(model="test/echo", messages=CHAT).choices[0].message.content == "hello"
    assert key not in running.output


@pytest.mark.parametrize(("setup", "expected"), [
    ({"file": "auth: {keys: [{name: t, key: '${SHORT}'}]}\n", "env": {"SHORT": "abc123"}},
     "auth.keys[0].key: the key is 6 characters long; a chosen key needs at least 16 "
     "(make one with: openssl rand -hex 24)"),
    ({"file": "", "args": ["--api-key", "abc123"]},
     "DRAGOMAN_API_KEY (--api-key): the key is 6 characters long; a chosen key needs at least 16"),
    ({"file": "auth: {keys: [{name: t, key: '${SPACED}'}]}\n", "env": {"SPACED": "0123456789 abcdefgh"}},
     "auth.keys[0].key: the key contains spaces or control characters"),
    ({"file": "auth: {mode: none, keys: [{name: t, key: 0123456789abcdefgh}]}\n"},
     "auth: static keys (auth.keys, --api-key, DRAGOMAN_API_KEY) need auth.mode: keys, not 'none'"),
])
def test_unusable_static_keys_stop_the_start(tmp_path: Path, setup: dict[str, Any], expected: str) -> None:
    (tmp_path / "dragoman.yaml").write_text("backends: [{name: test, type: echo, models: [echo]}]\n"
                                            f"database: sqlite:///{tmp_path / 'db.sqlite'}\n" + setup["file"])
    env = clean_environment(tmp_path, **setup.get("env", {}))
    result = run_dragoman("serve", "--config", "dragoman.yaml", *setup.get("args", []), env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr
    assert "abc123" not in result.stderr.replace("--api-key", "")
