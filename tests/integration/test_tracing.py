"""OpenTelemetry spans over real HTTP: one server span per request with the GenAI attributes, a span
per routing attempt and per upstream call under it, a client's ``traceparent`` continued; and
``dragoman serve`` exporting over OTLP/HTTP when the standard ``OTEL_*`` variables say so."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.openai_upstream import MODELS, FakeOpenAI
from tests.processes import clean_environment, dragoman_process, free_port
from tests.servers import ServerThread, dragoman_server

PROMPT = "a-prompt-that-never-reaches-a-span-0815"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    with ServerThread(FakeOpenAI().app()) as server:
        yield server


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def gateway(upstream: ServerThread, exporter: InMemorySpanExporter) -> Iterator[ServerThread]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = sock.getsockname()[1]
    sock.close()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config: dict[str, Any] = {
        "backends": [{"name": "up", "type": "openai", "base_url": f"{upstream.url}/v1", "models": MODELS,
                      "api_key": "upstream-key-0123456789"},
                     {"name": "dead", "type": "openai", "base_url": f"http://127.0.0.1:{dead}/v1",
                      "models": ["gpt-test"]}],
        # The dead deployment first: the request's second attempt is the one that answers.
        "models": [{"name": "pair", "deployments": [{"target": "dead/gpt-test", "priority": 0},
                                                    {"target": "up/gpt-test", "priority": 1}]}],
        "routing": {"retries": 0, "health_interval": 0,
                    "cooldown": {"failures": 1000, "window": 1, "period": 0.1}},
        "timeouts": {"connect": 2},
    }
    try:
        with dragoman_server(config, tracer_provider=provider) as server:
            yield server
    finally:
        provider.shutdown()


def spans_of(exporter: InMemorySpanExporter, request_id: str, count: int, timeout: float = 5.0) -> list[ReadableSpan]:
    """The spans of the trace whose server span has this request id (ended spans only)."""
    deadline = time.monotonic() + timeout
    while True:
        finished = exporter.get_finished_spans()
        roots = [s for s in finished if (s.attributes or {}).get("dragoman.request_id") == request_id]
        if roots:
            trace_id = roots[0].context.trace_id
            spans = [s for s in finished if s.context.trace_id == trace_id]
            if len(spans) >= count:
                return spans
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(finished)} spans, not the {count} of {request_id}")
        time.sleep(0.02)


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def no_prompt(spans: list[ReadableSpan]) -> None:
    for span in spans:
        assert PROMPT not in repr(dict(span.attributes or {}))
        assert "upstream-key" not in repr(dict(span.attributes or {}))


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_is_a_server_span_with_attempts_and_upstream_calls(
        gateway: ServerThread, exporter: InMemorySpanExporter, stream: bool) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused")
    messages: Any = [{"role": "user", "content": PROMPT}]
    if stream:
        with client.chat.completions.with_streaming_response.create(
                model="pair", messages=messages, stream=True,
                stream_options={"include_usage": True}) as response:
            request_id = response.headers["x-request-id"]
            assert "[DONE]" in "".join(response.iter_text())
    else:
        raw = client.chat.completions.with_raw_response.create(model="pair", messages=messages)
        request_id = raw.headers["x-request-id"]
        assert raw.parse().choices[0].message.content == f"You said: {PROMPT}"
    spans = spans_of(exporter, request_id, 5)
    assert len(spans) == 5
    request = one(spans, "POST /v1/chat/completions")
    failed, answered = one(spans, "attempt dead/gpt-test"), one(spans, "attempt up/gpt-test")
    calls = sorted((s for s in spans if s.name == "chat gpt-test"), key=lambda s: s.start_time or 0)
    assert len(calls) == 2

    assert request.kind is SpanKind.SERVER and request.parent is None
    attributes = dict(request.attributes or {})
    assert attributes["http.request.method"] == "POST" and attributes["url.path"] == "/v1/chat/completions"
    assert attributes["http.response.status_code"] == 200
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "pair"
    assert attributes["gen_ai.response.model"] == "up/gpt-test"
    assert attributes["gen_ai.usage.input_tokens"] > 0 and attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["dragoman.attempts"] == 2 and attributes["dragoman.dialect"] == "openai"
    assert request.status.status_code is StatusCode.UNSET

    for attempt, number in ((failed, 1), (answered, 2)):
        assert attempt.parent is not None and attempt.parent.span_id == request.context.span_id
        assert attempt.kind is SpanKind.INTERNAL
        assert dict(attempt.attributes or {})["dragoman.attempt"] == number
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "upstream_unavailable"
    assert answered.status.status_code is StatusCode.UNSET

    dead_call, up_call = calls
    assert dead_call.parent is not None and dead_call.parent.span_id == failed.context.span_id
    assert up_call.parent is not None and up_call.parent.span_id == answered.context.span_id
    assert dead_call.status.status_code is StatusCode.ERROR
    call = dict(up_call.attributes or {})
    assert up_call.kind is SpanKind.CLIENT
    assert (call["gen_ai.operation.name"], call["gen_ai.provider.name"], call["gen_ai.system"]) == (
        "chat", "openai", "openai")
    assert call["gen_ai.request.model"] == "gpt-test" and call["gen_ai.response.model"] == "gpt-test"
    assert call["gen_ai.response.finish_reasons"] == ("stop",)
    assert call["gen_ai.usage.input_tokens"] > 0 and call["gen_ai.usage.output_tokens"] > 0
    # The upstream call lasts until its stream ends, past the attempt that opened it.
    assert (up_call.end_time or 0) >= (answered.end_time or 0)
    assert (request.end_time or 0) >= (up_call.end_time or 0)
    no_prompt(spans)


def test_a_clients_traceparent_is_continued(gateway: ServerThread, exporter: InMemorySpanExporter) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions",
                          headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01", "x-request-id": "traced-1"},
                          json={"model": "up/gpt-test", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    spans = spans_of(exporter, "traced-1", 3)
    request = one(spans, "POST /v1/chat/completions")
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert request.parent is not None and format(request.parent.span_id, "016x") == "00f067aa0ba902b7"


def test_errors_and_other_requests_have_spans_too(gateway: ServerThread, exporter: InMemorySpanExporter) -> None:
    response = httpx.post(f"{gateway.url}/v1/messages", headers={"x-request-id": "traced-404"},
                          json={"model": "up/none", "max_tokens": 5, "messages": [{"role": "user", "content": PROMPT}]})
    assert response.status_code == 404
    request = one(spans_of(exporter, "traced-404", 1), "POST /v1/messages")
    attributes = dict(request.attributes or {})
    assert attributes["http.response.status_code"] == 404 and attributes["dragoman.dialect"] == "anthropic"
    assert attributes["gen_ai.request.model"] == "up/none" and attributes["error.type"] == "not_found"

    response = httpx.post(f"{gateway.url}/v1/chat/completions", headers={"x-request-id": "traced-500"},
                          json={"model": "up/gpt-error-500", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 502
    spans = spans_of(exporter, "traced-500", 3)
    server = one(spans, "POST /v1/chat/completions")
    assert server.status.status_code is StatusCode.ERROR
    assert one(spans, "chat gpt-error-500").status.status_code is StatusCode.ERROR

    httpx.get(f"{gateway.url}/health", headers={"x-request-id": "traced-health"})
    assert dict(one(spans_of(exporter, "traced-health", 1), "GET /health").attributes or {})[
        "http.response.status_code"] == 200


def test_embeddings_have_an_upstream_span(gateway: ServerThread, exporter: InMemorySpanExporter) -> None:
    response = httpx.post(f"{gateway.url}/v1/embeddings", headers={"x-request-id": "traced-embed"},
                          json={"model": "up/text-embedding-test", "input": PROMPT})
    assert response.status_code == 200
    spans = spans_of(exporter, "traced-embed", 3)
    call = dict(one(spans, "embeddings text-embedding-test").attributes or {})
    assert call["gen_ai.operation.name"] == "embeddings" and call["gen_ai.usage.input_tokens"] == 7
    request = dict(one(spans, "POST /v1/embeddings").attributes or {})
    assert request["gen_ai.operation.name"] == "embeddings" and request["gen_ai.usage.input_tokens"] == 7
    no_prompt(spans)


# ------------------------------------------------- dragoman serve + OTLP/HTTP


class Collector:
    """An OTLP/HTTP trace receiver: decodes each protobuf export into (name, attributes) pairs."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.lock = threading.Lock()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/traces", self.traces, methods=["POST"])])

    async def traces(self, request: Request) -> Response:
        export = ExportTraceServiceRequest.FromString(await request.body())
        with self.lock:
            for resource_spans in export.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attributes = {a.key: _value(a.value) for a in span.attributes}
                        self.spans.append((span.name, attributes, resource))
        return Response(ExportTraceServiceRequest().SerializeToString(), media_type="application/x-protobuf")


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, kind)


