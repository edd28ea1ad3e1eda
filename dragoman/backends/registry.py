"""Backend types by config name, imported lazily so an unused backend costs nothing at start."""

from __future__ import annotations

import importlib

from dragoman.backends.base import Backend

BACKEND_TYPES: dict[str, str] = {
    "openai": "dragoman.backends.openai:OpenAIBackend",
    "openai-responses": "dragoman.backends.openai_responses:OpenAIResponsesBackend",
    "echo": "dragoman.backends.echo:EchoBackend",
    "ollama": "dragoman.backends.ollama:OllamaBackend",
    "anthropic": "dragoman.backends.anthropic:AnthropicBackend",
    "llamacpp": "dragoman.backends.llamacpp:LlamaCppBackend",
}


def backend_class(type_name: str) -> type[Backend]:
    try:
        target = BACKEND_TYPES[type_name]
    except KeyError:
        known = ", ".join(sorted(BACKEND_TYPES))
        raise ValueError(f"unknown backend type {type_name!r} (known: {known})") from None
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Backend] = getattr(module, attr)
    return cls
