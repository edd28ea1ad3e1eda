"""What a created model (``/api/create`` with ``from``) changes: its system prompt and leading
messages go before the client's, its template (Ollama's Go template syntax, the common subset in
``gotemplate.py``) turns the conversation into the raw prompt the model reads, and ``/api/show``
describes it with its own template, parameters and licence (its parameters apply as a per-model
override, in the pipeline).

The template is rendered here, for every backend: a llamacpp model reads the prompt as it is, an
Ollama model gets it on ``/api/generate`` with ``raw: true`` (what Ollama does with a ``template``
itself, and the only way for a chat: Ollama's ``/api/chat`` takes no template), an OpenAI-compatible
one on ``/v1/completions``."""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

from dragoman.core.management import ModelRecipe
from dragoman.core.models import ModelInfo
from dragoman.core.types import ChatRequest, Message, ReasoningPart, Role, TextPart
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.gotemplate import Node, TemplateError, compile_template
from dragoman.gateway.gotemplate_render import render

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
    if system or lead:
        request = dataclasses.replace(request, messages=messages[:own] + system + lead + messages[own:])
    if recipe.template:
        request = templated(request, recipe.name, recipe.template)
    return request


# ---------------------------------------------------------------------------------- templates

RESPONSE_MARK = "\x00response\x00"  # where ``.Response`` was printed: the prompt ends there
USES_MESSAGES = re.compile(r"\.Messages\b")


@functools.lru_cache(maxsize=128)
def compiled(template: str) -> list[Node]:
    return compile_template(template)


def check_template(template: str) -> None:
    """A 400 at create time for a template dragoman cannot render (never an ignored one)."""
    try:
        compiled(template)
    except TemplateError as exc:
        raise GatewayError(ErrorKind.INVALID_REQUEST,
                           f"template: {exc}. dragoman renders the common subset of Ollama's Go templates "
                           "(fields, variables, if/else, range, with and the functions "
                           "eq, ne, lt, le, gt, ge, and, or, not, len, index, slice, json)",
                           param="template") from exc


def templated(request: ChatRequest, model: str, template: str) -> ChatRequest:
    """The conversation rendered by ``template`` as a raw prompt, as Ollama renders it: a template
    with ``.Messages`` once over all of them; an older one (``.System``, ``.Prompt``, ``.Response``)
    once per exchange, the last cut after ``.Response``."""
    where = f"model {model!r} has a template"
    if request.tools:
        raise GatewayError(ErrorKind.INVALID_REQUEST, f"{where}, which dragoman renders without tools; "
                                                      "send the request without tools", param="tools")
    turns: list[tuple[str, str]] = []
    for message in request.messages:
        if not all(isinstance(part, (TextPart, ReasoningPart)) for part in message.parts):
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"{where}, which dragoman renders for text messages "
                                                          "only (no images, tool calls or tool results)",
                               param="messages")
        role = "user" if message.role is Role.TOOL else message.role.value
        if turns and turns[-1][0] == role:  # Ollama merges consecutive messages of one role
            turns[-1] = (role, turns[-1][1] + "\n\n" + message.text)
        else:
            turns.append((role, message.text))
    try:
        tree = compiled(template)
        if USES_MESSAGES.search(template):
            prompt = render(tree, _data(system="\n\n".join(c for r, c in turns if r == "system"),
                                        messages=[{"Role": r, "Content": c, "Thinking": "", "ToolCalls": []}
                                                  for r, c in turns]))
        else:
            prompt = _legacy(tree, turns)
    except TemplateError as exc:
        raise GatewayError(ErrorKind.INVALID_REQUEST, f"{where} that fails on this conversation: {exc}",
                           param="messages") from exc
    return dataclasses.replace(request, prompt=prompt, messages=[], suffix=None)


def _legacy(tree: list[Node], turns: list[tuple[str, str]]) -> str:
    out: list[str] = []
    system = prompt = response = ""
    for role, content in turns:
        if role == "system":
            if prompt or response:
                out.append(render(tree, _data(system=system, prompt=prompt, response=response)))
                system = prompt = response = ""
            system = content
        elif role == "user":
            if response:
                out.append(render(tree, _data(system=system, prompt=prompt, response=response)))
                system = prompt = response = ""
            prompt = content
        else:
            response = content
    last = render(tree, _data(system=system, prompt=prompt, response=response + RESPONSE_MARK))
    out.append(last.split(RESPONSE_MARK, 1)[0])
    return "".join(out)


def _data(*, system: str = "", prompt: str = "", response: str = "",
          messages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What Ollama gives a template (tools and thinking are not rendered: empty, false)."""
    return {"System": system, "Prompt": prompt, "Response": response, "Messages": messages or [], "Tools": [],
            "Think": False, "ThinkLevel": "", "IsThinkSet": False}


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
