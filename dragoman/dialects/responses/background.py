"""``background: true``: the response is answered at once (``queued``), generated in a task the app
owns, and stored when done; clients poll ``GET /v1/responses/{id}`` and may cancel it.

The tasks are bounded (``responses.max_background`` per process; more are a 429) and belong to the
app's lifespan: shutdown cancels them, and each records that it was interrupted (``failed``)
rather than leaving a response ``in_progress`` forever. The stored row is the truth every worker
shares: a cancel marks it ``cancelled`` whichever worker it reaches, the task (if it runs in that
worker) stops, and a task elsewhere finds its result refused, since only a response still queued
or in progress may change (see the store's ``finish``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from dragoman.core.accumulate import accumulate
from dragoman.core.ids import now
from dragoman.core.service import CallContext, ChatStream
from dragoman.dialects.responses import output
from dragoman.dialects.responses.convert import ResponsesRequest
from dragoman.dialects.responses.store import ResponseStore, answered_history, history_json, owner_of
from dragoman.dialects.responses.stream import whole_response
from dragoman.errors import ErrorKind, GatewayError

log = logging.getLogger("dragoman.responses")

Starter = Callable[[ResponsesRequest, CallContext], Awaitable[ChatStream]]
SHUTDOWN_WAIT = 5.0  # seconds shutdown waits for cancelled tasks to record their state


class BackgroundResponses:
    def __init__(self, store: ResponseStore, *, limit: int) -> None:
        self.store = store
        self.limit = limit
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()  # cancelled by a client, not by shutdown
        self._closing = False

    def __len__(self) -> int:
        return len(self._tasks)

    async def create(self, req: ResponsesRequest, ctx: CallContext, start: Starter) -> dict[str, Any]:
        """Store the request as a ``queued`` response and start generating it; the queued object."""
        if req.chat.stream:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "background responses cannot be streamed by this gateway; "
                               "create it without stream, then poll GET /v1/responses/{id}", param="stream")
        if not req.store:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "background responses must be stored: drop store: false",
                               param="store")
        if self._closing or len(self._tasks) >= self.limit:
            raise GatewayError(ErrorKind.RATE_LIMITED, f"this gateway is generating {len(self._tasks)} background "
                               "responses already (responses.max_background); try again later", retry_after=1)
        response_id = output.response_id()
        queued = _background(output.response_object(req, response_id, now(), status="queued", output=[]))
        if not await self.store.save(response_id, owner_of(ctx.api_key), status="queued", background=True,
                                     body=queued, input_items=output.input_items(req.raw_input),
                                     history=history_json(req.history)):
            raise GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, "the background response could not be stored; try "
                               "again", status=503, retry_after=1)
        task = asyncio.create_task(self._run(req, ctx, start, queued), name=f"dragoman-background-{response_id}")
        self._tasks[response_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(response_id, None))
        return queued

    def cancel(self, response_id: str) -> None:
        """Stop the task generating ``response_id``, if it runs in this process."""
        task = self._tasks.get(response_id)
        if task is not None:
            self._cancelled.add(response_id)
            task.cancel()

    async def _run(self, req: ResponsesRequest, ctx: CallContext, start: Starter, queued: dict[str, Any]) -> None:
        response_id = queued["id"]
        try:
            await self.store.finish(response_id, status="in_progress", body={**queued, "status": "in_progress"})
            final, history = await _generate(req, ctx, start, response_id, queued["created_at"])
            await self.store.finish(response_id, status=final["status"], body=final, history=history)
        except asyncio.CancelledError:
            if response_id not in self._cancelled:  # shutdown: say so rather than stay in_progress
                error = {"code": "server_error", "message": "the gateway shut down before the response completed"}
                await self.store.finish(response_id, status="failed",
                                        body={**queued, "status": "failed", "error": error})
            raise
        except Exception:  # a bug: the response fails, the task does not die silently
            log.exception("background response %s failed", response_id)
            error = {"code": "server_error", "message": "internal error in dragoman; see the server log"}
            await self.store.finish(response_id, status="failed", body={**queued, "status": "failed", "error": error})
        finally:
            self._cancelled.discard(response_id)

    async def aclose(self) -> None:
        """Cancel every task and wait (a little) for each to record its end."""
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT)


def _background(body: dict[str, Any]) -> dict[str, Any]:
    body["background"] = True
    return body


async def _generate(req: ResponsesRequest, ctx: CallContext, start: Starter, response_id: str,
                    created_at: int) -> tuple[dict[str, Any], list[Any] | None]:
    """The whole answer as the response object, and the conversation through it (None when it failed)."""
    try:
        stream = await start(req, ctx)
        try:
            response = await accumulate(stream)
        finally:
            await stream.aclose()
    except GatewayError as exc:
        failed = output.response_object(req, response_id, created_at, status="failed", output=[],
                                        error=output.failed_error(exc))
        return _background(failed), None
    return _background(whole_response(req, response_id, created_at, response)), answered_history(req.history, response)
