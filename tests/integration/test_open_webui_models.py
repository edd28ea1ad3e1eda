"""Open WebUI's model-management calls, replayed with the exact request shapes of its Ollama
router (``backend/open_webui/routers/ollama.py``: ``pull_model``, ``delete_model``,
``unload_model``, and ``get_all_models`` reading ``/api/ps``), against dragoman fronting a
llamacpp backend fed by a fake Hugging Face hub and an Ollama backend (pulls forwarded)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

pytest.importorskip("huggingface_hub", reason="huggingface-hub is not installed (pip install 'dragoman[local]')")

from tests.fakes.hf_hub import FakeHub
from tests.fakes.ollama_upstream import FakeOllama
from tests.model_servers import tiny_gguf
from tests.servers import ServerThread, dragoman_server

KEY = "sk-dm-open-webui-admin-key-000001"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}  # send_post_request's headers


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeHub, FakeOllama, str, str]]:
    hub, ollama_fake = FakeHub(), FakeOllama()
    hub.add("acme/tiny-GGUF", "tiny-Q4_K_M.gguf", tiny_gguf("tiny"))
    with ServerThread(hub.app()) as hub_server, ServerThread(ollama_fake.app()) as ollama_server:
        yield hub, ollama_fake, hub_server.url, ollama_server.url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           upstreams: tuple[FakeHub, FakeOllama, str, str]) -> Iterator[ServerThread]:
    workdir: Path = tmp_path_factory.mktemp("webui")
    config = {
        "backends": [
            {"name": "local", "type": "llamacpp", "hf_endpoint": upstreams[2], "hf_cache_dir": str(workdir / "hf"),
             "models": []},
            {"name": "ollama", "type": "ollama", "base_url": upstreams[3]},
        ],
        "auth": {"mode": "keys", "keys": [{"name": "webui", "key": KEY, "metadata": {"admin": True}}]},
        "database": f"sqlite:///{workdir / 'db.sqlite'}",
    }
    with dragoman_server(config, workdir=workdir) as s:
        yield s


async def webui_pull(url: str, model: str) -> tuple[int, list[dict[str, Any]]]:
    """``pull_model``: ``{**form_data, "insecure": True}`` posted with aiohttp, the body relayed as it comes."""
    payload = {"model": model, "insecure": True}
    async with aiohttp.ClientSession(trust_env=True) as session, \
            session.post(f"{url}/api/pull", data=json.dumps(payload), headers=HEADERS) as r:
        lines = [json.loads(line) async for line in r.content if line.strip()]
        return r.status, lines


def webui_delete(url: str, model: str) -> httpx.Response:
    """``delete_model``: ``requests.request("DELETE", .../api/delete, data=json.dumps({"model": ...}))``."""
    return httpx.request("DELETE", f"{url}/api/delete", content=json.dumps({"model": model}).encode(),
                         headers=HEADERS)


def webui_tags(url: str) -> dict[str, Any]:
    """``get_all_models``: the tags, with ``expires_at`` taken from ``/api/ps`` as Open WebUI parses it."""
    models = httpx.get(f"{url}/api/tags", headers=HEADERS).json()
    loaded = httpx.get(f"{url}/api/ps", headers=HEADERS).json()
    expires = {m["name"]: int(datetime.fromisoformat(m["expires_at"]).timestamp()) for m in loaded["models"]}
    return {m["model"]: {**m, **({"expires_at": expires[m["name"]]} if m["name"] in expires else {})}
            for m in models["models"]}


async def test_open_webui_pulls_and_deletes_a_hub_gguf(server: ServerThread) -> None:
    status, lines = await webui_pull(server.url, "local/hf.co/acme/tiny-GGUF:Q4_K_M")
    assert status == 200 and lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
    digests = [line for line in lines if "digest" in line]
    assert digests and all({"total", "digest"} <= set(line) for line in digests)
    assert "local/hf.co/acme/tiny-GGUF:Q4_K_M" in webui_tags(server.url)
    response = webui_delete(server.url, "local/hf.co/acme/tiny-GGUF:Q4_K_M")
    response.raise_for_status()
    assert "local/hf.co/acme/tiny-GGUF:Q4_K_M" not in webui_tags(server.url)
    missing = webui_delete(server.url, "local/hf.co/acme/tiny-GGUF:Q4_K_M")
    assert missing.status_code == 404 and "error" in missing.json()  # Open WebUI shows "Ollama: <error>"


async def test_open_webui_pulls_and_deletes_through_an_ollama_backend(
        server: ServerThread, upstreams: tuple[FakeHub, FakeOllama, str, str]) -> None:
    fake = upstreams[1]
    status, lines = await webui_pull(server.url, "ollama/qwen3:0.6b")
    assert status == 200 and [line["status"] for line in lines][-3:] == [
        "verifying sha256 digest", "writing manifest", "success"]
    assert [line["completed"] for line in lines if "completed" in line] == [1000, 2000, 3000]
    assert fake.last("/api/pull").body == {"model": "qwen3:0.6b", "stream": True}
    assert "ollama/qwen3:0.6b" in webui_tags(server.url)
    webui_delete(server.url, "ollama/qwen3:0.6b").raise_for_status()
    assert fake.last("/api/delete").body == {"model": "qwen3:0.6b"}
    assert "ollama/qwen3:0.6b" not in webui_tags(server.url)
    # A name the registry does not have: the upstream's error as the last line, under 200.
    status, lines = await webui_pull(server.url, "ollama/missing-model")
    assert status == 200 and "pull model manifest: file does not exist" in lines[-1]["error"]


def test_open_webui_unload_is_a_keep_alive_0_generate(server: ServerThread) -> None:
    """``unload_model``: ``{"model": ..., "keep_alive": 0, "prompt": ""}``, read with ``r.json()``."""
    payload = {"model": "ollama/llama3:latest", "keep_alive": 0, "prompt": ""}
    response = httpx.post(f"{server.url}/api/generate", content=json.dumps(payload), headers=HEADERS)
    assert response.status_code == 200 and response.json()["done_reason"] == "unload"


async def test_a_key_without_admin_scope_cannot_pull(server: ServerThread) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            f"{server.url}/api/pull", data=json.dumps({"model": "ollama/x"}),
            headers={"Content-Type": "application/json", "Authorization": "Bearer sk-dm-not-a-known-key-0000000"}
    ) as r:
        assert r.status == 401 and "error" in await r.json()
