"""OpenTelemetry spans for requests, routing attempts and upstream calls (``pip install 'dragoman[otel]'``).

Off unless the standard OpenTelemetry variables ask for traces: ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (OTLP over HTTP/protobuf), or ``OTEL_TRACES_EXPORTER``
(``otlp``, ``console``; ``none`` turns it off again, as does ``OTEL_SDK_DISABLED=true``). The
exporter, service name, resource attributes and sampler then read the rest of the ``OTEL_*``
variables themselves. Off, no span object is made and no ``opentelemetry`` module is imported.

Spans (GenAI semantic conventions, https://opentelemetry.io/docs/specs/semconv/gen-ai/):

- ``POST /v1/chat/completions`` (server): the whole request, stream included; continues a
  client's ``traceparent``; the model requested and served, tokens, finish reasons.
- ``attempt <deployment>`` (internal): one routing attempt, until its first event or failure.
- ``chat <upstream model>`` (client): the upstream call, a child of its attempt, until the
  upstream's stream ends; provider, models, tokens, finish reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from dragoman.core.events import Event, MessageEnd, MessageStart, StreamError
from dragoman.errors import GatewayError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

EXPORTERS = ("otlp", "console", "none")


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (see the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(environ.get(name, "").strip() for name in ("OTEL_EXPORTER_OTLP_ENDPOINT",
                                                            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def provider_from_environment(environ: Mapping[str, str]) -> TracerProvider:
    """A tracer provider exporting as the ``OTEL_*`` variables say (batched, off the request path).

    Raises ``ValueError`` for an exporter name it does not know. Needs the ``otel`` extra."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER: {unknown[0]!r} is not one of {', '.join(EXPORTERS)}")
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; with neither naming the
    # service, it is "dragoman" rather than the SDK's "unknown_service".
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "dragoman"}))
    provider = TracerProvider(resource=resource)
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
        elif name == "console":
            exporter = ConsoleSpanExporter()
        else:
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class Tracing:
    """Makes dragoman's spans with one tracer provider's tracer (built only when tracing is on)."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import context, propagate, trace

        from dragoman import __version__

        self._trace = trace
        self._context = context
        self._propagate = propagate
        self.tracer: Tracer = provider.get_tracer("dragoman", __version__)

    # ---------------------------------------------------------------- request

    def start_request(self, method: str, path: str, headers: list[tuple[bytes, bytes]], request_id: str,
                      client: str | None) -> tuple[Span, object]:
        """The request's server span, made current (continuing a client's ``traceparent``), and
        the token that :meth:`end_request` detaches."""
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers
                   if name in (b"traceparent", b"tracestate", b"baggage")}
        parent = self._propagate.extract(carrier) if carrier else None
        attributes: dict[str, Any] = {"http.request.method": method, "url.path": path,
                                      "dragoman.request_id": request_id}
        if client:
            attributes["client.address"] = client
        span = self.tracer.start_span(f"{method} {path}", context=parent, kind=self._trace.SpanKind.SERVER,
                                      attributes=attributes)
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        return span, token

    def end_request(self, span: Span, token: object, *, status: int, dialect: str | None, key: str | None,
                    outcome: Any) -> None:
        """Ends the request span with its status and, for a generation, the GenAI attributes."""
        try:
            span.set_attribute("http.response.status_code", status)
            if dialect:
                span.set_attribute("dragoman.dialect", dialect)
            if key:
                span.set_attribute("dragoman.key.name", key)
            if outcome is not None:
                span.set_attribute("gen_ai.operation.name", "chat" if outcome.kind == "chat" else "embeddings")
                span.set_attribute("gen_ai.request.model", outcome.requested_model)
                if outcome.target:
                    span.set_attribute("gen_ai.response.model", outcome.target)
                usage = outcome.usage
                span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
                if outcome.finish_reason:
                    span.set_attribute("gen_ai.response.finish_reasons", (outcome.finish_reason,))
                if outcome.attempts:
                    span.set_attribute("dragoman.attempts", outcome.attempts)
                if outcome.error_kind:
                    span.set_attribute("error.type", outcome.error_kind)
            if status >= 500 or (outcome is not None and outcome.error_kind and outcome.error_kind != "cancelled"):
                span.set_status(self._trace.StatusCode.ERROR)
        finally:
            self._context.detach(token)  # type: ignore[arg-type]
            span.end()

    # ---------------------------------------------------------------- routing

    @contextlib.contextmanager
    def attempt(self, route: str, deployment: str, number: int) -> Iterator[Span]:
        """One routing attempt, current while it runs (the upstream call's span is its child)."""
        with self.tracer.start_as_current_span(
                f"attempt {deployment}", record_exception=False, set_status_on_exception=False,
                attributes={"dragoman.route": route, "dragoman.deployment": deployment,
                            "dragoman.attempt": number}) as span:
            try:
                yield span
            except GatewayError as exc:
                span.set_attribute("error.type", exc.kind.value)
                span.set_status(self._trace.StatusCode.ERROR, exc.message)
                raise

    def upstream(self, operation: str, provider: str, model: str) -> Span:
        """The upstream call's client span (a child of the current attempt); the caller ends it.
        ``gen_ai.system`` is the older name of ``gen_ai.provider.name``, for tools that read that one."""
        return self.tracer.start_span(
            f"{operation} {model}", kind=self._trace.SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": operation, "gen_ai.provider.name": provider,
                        "gen_ai.system": provider, "gen_ai.request.model": model})

    def failed(self, span: Span, error: BaseException) -> None:
        """Ends an upstream span that failed (a ``GatewayError`` names its kind)."""
        if isinstance(error, GatewayError):
            span.set_attribute("error.type", error.kind.value)
            span.set_status(self._trace.StatusCode.ERROR, error.message)
        else:
            span.set_attribute("error.type", type(error).__name__)
        span.end()

    def traced_events(self, span: Span, first: Event, events: AsyncIterator[Event]) -> TracedEvents:
        return TracedEvents(self, span, first, events)


