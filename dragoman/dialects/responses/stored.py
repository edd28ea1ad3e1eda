"""Stored responses over HTTP: ``GET`` and ``DELETE /v1/responses/{id}``, ``GET .../input_items``,
``POST .../cancel``; and the two calls the generation path makes, :meth:`StoredResponses.previous`
(the conversation ``previous_response_id`` names) and :meth:`StoredResponses.keep` (store an answer).

A whole answer waits for its row to be written (bounded by the database timeout), so a client that
chains right away finds it on any worker; a streamed one writes it before the terminal event goes
out (the encoder holds that event back for its ``tail``, and the handler awaits :meth:`Pending.wait`
first). A failed write is logged and the answer served all the same.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dragoman.core.service import CallContext, GatewayService
from dragoman.core.types import ChatResponse, Message
from dragoman.dialects.responses import output
from dragoman.dialects.responses.background import BackgroundResponses
from dragoman.dialects.responses.convert import ResponsesRequest
from dragoman.dialects.responses.store import ResponseStore, StoredRow, answered_history, history_of, owner_of
from dragoman.dialects.responses.stream import Completed
from dragoman.errors import ErrorKind, GatewayError
from dragoman.serving.answers import json_response

# Statuses whose conversation can be continued.
FINISHED = ("completed", "incomplete")


class Pending:
    """A kept answer's write, started by the encoder's completion callback (or the whole answer's
    render); the handler awaits :meth:`wait` before the answer's last bytes go out."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: asyncio.Future[bool] | None = None

    async def wait(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            await task


class StoredResponses:
    def __init__(self, service: GatewayService, store: ResponseStore, background: BackgroundResponses) -> None:
        self.service = service
        self.store = store
        self.background = background

    # ------------------------------------------------------------------ the generation path

    async def previous(self, body: Any, ctx: CallContext) -> list[Message] | None:
        previous_id = body.get("previous_response_id") if isinstance(body, dict) else None
        if previous_id is None:
            return None
        if not isinstance(previous_id, str):
            raise GatewayError(ErrorKind.INVALID_REQUEST, "previous_response_id must be a string",
                               param="previous_response_id")
        stored = await self.store.get(previous_id, owner_of(ctx.api_key))
        if stored is None:
            raise GatewayError(ErrorKind.NOT_FOUND, f"Previous response with id '{previous_id}' not found.",
                               param="previous_response_id", code="previous_response_not_found")
        if stored.status not in FINISHED:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"Previous response with id '{previous_id}' is "
                               f"{stored.status}; only a completed or incomplete response can be continued.",
                               param="previous_response_id")
        return history_of(stored.history)

    async def keep(self, req: ResponsesRequest, ctx: CallContext, body: dict[str, Any],
                   response: ChatResponse) -> bool:
        """Store an answer (never raises; False when it was not stored)."""
        history = answered_history(req.history, response)
        return await self.store.save(body["id"], owner_of(ctx.api_key), status=body["status"], background=False,
                                     body=body, input_items=output.input_items(req.raw_input), history=history)

    def keeper(self, req: ResponsesRequest, ctx: CallContext) -> tuple[Completed | None, Pending | None]:
        """For a streamed answer: the encoder's completion callback, and the write it starts."""
        if not req.store:
            return None, None
        pending = Pending()

        def completed(body: dict[str, Any], response: ChatResponse) -> None:
            pending.task = asyncio.ensure_future(self.keep(req, ctx, body, response))
        return completed, pending

    # ------------------------------------------------------- routes (the dialect wraps them: serving.endpoints.guarded)

    async def _row(self, request: Request, ctx: CallContext) -> StoredRow:
        response_id = request.path_params["response_id"]
        stored = await self.store.get(response_id, owner_of(ctx.api_key))
        if stored is None:
            raise GatewayError(ErrorKind.NOT_FOUND, f"No response found with id '{response_id}'.", code="not_found")
        return stored

    async def retrieve(self, request: Request, ctx: CallContext) -> Response:
        if request.query_params.get("stream") in ("true", "1"):
            raise GatewayError(ErrorKind.INVALID_REQUEST, "replaying a stored response as a stream is not "
                               "supported", param="stream")
        return json_response((await self._row(request, ctx)).body)

    async def delete(self, request: Request, ctx: CallContext) -> Response:
        response_id = request.path_params["response_id"]
        if not await self.store.delete(response_id, owner_of(ctx.api_key)):
            raise GatewayError(ErrorKind.NOT_FOUND, f"No response found with id '{response_id}'.",
                               code="not_found")
        self.background.cancel(response_id)
        return json_response({"id": response_id, "object": "response.deleted", "deleted": True})

    async def cancel(self, request: Request, ctx: CallContext) -> Response:
        """Cancel a background response still queued or in progress; one that has ended is returned
        as it is; a response that was not created in the background cannot be cancelled (400)."""
        row = await self._row(request, ctx)
        if not row.background:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "Cannot cancel a synchronous response: only "
                               "responses created with background=true can be cancelled.")
        body = row.body
        if row.status in ("queued", "in_progress"):
            cancelled = {**body, "status": "cancelled"}
            if await self.store.finish(row.id, status="cancelled", body=cancelled):
                body = cancelled
                self.background.cancel(row.id)
            else:  # it ended meanwhile: as it ended
                body = (await self._row(request, ctx)).body
        return json_response(body)

    async def list_input_items(self, request: Request, ctx: CallContext) -> Response:
        """A stored response's input items, a page at a time (``order``, ``after``, ``limit``)."""
        stored = await self._row(request, ctx)
        order, after, limit = _page_params(request)
        items = stored.input_items if order == "asc" else stored.input_items[::-1]
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                raise GatewayError(ErrorKind.NOT_FOUND, f"No input item found with id '{after}'.",
                                   param="after", code="not_found")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                              "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})


def _page_params(request: Request) -> tuple[str, str | None, int]:
    """``order`` (``desc`` by default, as the API), ``after`` and ``limit`` (1 to 100, 20 by default)."""
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise GatewayError(ErrorKind.INVALID_REQUEST, "order must be 'asc' or 'desc'", param="order")
    raw_limit = query.get("limit", "20")
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "limit must be an integer from 1 to 100", param="limit")
    return order, query.get("after"), limit