def test_serve_exports_over_otlp_when_the_environment_says_so(tmp_path: Path) -> None:
    collector = Collector()
    with ServerThread(collector.app()) as receiver:
        env = clean_environment(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_SERVICE_NAME="gw-test",
                                OTEL_BSP_SCHEDULE_DELAY="50")
        (tmp_path / "dragoman.yaml").write_text("backends: [{name: test, type: echo, models: [echo]}]\n"
                                                f"database: sqlite:///{tmp_path / 'db.sqlite'}\n")
        with dragoman_process("--config", "dragoman.yaml", "--port", str(free_port()), env=env,
                              cwd=tmp_path) as running:
            response = httpx.post(f"{running.url}/api/chat", headers={"x-request-id": "otlp-1"},
                                  json={"model": "test/echo", "stream": False,
                                        "messages": [{"role": "user", "content": "hello"}]})
            assert response.status_code == 200
            deadline = time.monotonic() + 10
            while not any(a.get("dragoman.request_id") == "otlp-1" for _, a, _ in collector.spans):
                assert time.monotonic() < deadline, collector.spans
                time.sleep(0.05)
    name, attributes, resource = next(s for s in collector.spans if s[1].get("dragoman.request_id") == "otlp-1")
    assert name == "POST /api/chat" and resource["service.name"] == "gw-test"
    assert attributes["gen_ai.request.model"] == "test/echo" and attributes["gen_ai.response.model"] == "test/echo"
    assert attributes["gen_ai.usage.output_tokens"] > 0 and attributes["http.response.status_code"] == 200
    assert {n for n, _, _ in collector.spans} >= {"POST /api/chat", "attempt test/echo", "chat echo"}
