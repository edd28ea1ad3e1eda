"""Per-model state of the embedded runtime: a fair bounded queue, and the loaded instances.

``FifoGate`` lets one generation run per model while up to ``max_queue`` others wait in
arrival order. ``ModelSlot`` owns a model's file facts and its two llama.cpp instances (chat and
embeddings), loading them lazily and unloading them when idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from dragoman.backends.base import BackendDeps
from dragoman.backends.llamacpp.engine import Runtime, load_llama
from dragoman.backends.llamacpp.gguf import human_parameters
from dragoman.backends.llamacpp.models import (
    LlamaCppSettings,
    ModelConfig,
    ModelFile,
    check_memory,
    context_size,
    default_answer_length,
    inspect_file,
    resolve_path,
)
from dragoman.backends.llamacpp.templates import resolve_template, template_traits
from dragoman.core.models import Capabilities, ModelDetails, ModelInfo
from dragoman.errors import ErrorKind, GatewayError

log = logging.getLogger("dragoman.llamacpp")

FOREVER = 100 * 365 * 86400.0  # how "never unload" shows as an expiry time


class FifoGate:
    """One holder at a time; waiters are served in arrival order and at most ``max_waiting`` wait.

    Ownership passes straight from the releaser to the next waiter, so nobody can barge in."""

    __slots__ = ("_busy", "_label", "_max_waiting", "_waiters")

    def __init__(self, max_waiting: int, label: str) -> None:
        self._busy = False
        self._max_waiting = max_waiting
        self._label = label
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        if self._busy or self._waiters:
            return False
        self._busy = True
        return True

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        if len(self._waiters) >= self._max_waiting:
            raise GatewayError(ErrorKind.RATE_LIMITED,
                               f"local model queue is full ({len(self._waiters)} waiting for {self._label})",
                               code="queue_full", retry_after=1.0)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over just as we were cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def close(self, error: GatewayError) -> None:
        """Fail everyone still waiting (the backend is shutting down)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._busy = False


