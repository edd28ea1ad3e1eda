"""Per-model parameter overrides and the final merge of sampling values.

Precedence for each parameter: ``force`` (operator wins) > the request > the model's
override defaults > the client dialect's documented defaults. Keys that are not sampling
parameters (``num_ctx``, ``keep_alive``, ``think``, ...) land in ``request.options`` where the
backends that understand them read them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from dragoman.config import OverrideConfig
from dragoman.core.types import ChatRequest, Reasoning, Sampling, effort_level

SAMPLING_FIELDS = frozenset(f.name for f in fields(Sampling))
# Friendly spellings used by other dialects, mapped to sampling fields.
ALIASES = {"num_predict": "max_tokens", "stop_sequences": "stop", "max_completion_tokens": "max_tokens",
           "repetition_penalty": "repeat_penalty", "mirostat_mode": "mirostat"}


def matching(overrides: Mapping[str, OverrideConfig], *names: str) -> list[OverrideConfig]:
    """Overrides whose glob matches any of the names, most specific (longest pattern) last."""
    found = [(pattern, o) for pattern, o in overrides.items()
             if any(fnmatch.fnmatchcase(n, pattern) for n in names)]
    found.sort(key=lambda item: len(item[0]))
    return [o for _, o in found]


def request_timeout(overrides: Mapping[str, OverrideConfig], name: str) -> tuple[float, str] | None:
    """The ``request_timeout`` of the most specific override matching ``name``, and its setting."""
    found = [(pattern, o.request_timeout) for pattern, o in overrides.items()
             if o.request_timeout is not None and fnmatch.fnmatchcase(name, pattern)]
    if not found:
        return None
    pattern, seconds = max(found, key=lambda item: len(item[0]))
    assert seconds is not None
    return seconds, f"overrides[{pattern!r}].request_timeout"


def tools_policy(overrides: list[OverrideConfig]) -> str:
    """What to do with tools for a model without tool support: ``error`` (default) or ``drop``."""
    return next((o.tools for o in reversed(overrides) if o.tools is not None), "error")


def context_policy(overrides: list[OverrideConfig]) -> str:
    """What to do with a prompt longer than the window: ``error`` (default) or ``truncate_oldest``."""
    return next((o.context for o in reversed(overrides) if o.context is not None), "error")


def apply(request: ChatRequest, overrides: list[OverrideConfig]) -> ChatRequest:
    """A copy of ``request`` with defaults merged and forced values applied."""
    if not overrides:  # the common case, on every request: only the dialect's defaults to fill in
        return _with_sampling(request, _with_defaults(request.sampling, request.defaults))
    defaults: dict[str, Any] = {}
    forced: dict[str, Any] = {}
    cap: int | None = None
    exclude: bool | None = None
    for override in overrides:
        defaults.update(override.defaults)
        forced.update(override.force)
        cap = override.max_tokens_cap if override.max_tokens_cap is not None else cap
        exclude = override.exclude_reasoning if override.exclude_reasoning is not None else exclude

    sampling = replace(request.sampling, stop=list(request.sampling.stop))
    options = dict(request.options)
    reasoning = replace(request.reasoning)

    for key, value in defaults.items():
        _set(sampling, options, reasoning, key, value, only_if_unset=True)
    sampling = _with_defaults(sampling, request.defaults)  # dialect defaults fill whatever is still unset
    for key, value in forced.items():
        _set(sampling, options, reasoning, key, value, only_if_unset=False)

    if cap is not None:
        sampling.max_tokens = cap if sampling.max_tokens is None else min(sampling.max_tokens, cap)
    if exclude is not None:
        reasoning.exclude = exclude
    return replace(request, sampling=sampling, options=options, reasoning=reasoning)


def _with_sampling(request: ChatRequest, sampling: Sampling) -> ChatRequest:
    """``replace(request, sampling=sampling)`` at a fraction of its cost (this runs on every request;
    a unit test checks that every field is copied)."""
    r = request
    return ChatRequest(
        model=r.model, messages=r.messages, stream=r.stream, sampling=sampling, defaults=r.defaults, tools=r.tools,
        tool_choice=r.tool_choice, response_format=r.response_format, reasoning=r.reasoning,
        include_usage=r.include_usage, prompt=r.prompt, suffix=r.suffix, user=r.user, options=r.options,
        extensions=r.extensions, logprobs=r.logprobs, n=r.n,
    )


def _with_defaults(s: Sampling, d: Sampling) -> Sampling:
    """Each of ``s``'s unset fields (None, or no stop sequences) taken from ``d``, written out
    field by field because it runs on every request (a unit test checks that every field is merged)."""
    return Sampling(
        temperature=d.temperature if s.temperature is None else s.temperature,
        top_p=d.top_p if s.top_p is None else s.top_p,
        top_k=d.top_k if s.top_k is None else s.top_k,
        min_p=d.min_p if s.min_p is None else s.min_p,
        max_tokens=d.max_tokens if s.max_tokens is None else s.max_tokens,
        stop=list(s.stop or d.stop),
        seed=d.seed if s.seed is None else s.seed,
        presence_penalty=d.presence_penalty if s.presence_penalty is None else s.presence_penalty,
        frequency_penalty=d.frequency_penalty if s.frequency_penalty is None else s.frequency_penalty,
        repeat_penalty=d.repeat_penalty if s.repeat_penalty is None else s.repeat_penalty,
        typical_p=d.typical_p if s.typical_p is None else s.typical_p,
        mirostat=d.mirostat if s.mirostat is None else s.mirostat,
        mirostat_tau=d.mirostat_tau if s.mirostat_tau is None else s.mirostat_tau,
        mirostat_eta=d.mirostat_eta if s.mirostat_eta is None else s.mirostat_eta,
        logit_bias=d.logit_bias if s.logit_bias is None else s.logit_bias,
        grammar=d.grammar if s.grammar is None else s.grammar,
    )


def _set(sampling: Sampling, options: dict[str, Any], reasoning: Reasoning, key: str, value: Any,
         *, only_if_unset: bool) -> None:
    key = ALIASES.get(key, key)
    if key in SAMPLING_FIELDS:
        current = getattr(sampling, key)
        if only_if_unset and current not in (None, []):
            return
        if key == "stop" and isinstance(value, str):
            value = [value]
        setattr(sampling, key, value)
    elif key in ("reasoning_effort", "think"):
        if only_if_unset and (reasoning.enabled is not None or reasoning.effort is not None):
            return
        if isinstance(value, bool):
            reasoning.enabled, reasoning.effort = value, None
        elif value is not None:
            reasoning.enabled, reasoning.effort = value != "none", effort_level(str(value))
    elif not (only_if_unset and key in options):
        options[key] = value
