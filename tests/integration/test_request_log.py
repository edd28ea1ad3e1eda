"""The request log and ``x-request-id`` over real HTTP, with the official SDKs: one line per request
(generation, errors, admin, health, unknown paths) with the right fields in text and JSON, never a
key or a prompt; every response carries the request's id, the client's own when it is a safe one."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from dragoman.logs import JSONFormatter
from dragoman.request_log import RequestEntry
from tests.processes import clean_environment, dragoman_process, free_port
from tests.servers import ServerThread, dragoman_server

TEAM_KEY = "team-key-request-log-0123456789"
WRONG_KEY = "wrong-key-request-log-0123456789"
ADMIN_PASSWORD = "request-log-admin-password"
PROMPT = "the-secret-prompt-text-4711"
JSON_FIELDS = {"time", "level", "logger", "request_id", "client", "key", "dialect", "method", "path", "model",
               "served_by", "status", "error", "tokens_in", "tokens_out", "tokens_estimated", "ttft_ms",
               "attempts", "ms"}


class Records(logging.Handler):
    """Collects the ``dragoman.requests`` records the server thread logs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.added = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.added:
            self.records.append(record)
            self.added.notify_all()

    def for_id(self, request_id: str, timeout: float = 5.0) -> logging.LogRecord:
        """The one record of this request (streams log when they end, a moment after the client)."""
        with self.added:
            assert self.added.wait_for(lambda: any(self._id(r) == request_id for r in self.records), timeout), \
                f"no log line for {request_id}"
            found = [r for r in self.records if self._id(r) == request_id]
        assert len(found) == 1
        return found[0]

    @staticmethod
    def _id(record: logging.LogRecord) -> str | None:
        return record.msg.request_id if isinstance(record.msg, RequestEntry) else None


@pytest.fixture(scope="module")
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("dragoman.requests")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def gateway(records: Records, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    config: dict[str, Any] = {
        "backends": [{"name": "test", "type": "echo", "models": ["echo"]}],
        "database": f"sqlite:///{tmp_path_factory.mktemp('request-log') / 'dragoman.db'}",
        "auth": {"admin_password": ADMIN_PASSWORD, "keys": [{"name": "team", "key": "${TEAM_KEY}"}]},
    }
    with dragoman_server(config, env={"TEAM_KEY": TEAM_KEY}) as server:
        yield server


def text_and_json(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record)
    line = JSONFormatter().format(record)
    assert "\n" not in text and "\n" not in line
    return text, json.loads(line)


def assert_nothing_secret(record: logging.LogRecord) -> None:
    text, data = text_and_json(record)
    for secret in (TEAM_KEY, WRONG_KEY, ADMIN_PASSWORD, PROMPT):
        assert secret not in text
        assert secret not in json.dumps(data)


# ----------------------------------------------------------- generation lines


def test_openai_chat_logs_every_field_in_text_and_json(gateway: ServerThread, records: Records) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TEAM_KEY)
    raw = client.chat.completions.with_raw_response.create(
        model="test/echo", messages=[{"role": "user", "content": PROMPT}])
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req_") and len(request_id) == 24
    record = records.for_id(request_id)
    assert record.levelno == logging.INFO
    text, data = text_and_json(record)
    assert set(data) == JSON_FIELDS
    assert data["logger"] == "dragoman.requests" and data["level"] == "info"
    assert data["request_id"] == request_id and data["client"] == "127.0.0.1"
    assert (data["key"], data["dialect"], data["method"], data["path"]) == ("team", "openai", "POST",
                                                                             "/v1/chat/completions")
    assert (data["model"], data["served_by"], data["status"], data["error"]) == ("test/echo", "test/echo", 200, None)
    assert data["tokens_in"] > 0 and data["tokens_out"] > 0 and data["attempts"] == 1
    assert 0 < data["ttft_ms"] <= data["ms"]
    assert f"POST /v1/chat/completions 200 {data['ms']}ms id={request_id} client=127.0.0.1 key=team " \
           f"dialect=openai model=test/echo->test/echo tokens=" in text
    assert f"ttft={data['ttft_ms']}ms" in text
    assert_nothing_secret(record)


def test_an_anthropic_stream_logs_when_it_ends(gateway: ServerThread, records: Records) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=TEAM_KEY)
    with client.messages.with_streaming_response.create(
            model="test/echo", max_tokens=50, stream=True,
            messages=[{"role": "user", "content": PROMPT}]) as response:
        request_id = response.headers["x-request-id"]
        assert response.headers["request-id"] == request_id  # Anthropic's own header: the same id
        body = "".join(response.iter_text())
    assert "message_stop" in body
    _, data = text_and_json(records.for_id(request_id))
    assert (data["dialect"], data["path"], data["status"], data["key"]) == ("anthropic", "/v1/messages", 200, "team")
    assert data["served_by"] == "test/echo" and data["tokens_out"] > 0 and data["ttft_ms"] is not None
    assert_nothing_secret(records.for_id(request_id))


