"""When the ``OTEL_*`` variables turn tracing on (see dragoman.tracing)."""

from __future__ import annotations

import pytest

from dragoman.tracing import provider_from_environment, wanted


@pytest.mark.parametrize(("environ", "on"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ({"OTEL_SERVICE_NAME": "gw"}, False),
])
def test_tracing_is_off_unless_asked_for(environ: dict[str, str], on: bool) -> None:
    assert wanted(environ) is on


def test_an_unknown_exporter_is_named() -> None:
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER: 'zipkin' is not one of otlp, console, none"):
        provider_from_environment({"OTEL_TRACES_EXPORTER": "console,zipkin"})
