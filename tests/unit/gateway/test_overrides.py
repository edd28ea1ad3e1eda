"""The per-request merge of sampling values, written out field by field for speed: these tests
fail when a field is added to ``Sampling`` or ``ChatRequest`` and the merge or copy misses it."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from dragoman.config import OverrideConfig
from dragoman.core.types import (
    ChatRequest,
    Message,
    Reasoning,
    ResponseFormat,
    Role,
    Sampling,
    TextPart,
    Tool,
    ToolChoice,
)
from dragoman.gateway import overrides


def _distinct(cls: type, offset: float) -> dict[str, Any]:
    """A value for every field of ``cls`` that differs from its default and from other offsets."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        values[f.name] = [f"stop{offset}"] if f.name == "stop" else offset + len(values)
    return values


def test_every_unset_sampling_field_takes_the_dialect_default() -> None:
    defaults = Sampling(**_distinct(Sampling, 100.0))
    request = ChatRequest(model="m", messages=[], defaults=defaults)
    planned = overrides.apply(request, [])
    for f in fields(Sampling):
        assert getattr(planned.sampling, f.name) == getattr(defaults, f.name), f.name
    assert planned.sampling.stop is not defaults.stop  # a copy: planning never edits the constant


def test_every_set_sampling_field_beats_the_dialect_default() -> None:
    given = Sampling(**_distinct(Sampling, 1.0))
    request = ChatRequest(model="m", messages=[], sampling=given, defaults=Sampling(**_distinct(Sampling, 100.0)))
    planned = overrides.apply(request, [])
    assert planned.sampling == given
    assert request.sampling == given  # the client's request is left as it was


def test_planning_copies_every_request_field() -> None:
    request = ChatRequest(
        model="m", messages=[Message(Role.USER, [TextPart("hi")])], stream=True,
        sampling=Sampling(temperature=0.5), defaults=Sampling(top_p=0.9), tools=[Tool("f", "d", {})],
        tool_choice=ToolChoice("required"), response_format=ResponseFormat("json_object"),
        reasoning=Reasoning(effort="low"), include_usage=True, prompt="p", suffix="s", user="u",
        options={"num_ctx": 8}, extensions={"openai": {"x": 1}}, logprobs=3, n=2,
    )
    planned = overrides.apply(request, [])
    assert planned == replace(request, sampling=Sampling(temperature=0.5, top_p=0.9))
    assert [f.name for f in fields(ChatRequest) if getattr(planned, f.name) == getattr(ChatRequest("", []), f.name)] \
        == [], "every field was set to a non-default value above, so every field must have been copied"


def test_override_defaults_sit_between_the_request_and_the_dialect() -> None:
    request = ChatRequest(model="m", messages=[], sampling=Sampling(top_p=0.5),
                          defaults=Sampling(temperature=1.0, top_p=1.0, max_tokens=16))
    rule = OverrideConfig.model_validate({"temperature": 0.2, "top_p": 0.3, "force": {"seed": 7}, "max_tokens_cap": 8})
    planned = overrides.apply(request, [rule])
    assert (planned.sampling.temperature, planned.sampling.top_p) == (0.2, 0.5)
    assert (planned.sampling.seed, planned.sampling.max_tokens) == (7, 8)