def test_ollama_chat_logs_and_honours_the_clients_request_id(gateway: ServerThread, records: Records) -> None:
    client = ollama.Client(host=gateway.url, headers={"authorization": f"Bearer {TEAM_KEY}",
                                                      "x-request-id": "trace-ab12:3/x=y@z"})
    client.chat(model="test/echo", messages=[{"role": "user", "content": PROMPT}], stream=False)
    _, data = text_and_json(records.for_id("trace-ab12:3/x=y@z"))
    assert (data["dialect"], data["path"], data["model"], data["status"]) == ("ollama", "/api/chat", "test/echo", 200)
    response = httpx.post(f"{gateway.url}/api/chat", headers={"authorization": f"Bearer {TEAM_KEY}",
                                                              "x-request-id": "trace-ab12:3/x=y@z"},
                          json={"model": "test/echo", "messages": [{"role": "user", "content": "hi"}],
                                "stream": False})
    assert response.headers["x-request-id"] == "trace-ab12:3/x=y@z"


# ---------------------------------------------------------------- error lines


@pytest.mark.parametrize("dialect", ["openai", "anthropic", "ollama"])
def test_a_wrong_key_is_logged_without_the_key_and_the_id_is_in_the_answer(
        gateway: ServerThread, records: Records, dialect: str) -> None:
    if dialect == "openai":
        with pytest.raises(openai.AuthenticationError) as caught:
            openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=WRONG_KEY, max_retries=0).chat.completions.create(
                model="test/echo", messages=[{"role": "user", "content": PROMPT}])
        headers, path = caught.value.response.headers, "/v1/chat/completions"
    elif dialect == "anthropic":
        with pytest.raises(anthropic.AuthenticationError) as error:
            anthropic.Anthropic(base_url=gateway.url, api_key=WRONG_KEY, max_retries=0).messages.create(
                model="test/echo", max_tokens=5, messages=[{"role": "user", "content": PROMPT}])
        headers, path = error.value.response.headers, "/v1/messages"
        body = error.value.response.json()
        assert body["request_id"] == headers["request-id"] == headers["x-request-id"]
        assert error.value.request_id == headers["x-request-id"]
    else:
        with pytest.raises(ollama.ResponseError) as failed:
            ollama.Client(host=gateway.url, headers={"authorization": f"Bearer {WRONG_KEY}"}).chat(
                model="test/echo", messages=[{"role": "user", "content": PROMPT}])
        assert failed.value.status_code == 401
        response = httpx.post(f"{gateway.url}/api/chat", headers={"authorization": f"Bearer {WRONG_KEY}"},
                              json={"model": "test/echo", "messages": []})
        headers, path = response.headers, "/api/chat"
    record = records.for_id(headers["x-request-id"])
    text, data = text_and_json(record)
    assert (data["status"], data["dialect"], data["path"], data["key"], data["model"]) == (401, dialect, path, None,
                                                                                            None)
    assert " 401 " in text and "key=" not in text
    assert_nothing_secret(record)


@pytest.mark.parametrize("dialect", ["openai", "anthropic", "ollama"])
def test_an_unknown_model_is_logged_with_its_status_and_error(
        gateway: ServerThread, records: Records, dialect: str) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    path, body = {"openai": ("/v1/chat/completions", {"messages": messages}),
                  "anthropic": ("/v1/messages", {"max_tokens": 5, "messages": messages}),
                  "ollama": ("/api/chat", {"stream": False, "messages": messages})}[dialect]
    response = httpx.post(gateway.url + path, headers={"authorization": f"Bearer {TEAM_KEY}",
                                                       "x-request-id": f"missing-{dialect}"},
                          json={"model": "test/none\nINFO forged line", **body})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == f"missing-{dialect}"
    if dialect == "anthropic":
        assert response.json()["request_id"] == response.headers["request-id"] == f"missing-{dialect}"
    text, data = text_and_json(records.for_id(f"missing-{dialect}"))
    assert (data["status"], data["key"], data["error"]) == (404, "team", "not_found")
    assert data["model"] == "test/none\nINFO forged line"
    assert "model=test/none\\nINFO\\x20forged\\x20line->-" in text  # escaped: one line, no forged record


