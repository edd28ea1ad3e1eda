"""A request body checked against a dialect's wire model: the model, or one precise 400."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dragoman.dialects.common import validation_error
from dragoman.errors import ErrorKind, GatewayError

M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], body: Any) -> M:
    if not isinstance(body, dict):
        raise GatewayError(ErrorKind.INVALID_REQUEST, "request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from exc
