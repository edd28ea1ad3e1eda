"""What a request reserves against its key's budget while it runs.

A budget is checked when a request is admitted, but the request's tokens are known only when it
ends; concurrent requests would all pass the check and overspend together. So at admission the
limiter also reserves what the request may spend, in the same atomic step as the check, and
when it ends settles the reservation to what it really spent (on errors and cancellations too).
A request is admitted while the key's spend plus the reservations in flight is under the budget,
so concurrent requests overspend it by at most one request's reservation (the last one admitted),
as long as each stays within its reservation.

A request reserves its prompt (estimated at about four characters a token) plus the most its
answer may take: the client's ``max_tokens``, else its dialect's default, else the model's
``reserve_tokens`` (per model glob, first match, else the default). A cost budget reserves the
price of those tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol

from dragoman.core.tokens import estimate_prompt_tokens
from dragoman.core.types import ChatRequest

DEFAULT_RESERVE_TOKENS = 1024


@dataclass(slots=True, frozen=True)
class Reservation:
    tokens: int = 0
    cost: float = 0.0


NO_RESERVATION = Reservation()


class Pricing(Protocol):
    def cost(self, prompt_tokens: int, completion_tokens: int, *names: str | None) -> float | None: ...


class Reserver:
    """Works out a request's reservation (see the module docstring)."""

    def __init__(self, reserve_tokens: int = DEFAULT_RESERVE_TOKENS, by_model: Mapping[str, int] | None = None,
                 prices: Pricing | None = None) -> None:
        for name, value in {"reserve_tokens": reserve_tokens, **(by_model or {})}.items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: a reservation is a whole number of tokens >= 0, not {value!r}")
        self._default = reserve_tokens
        self._by_model = dict(by_model or {})
        self._prices = prices

    def answer_tokens(self, model: str) -> int:
        """What an answer without a ``max_tokens`` reserves on ``model``."""
        return next((n for glob, n in self._by_model.items() if fnmatchcase(model, glob)), self._default)

    def reserve(self, model: str, request: ChatRequest | None) -> Reservation:
        """``request`` on ``model`` (``<backend>/<model>``); nothing without a request."""
        if request is None:
            return NO_RESERVATION
        prompt = estimate_prompt_tokens(request)
        answer = request.sampling.max_tokens or request.defaults.max_tokens or self.answer_tokens(model)
        cost = self._prices.cost(prompt, answer, model, request.model) if self._prices is not None else None
        return Reservation(prompt + answer, cost or 0.0)