class ModelSlot:
    """One configured model: its file, its loaded runtimes, their queues and expiry."""

    def __init__(self, config: ModelConfig, settings: LlamaCppSettings, deps: BackendDeps) -> None:
        self.config = config
        self.settings = settings
        self.deps = deps
        self.keep_alive = config.keep_alive if config.keep_alive is not None else settings.keep_alive
        self.gate = FifoGate(settings.max_queue, config.name)
        self.embed_gate = FifoGate(settings.max_queue, f"{config.name} embeddings")
        self.life = threading.Lock()  # held to load, unload, or use a runtime outside a gate
        self.chat: Runtime | None = None
        self.embedder: Runtime | None = None
        self.chat_expires = 0.0
        self.embed_expires = 0.0
        self.chat_released = False  # the last request said keep_alive 0: gone for clients, freed soon
        self._resolved: tuple[Path, str | None] | None = None
        self._file: ModelFile | None = None
        # ``n_ctx`` / ``n_threads`` chosen by an explicit load (admin API, CLI), over the config's.
        self.n_ctx_override: int | None = None
        self.n_threads_override: int | None = None

    # ------------------------------------------------------------------ blocking (worker thread)

    def file(self, *, download: bool) -> ModelFile | None:
        """The model's file and header, cached until the file changes; None if not downloaded yet."""
        if self._resolved is None:
            resolved = resolve_path(self.config, self.settings, self.deps.config_dir, download=download)
            if resolved is None:
                return None
            self._resolved = resolved
        path, digest = self._resolved
        cached = self._file
        if cached is not None:
            with contextlib.suppress(OSError):
                stat = path.stat()
                if stat.st_size == cached.size and stat.st_mtime == cached.modified_at:
                    return cached
        try:
            self._file = inspect_file(self.config.name, path, digest)
        except GatewayError:
            self._resolved = None  # re-resolve next time (a builtin can be reassembled)
            raise
        return self._file

    def n_ctx(self, file: ModelFile | None) -> int:
        if self.n_ctx_override is not None:
            return self.n_ctx_override
        return context_size(self.config, self.settings, file.info if file else None)

    def n_threads(self) -> int | None:
        return self.n_threads_override or self.config.n_threads or self.settings.n_threads

    def _load(self, *, embedding: bool) -> Runtime:
        file = self.file(download=True)
        assert file is not None
        n_ctx = self.n_ctx(file)
        if self.settings.check_memory:
            check_memory(self.config.name, file, n_ctx)
        llama = load_llama(self.config.name, file.path, n_ctx=n_ctx,
                           n_threads=self.n_threads(),
                           n_batch=self.config.n_batch, embedding=embedding,
                           repack_weights=self.settings.repack_weights)
        template = resolve_template(self.config.name, file.info.chat_template, self.config.chat_template,
                                    file.info.architecture, file.info.metadata.get("tokenizer.ggml.pre"))
        tools = template is not None and template.known is None and template_traits(template.source).tools
        return Runtime(self.config.name, llama, n_ctx, template, tools,
                       default_answer_length(self.config, self.settings, file.info))

    def chat_runtime(self) -> Runtime:
        """The loaded chat runtime (loading it); call with ``life`` held or the gate owned."""
        if self.chat is None:
            self.chat = self._load(embedding=False)
            self.chat_expires = time.time() + min(self.keep_alive, FOREVER)
            self.chat_released = False
        return self.chat

    def embed_runtime(self) -> Runtime:
        if self.embedder is None:
            self.embedder = self._load(embedding=True)
            self.embed_expires = time.time() + min(self.keep_alive, FOREVER)
        return self.embedder

    def unload(self, *, embedding: bool) -> None:
        with self.life:
            runtime = self.embedder if embedding else self.chat
            if runtime is None:
                return
            runtime.llama.close()
            log.info("unloaded %s%s", self.config.name, " (embeddings)" if embedding else "")
            if embedding:
                self.embedder = None
            else:
                self.chat = None

    # ---------------------------------------------------------------------------- bookkeeping

    def touch(self, *, embedding: bool, keep_alive: float | None = None) -> None:
        expires = time.time() + min(self.keep_alive if keep_alive is None else keep_alive, FOREVER)
        if embedding:
            self.embed_expires = expires
        else:
            self.chat_expires = expires
            self.chat_released = keep_alive == 0

    def loaded_until(self) -> float | None:
        """When the loaded runtimes expire; None when none is loaded, or the chat runtime alone is and
        a request said ``keep_alive: 0`` (the reaper frees it within a second; clients see it gone now)."""
        times = [t for r, t in ((self.chat, self.chat_expires), (self.embedder, self.embed_expires))
                 if r is not None and not (r is self.chat and self.chat_released)]
        return max(times) if times else None

    def info(self, file: ModelFile | None, error: str | None = None) -> ModelInfo:
        """What /api/tags and /api/show say, from the header only."""
        details = ModelDetails(format="gguf")
        capabilities = Capabilities(vision=False, tools=False, json_schema=True, embeddings=True,
                                    logprobs=True)
        extra: dict[str, Any] = {}
        embedding_length = None
        if file is not None:
            meta = file.info
            architecture = meta.architecture
            template = resolve_template(self.config.name, meta.chat_template, self.config.chat_template,
                                        architecture, meta.metadata.get("tokenizer.ggml.pre"))
            traits = template_traits(template.source if template and template.known is None else None)
            capabilities.tools = traits.tools
            capabilities.reasoning = traits.reasoning
            details = ModelDetails(
                family=architecture, families=[architecture] if architecture else [],
                parameter_size=human_parameters(meta.parameter_count), quantization_level=meta.quantization,
                format="gguf", size=file.size, digest=file.digest, modified_at=file.modified_at,
                license=str(meta.metadata.get("general.license", "")),
                template=template.source if template else "",
            )
            extra = {k: v for k, v in meta.metadata.items() if k != "tokenizer.chat_template"}
            extra["general.parameter_count"] = meta.parameter_count
            embedding_length = meta.embedding_length
        if error:
            extra["error"] = error
        return ModelInfo(name=self.config.name, capabilities=capabilities, context_length=self.n_ctx(file),
                         embedding_length=embedding_length, details=details,
                         created=int(file.modified_at) if file else 0, extra=extra)
