"""What a created model (``/api/create`` with ``from``) changes: its system prompt and leading
messages go before the client's, and ``/api/show`` describes it with its own template,
parameters and licence (its parameters apply as a per-model override, in the pipeline)."""

from __future__ import annotations

import dataclasses

from dragoman.core.management import ModelRecipe
from dragoman.core.models import ModelInfo
from dragoman.core.types import ChatRequest, Message, Role, TextPart

ROLES = {"system": Role.SYSTEM, "user": Role.USER, "assistant": Role.ASSISTANT}


def with_recipe(request: ChatRequest, recipe: ModelRecipe) -> ChatRequest:
    """The request with the recipe's messages first, and its system prompt unless the client sent one."""
    if request.prompt is not None:  # a raw completion has no messages to add to
        return request
    messages = list(request.messages)
    own = 0  # the client's leading system messages stay first
    while own < len(messages) and messages[own].role is Role.SYSTEM:
        own += 1
    system = [Message(Role.SYSTEM, [TextPart(recipe.system)])] if recipe.system and not own else []
    lead = [Message(ROLES[role], [TextPart(content)]) for role, content in recipe.messages if role in ROLES]
    if not system and not lead:
        return request
    return dataclasses.replace(request, messages=messages[:own] + system + lead + messages[own:])


def described(info: ModelInfo, recipe: ModelRecipe) -> ModelInfo:
    """``info`` of the source model with the recipe's template, parameters and licence."""
    details = info.details
    parameters = "\n".join(f"{key} {_value(value)}" for key, value in recipe.parameters) or details.parameters
    details = dataclasses.replace(details, template=recipe.template or details.template, parameters=parameters,
                                  license=recipe.license or details.license, parent_model=recipe.source or "")
    return dataclasses.replace(info, details=details)


def _value(value: object) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)