class TracedEvents:
    """An upstream's events, passed through; the span ends with the stream, with the model, usage
    and finish reason the upstream reported."""

    __slots__ = ("_done", "_events", "_span", "_tracing")

    def __init__(self, tracing: Tracing, span: Span, first: Event, events: AsyncIterator[Event]) -> None:
        self._tracing = tracing
        self._span = span
        self._events = events
        self._done = False
        self._observe(first)

    def __aiter__(self) -> TracedEvents:
        return self

    def _observe(self, event: Event) -> None:
        if isinstance(event, MessageStart):
            if event.model:
                self._span.set_attribute("gen_ai.response.model", event.model)
            if event.id:
                self._span.set_attribute("gen_ai.response.id", event.id)
        elif isinstance(event, MessageEnd):
            self._span.set_attribute("gen_ai.response.finish_reasons", (event.finish_reason,))
            if event.usage.prompt_tokens or event.usage.completion_tokens:
                self._span.set_attribute("gen_ai.usage.input_tokens", event.usage.prompt_tokens)
                self._span.set_attribute("gen_ai.usage.output_tokens", event.usage.completion_tokens)
        elif isinstance(event, StreamError):
            self._tracing.failed(self._span, event.error)
            self._done = True

    async def __anext__(self) -> Event:
        try:
            event = await anext(self._events)
        except StopAsyncIteration:
            self._end()
            raise
        except BaseException as exc:
            if not self._done:
                self._done = True
                self._tracing.failed(self._span, exc)
            raise
        self._observe(event)
        return event

    def _end(self) -> None:
        if not self._done:
            self._done = True
            self._span.end()

    async def aclose(self) -> None:
        try:
            await self._events.aclose()  # type: ignore[attr-defined]
        finally:
            self._end()