def test_an_upstream_failure_is_a_warning(tmp_path_factory: pytest.TempPathFactory, records: Records) -> None:
    config = {"backends": [{"name": "gone", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
                            "api_key": "upstream-secret-0123456789", "models": ["m"]}],
              "timeouts": {"connect": 1}}
    with dragoman_server(config) as server:
        response = httpx.post(f"{server.url}/v1/chat/completions",
                              json={"model": "gone/m", "messages": [{"role": "user", "content": PROMPT}]})
    assert response.status_code in (502, 503)
    record = records.for_id(response.headers["x-request-id"])
    assert record.levelno == logging.WARNING
    text, data = text_and_json(record)
    assert (data["key"], data["model"], data["served_by"]) == ("anonymous", "gone/m", None)
    assert data["error"] == "upstream_unavailable"
    assert "model=gone/m->- " in text and "error=upstream_unavailable" in text and "upstream-secret" not in text


# ------------------------------------------------ every other kind of request


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/health", 200), ("GET", "/no/such/path", 404), ("GET", "/admin/api/keys", 401),
    ("GET", "/v1/models", 200), ("GET", "/api/tags", 200), ("DELETE", "/v1/chat/completions", 405)])
def test_every_response_carries_an_id_and_is_logged(gateway: ServerThread, records: Records, method: str, path: str,
                                                    status: int) -> None:
    response = httpx.request(method, gateway.url + path, headers={"authorization": f"Bearer {TEAM_KEY}"})
    assert response.status_code == status
    request_id = response.headers["x-request-id"]
    _, data = text_and_json(records.for_id(request_id))
    assert (data["method"], data["path"], data["status"]) == (method, path, status)


@pytest.mark.parametrize("sent", ["has space", "x" * 65, "quote\"d", "", "é-accent", "semi;colon"])
def test_an_unsafe_client_id_is_replaced(gateway: ServerThread, records: Records, sent: str) -> None:
    response = httpx.get(f"{gateway.url}/health", headers={"x-request-id": sent.encode("utf-8")})
    request_id = response.headers["x-request-id"]
    assert request_id != sent and request_id.startswith("req_") and len(request_id) == 24
    records.for_id(request_id)


def test_a_64_character_client_id_is_kept(gateway: ServerThread, records: Records) -> None:
    sent = "A" * 60 + "-._9"
    response = httpx.get(f"{gateway.url}/v1/models", headers={"x-request-id": sent,
                                                              "authorization": f"Bearer {TEAM_KEY}"})
    assert response.headers["x-request-id"] == sent
    assert [v for k, v in response.headers.multi_items() if k == "x-request-id"] == [sent]  # once, not twice
    _, data = text_and_json(records.for_id(sent))
    assert data["key"] == "team"


# ------------------------------------------------------- dragoman serve's console


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_serve_prints_one_line_per_request(tmp_path: Path, log_format: str) -> None:
    (tmp_path / "dragoman.yaml").write_text("backends: [{name: test, type: echo, models: [echo]}]\n"
                                            f"database: sqlite:///{tmp_path / 'db.sqlite'}\n")
    args = ["--config", "dragoman.yaml", "--port", str(free_port()), "--api-key", TEAM_KEY]
    if log_format == "json":
        args += ["--log-format", "json"]
    with dragoman_process(*args, env=clean_environment(tmp_path), cwd=tmp_path) as running:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key=TEAM_KEY)
        raw = client.chat.completions.with_raw_response.create(
            model="test/echo", messages=[{"role": "user", "content": PROMPT}])
        request_id = raw.headers["x-request-id"]
        denied = httpx.get(f"{running.url}/v1/models", headers={"authorization": f"Bearer {WRONG_KEY}"})
        assert running.wait_for(denied.headers["x-request-id"])
    lines = [line for line in running.lines if request_id in line or denied.headers["x-request-id"] in line]
    assert len(lines) == 2
    for secret in (TEAM_KEY, WRONG_KEY, PROMPT):
        assert secret not in running.output
    if log_format == "text":
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO dragoman\.requests: POST /v1/chat/completions "
                            rf"200 [\d.]+ms id={request_id} client=127\.0\.0\.1 key=default dialect=openai "
                            r"model=test/echo->test/echo tokens=~?\d+/~?\d+ ttft=[\d.]+ms\n", lines[0]), lines[0]
        assert " GET /v1/models 401 " in lines[1]
        return
    every = [json.loads(line) for line in running.lines if line.startswith("{")]
    assert every and all({"time", "level", "logger"} <= set(e) for e in every)
    assert not [line for line in running.lines if "INFO" in line and not line.startswith("{")]  # uvicorn's too
    chat, refused = (json.loads(line) for line in lines)
    assert set(chat) == JSON_FIELDS
    assert (chat["request_id"], chat["key"], chat["status"], chat["served_by"]) == (request_id, "default", 200,
                                                                                      "test/echo")
    assert (refused["status"], refused["path"], refused["key"], refused["dialect"]) == (401, "/v1/models", None,
                                                                                         "openai")
