"""What a backend says about a model it serves: capabilities as data, and descriptive details."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Capabilities:
    """What a model can do. A request needing something a model lacks is a clear 400."""

    chat: bool = True
    completion: bool = True
    vision: bool = False
    tools: bool = True
    reasoning: bool = False
    json_schema: bool = True
    embeddings: bool = False
    hosted_tools: bool = False  # runs the Responses API's hosted tools (web_search...) upstream
    logprobs: bool = False  # can report each answer token's log probability

    def names(self) -> list[str]:
        """Ollama-style capability names (``/api/show``)."""
        out = []
        if self.completion or self.chat:
            out.append("completion")
        for flag, name in ((self.vision, "vision"), (self.tools, "tools"),
                           (self.reasoning, "thinking"), (self.embeddings, "embedding")):
            if flag:
                out.append(name)
        return out


@dataclass(slots=True)
class ModelDetails:
    """Descriptive facts, filled from the backend where known (Ollama's ``details`` block)."""

    family: str = ""
    families: list[str] = field(default_factory=list)
    parameter_size: str = ""
    quantization_level: str = ""
    format: str = ""
    parent_model: str = ""
    size: int = 0
    digest: str = ""
    modified_at: float | None = None  # unix seconds
    license: str = ""
    template: str = ""
    parameters: str = ""


@dataclass(slots=True)
class ModelInfo:
    """A model as one backend serves it (``name`` is the upstream id, without the backend prefix)."""

    name: str
    capabilities: Capabilities = field(default_factory=Capabilities)
    context_length: int | None = None
    embedding_length: int | None = None
    details: ModelDetails = field(default_factory=ModelDetails)
    created: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific facts (model_info)


@dataclass(slots=True)
class ModelEntry:
    """A model as clients see it: ``id`` is ``<backend>/<model>`` or an alias name."""

    id: str
    backend: str
    info: ModelInfo
    alias_of: str | None = None
    loaded: bool = False  # currently in memory (local runtimes; Ollama ``/api/ps``)
    expires_at: float | None = None
