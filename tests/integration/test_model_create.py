"""``/api/create``, ``/api/copy``, ``/api/blobs`` and ``/api/delete`` with the official ``ollama``
SDK over real HTTP: models made from others (system prompt, parameters, messages, kept in the
database across restarts) and from uploaded GGUF blobs served by the llamacpp backend."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'dragoman[local]')")

import httpx
import ollama

from tests.fakes.ollama_upstream import FakeOllama
from tests.model_servers import names, served, tiny_gguf
from tests.servers import ServerThread, dragoman_server


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOllama, ServerThread]]:
    fake = FakeOllama()
    with ServerThread(fake.app()) as server:
        yield fake, server


def config(workdir: Path, upstream_url: str) -> dict[str, Any]:
    return {
        "backends": [
            {"name": "local", "type": "llamacpp", "models": []},
            {"name": "up", "type": "ollama", "base_url": upstream_url},
            {"name": "echo", "type": "echo", "models": ["echo"]},
        ],
        "database": f"sqlite:///{workdir / 'db.sqlite'}",
        "data_dir": str(workdir / "data"),
    }


@pytest.fixture(scope="module")
def upstream_url(upstream: tuple[FakeOllama, ServerThread]) -> str:
    return upstream[1].url


workdir, server, olla = served("create", config)


def test_a_created_model_brings_its_system_prompt_messages_and_parameters(
        olla: ollama.Client, upstream: tuple[FakeOllama, ServerThread]) -> None:
    statuses = [p.status for p in olla.create(
        model="pirate", from_="up/llama3:latest", system="You are a pirate.", stream=True,
        parameters={"temperature": 0.2, "num_ctx": 4096, "stop": ["<end>"]},
        messages=[{"role": "user", "content": "Ahoy?"}, {"role": "assistant", "content": "Arr!"}],
        license="MIT")]
    assert statuses[-1] == "success"
    assert "pirate" in names(olla)
    olla.chat(model="pirate", messages=[{"role": "user", "content": "Hello"}], stream=False)
    sent = upstream[0].last("/api/chat").body
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        ("system", "You are a pirate."), ("user", "Ahoy?"), ("assistant", "Arr!"), ("user", "Hello")]
    assert sent["options"]["temperature"] == 0.2 and sent["options"]["num_ctx"] == 4096
    assert sent["options"]["stop"] == ["<end>"]
    # The client's own values still win over the model's defaults, and its own system prompt stays alone.
    olla.chat(model="pirate", messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
              options={"temperature": 0.9})
    sent = upstream[0].last("/api/chat").body
    assert sent["messages"][0] == {"role": "system", "content": "Be kind."} and sent["options"]["temperature"] == 0.9
    shown = olla.show("pirate")
    assert shown.license == "MIT"
    assert shown.parameters is not None and "temperature 0.2" in shown.parameters


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
MESSAGES_TEMPLATE = ('{{- if .System }}[S]{{ .System }}\n{{ end }}'
                     '{{- range $i, $m := .Messages }}{{ if ne $m.Role "system" }}[{{ $m.Role }}]{{ $m.Content }}\n'
                     '{{ end }}{{ end }}[assistant]')
LEGACY_TEMPLATE = ("{{ if .System }}<<SYS>>{{ .System }}<</SYS>>\n{{ end }}"
                   "USER: {{ .Prompt }}\nBOT: {{ .Response }}</s>\n")


def test_a_created_models_template_renders_the_conversation(olla: ollama.Client) -> None:
    """The echo backend answers with the raw prompt it read: the template's rendering, verbatim."""
    olla.create(model="bracket", from_="echo/echo", template=MESSAGES_TEMPLATE)
    answer = olla.chat(model="bracket", messages=CONVERSATION)
    assert answer.message.content == "[S]Be brief.\n[user]Hi\n[assistant]Hello\n[user]Bye\n[assistant]"
    assert olla.show("bracket").template == MESSAGES_TEMPLATE
    # A template of Ollama's older kind: each exchange rendered in turn, the last cut after .Response.
    olla.create(model="legacy", from_="echo/echo", template=LEGACY_TEMPLATE, system="Be kind.")
    answer = olla.chat(model="legacy", messages=CONVERSATION[1:])
    assert answer.message.content == "<<SYS>>Be kind.<</SYS>>\nUSER: Hi\nBOT: Hello</s>\nUSER: Bye\nBOT: "
    assert olla.generate(model="legacy", prompt="Yo").response == "<<SYS>>Be kind.<</SYS>>\nUSER: Yo\nBOT: "
    assert olla.generate(model="legacy", prompt="Yo", raw=True).response == "Yo"  # raw: no template
    with pytest.raises(ollama.ResponseError) as refused:
        olla.chat(model="legacy", messages=[{"role": "user", "content": "x"}],
                  tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    assert refused.value.status_code == 400 and "without tools" in refused.value.error


def test_an_ollama_models_template_goes_upstream_as_a_raw_prompt(
        olla: ollama.Client, upstream: tuple[FakeOllama, ServerThread]) -> None:
    """Ollama's /api/chat takes no template: the rendered conversation goes to /api/generate, raw."""
    olla.create(model="up-legacy", from_="up/llama3:latest", template=LEGACY_TEMPLATE)
    answer = olla.chat(model="up-legacy", messages=CONVERSATION)
    sent = upstream[0].last("/api/generate").body
    assert sent["raw"] is True and sent["model"] == "llama3:latest"
    assert sent["prompt"] == "<<SYS>>Be brief.<</SYS>>\nUSER: Hi\nBOT: Hello</s>\nUSER: Bye\nBOT: "
    assert answer.message.content == "Generated: " + sent["prompt"]


@pytest.mark.parametrize(("template", "message"), [
    ("{{ .Prompt | upper }}", "pipes ('|') are not supported"),
    ('{{ printf "%s" .Prompt }}', "function 'printf' is not supported"),
    ("{{ if .System }}{{ .System }}", "'{{ if }}' without '{{ end }}'"),
    ('{{ template "x" . }}', "'{{ template }}' is not supported"),
    ("{{ .Suffix }}", "field .Suffix is not one Ollama templates are given"),
    ("{{ .Prompt }", "unclosed action"),
])
def test_a_template_outside_the_supported_subset_is_refused_at_create(
        server: ServerThread, olla: ollama.Client, template: str, message: str) -> None:
    response = httpx.post(server.url + "/api/create", json={"model": "tmpl-bad", "from": "echo/echo",
                                                            "template": template, "stream": False})
    assert response.status_code == 400 and message in response.json()["error"], response.text
    assert "tmpl-bad" not in names(olla)


def test_copy_and_delete(olla: ollama.Client) -> None:
    olla.create(model="terse", from_="echo/echo", parameters={"num_predict": 2})
    assert olla.generate(model="terse", prompt="one two three four").response == "one two "
    olla.copy("terse", "terse-copy")
    assert olla.generate(model="terse-copy", prompt="one two three four").response == "one two "
    olla.copy("echo/echo", "plain-echo")
    assert olla.generate(model="plain-echo", prompt="one two three").response == "one two three"
    olla.delete("terse")
    assert "terse" not in names(olla) and "terse-copy" in names(olla)
    with pytest.raises(ollama.ResponseError) as missing:
        olla.copy("no-such-model", "x")
    assert missing.value.status_code == 404 and missing.value.error == 'model "no-such-model" not found'
    with pytest.raises(ollama.ResponseError) as missing:
        olla.delete("terse")
    assert missing.value.status_code == 404


@pytest.mark.parametrize(("body", "message"), [
    ({"model": "x"}, "neither 'from' or 'files' was specified"),
    ({"model": "x", "from": "nope/nothing"}, "not found"),
    ({"model": "x", "from": "echo/echo", "quantize": "q4_K_M"}, "quantize is not supported"),
    ({"model": "x", "from": "echo/echo", "parameters": {"temperature": "hot"}}, '"temperature" must be of type float'),
    ({"model": "x", "files": {"m.gguf": "sha256:" + "0" * 64}}, "not found: upload it first"),
    ({"model": "x", "files": {"m.gguf": "md5:abc"}}, "invalid digest"),
    ({"model": "x", "from": "x"}, "cannot be made from itself"),
])
def test_bad_creates_are_ollama_errors(server: ServerThread, body: dict[str, Any], message: str) -> None:
    response = httpx.post(server.url + "/api/create", json={**body, "stream": False})
    assert response.status_code in (400, 404) and message in response.json()["error"], response.text


def test_blobs_then_create_from_files(olla: ollama.Client, server: ServerThread, tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(tiny_gguf("uploaded", padding=1 << 20))
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert httpx.head(f"{server.url}/api/blobs/{digest}").status_code == 404
    assert olla.create_blob(gguf) == digest  # HEAD, then POST of the file
    assert httpx.head(f"{server.url}/api/blobs/{digest}").status_code == 200
    again = httpx.post(f"{server.url}/api/blobs/{digest}", content=gguf.read_bytes())
    assert again.status_code == 200  # already there
    wrong = httpx.post(f"{server.url}/api/blobs/sha256:{'1' * 64}", content=b"other bytes")
    assert wrong.status_code == 400 and "digest mismatch" in wrong.json()["error"]
    assert httpx.head(f"{server.url}/api/blobs/sha256:{'1' * 64}").status_code == 404
    assert httpx.head(f"{server.url}/api/blobs/not-a-digest").status_code == 400
    result = olla.create(model="uploaded", files={"tiny.gguf": digest})
    assert result.status == "success"
    assert "local/uploaded" in names(olla)
    shown = olla.show("local/uploaded")
    assert shown.details is not None and shown.details.format == "gguf"


def test_created_models_survive_a_restart(tmp_path: Path, upstream: tuple[FakeOllama, ServerThread]) -> None:
    settings = config(tmp_path, upstream[1].url)
    gguf = tiny_gguf("kept", padding=1 << 16)
    digest = "sha256:" + hashlib.sha256(gguf).hexdigest()
    with dragoman_server(settings, workdir=tmp_path) as s:
        client = ollama.Client(host=s.url)
        client.create(model="kept", from_="echo/echo", system="s", parameters={"num_predict": 1})
        assert httpx.post(f"{s.url}/api/blobs/{digest}", content=gguf).status_code == 201
        client.create(model="kept-file", files={"kept.gguf": digest})
    with dragoman_server(settings, workdir=tmp_path) as s:
        client = ollama.Client(host=s.url)
        assert {"kept", "local/kept-file"} <= names(client)
        assert client.generate(model="kept", prompt="a b c").response == "a "


def test_a_created_model_cannot_take_the_name_of_a_served_one(server: ServerThread) -> None:
    for name, source in (("echo/echo", "up/llama3:latest"), ("up/llama3:latest", "echo/echo"),
                         ("llama3:latest", "echo/echo")):
        response = httpx.post(server.url + "/api/create", json={"model": name, "from": source, "stream": False})
        assert response.status_code == 400 and "already exists" in response.json()["error"], name
    response = httpx.post(server.url + "/api/copy", json={"source": "up/llama3:latest", "destination": "echo/echo"})
    assert response.status_code == 400 and "already exists" in response.json()["error"]


def test_created_models_live_beside_admin_aliases_overrides_and_backend_edits(
        workdir: Path, upstream: tuple[FakeOllama, ServerThread]) -> None:
    """A created model resolves through the live catalog: an admin alias may name it, an admin
    override of its name applies, and it keeps working after its backend is edited (a new catalog)."""
    settings = config(workdir / "live", upstream[1].url)
    settings["auth"] = {"mode": "none", "admin_password": "create-pass-123"}
    (workdir / "live").mkdir()
    with dragoman_server(settings, workdir=workdir / "live") as s:
        olla = ollama.Client(host=s.url, timeout=60)
        olla.create(model="scribe", from_="up/llama3:latest", system="You write.", parameters={"top_k": 7})
        admin = httpx.Client(base_url=s.url, headers={"authorization": "Bearer create-pass-123"}, timeout=30)
        assert admin.put("/admin/api/overrides/scribe", json={"max_tokens_cap": 5}).status_code == 200
        assert admin.put("/admin/api/aliases/writer", json={"targets": ["scribe"]}).status_code == 200
        olla.chat(model="scribe", messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 100})
        sent = upstream[0].last("/api/chat").body
        assert sent["messages"][0] == {"role": "system", "content": "You write."}
        assert sent["options"]["num_predict"] == 5
        olla.chat(model="writer", messages=[{"role": "user", "content": "Hi"}])
        via_alias = upstream[0].last("/api/chat").body
        assert via_alias["model"] == "llama3:latest"
        # Through an alias, the created model is still itself: its system prompt and parameters apply.
        assert via_alias["messages"][0] == {"role": "system", "content": "You write."}
        assert via_alias["options"]["top_k"] == 7
        edited = admin.put("/admin/api/backends/up", json={"type": "ollama", "settings": {
            "base_url": upstream[1].url, "headers": {"x-edited": "yes"}}})
        assert edited.status_code == 200, edited.text
        olla.chat(model="scribe", messages=[{"role": "user", "content": "Again"}])
        again = upstream[0].last("/api/chat")
        assert again.headers.get("x-edited") == "yes" and again.body["messages"][0]["content"] == "You write."
        assert {"scribe", "writer"} <= names(olla)
        # A backend rebuilt by an admin edit keeps the models pulled or created into it.
        gguf = tiny_gguf("live", padding=1 << 16)
        digest = "sha256:" + hashlib.sha256(gguf).hexdigest()
        assert httpx.post(f"{s.url}/api/blobs/{digest}", content=gguf).status_code == 201
        olla.create(model="live-file", files={"live.gguf": digest})
        assert "local/live-file" in names(olla)
        edited = admin.put("/admin/api/backends/local", json={"type": "llamacpp", "settings": {
            "models": [], "max_queue": 4}})
        assert edited.status_code == 200, edited.text
        assert "local/live-file" in names(olla)
        shown = olla.show("local/live-file")
        assert shown.details is not None and shown.details.format == "gguf"
