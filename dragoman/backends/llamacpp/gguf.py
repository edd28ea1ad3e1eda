"""Read a GGUF file's header cheaply: metadata and tensor shapes, never the weights.

Listing models must not load them. The ``gguf`` package parses every token of the vocabulary
into numpy arrays (12 s for Gemma 3's 262k tokens) and llama.cpp's ``vocab_only`` load takes
0.5 s and writes to stderr; walking the header over an mmap takes a few tens of milliseconds.
Arrays (the vocabulary, merges, scores) are skipped, not decoded.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"GGUF"

# GGUF value types: struct format of the fixed-size ones.
_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                            10: "<Q", 11: "<q", 12: "<d"}
_STRING = 8
_ARRAY = 9

# llama.cpp's ``llama_ftype`` (``general.file_type``), a stable enum.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
    18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
    25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M",
    32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}


class GGUFError(ValueError):
    """The file is not a readable GGUF file."""


@dataclass(slots=True)
class GGUFInfo:
    """What the header says. ``metadata`` holds scalars and strings; arrays keep only their length."""

    version: int
    metadata: dict[str, Any]
    parameter_count: int
    array_lengths: dict[str, int] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str) -> Any:
        """``<architecture>.<key>``, e.g. ``context_length``."""
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def context_length(self) -> int | None:
        value = self.arch_value("context_length")
        return int(value) if value is not None else None

    @property
    def embedding_length(self) -> int | None:
        value = self.arch_value("embedding_length")
        return int(value) if value is not None else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value.strip() else None

    @property
    def quantization(self) -> str:
        file_type = self.metadata.get("general.file_type")
        if isinstance(file_type, int):
            return FILE_TYPES.get(file_type, f"type {file_type}")
        return ""

    def kv_cache_bytes(self, n_ctx: int) -> int:
        """An f16 KV-cache size estimate for ``n_ctx`` tokens (0 when the header lacks the shape)."""
        layers = _int(self.arch_value("block_count"))
        heads = _int(self.arch_value("attention.head_count"))
        kv_heads = _int(self.arch_value("attention.head_count_kv")) or heads
        embd = _int(self.arch_value("embedding_length"))
        key = _int(self.arch_value("attention.key_length")) or (embd // heads if heads else 0)
        value = _int(self.arch_value("attention.value_length")) or key
        return n_ctx * layers * kv_heads * (key + value) * 2


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def human_parameters(count: int) -> str:
    """Ollama's style: ``268.10M``, ``7B``, ``1.5B``."""
    for scale, suffix, decimals in ((10**12, "T", 1), (10**9, "B", 1), (10**6, "M", 2), (10**3, "K", 2)):
        if count >= scale:
            number = count / scale
            return f"{number:.0f}{suffix}" if number == int(number) else f"{number:.{decimals}f}{suffix}"
    return str(count)


class _Cursor:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise GGUFError("truncated GGUF header")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        end = self.pos + length
        if end > len(self.buf):
            raise GGUFError("truncated GGUF header")
        raw = self.buf[self.pos : end]
        self.pos = end
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        buf, pos, limit = self.buf, self.pos, len(self.buf)
        unpack = struct.unpack_from
        for _ in range(count):
            if pos + 8 > limit:
                raise GGUFError("truncated GGUF header")
            pos += 8 + unpack("<Q", buf, pos)[0]
        if pos > limit:
            raise GGUFError("truncated GGUF header")
        self.pos = pos

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        raise GGUFError(f"unknown GGUF value type {kind}")

    def skip_array(self) -> int:
        kind = self.unpack("<I")
        count = self.unpack("<Q")
        if kind in _SCALARS:
            self.pos += struct.calcsize(_SCALARS[kind]) * count
            if self.pos > len(self.buf):
                raise GGUFError("truncated GGUF header")
        elif kind == _STRING:
            self.skip_strings(count)
        elif kind == _ARRAY:
            for _ in range(count):
                self.skip_array()
        else:
            raise GGUFError(f"unknown GGUF array type {kind}")
        return int(count)


def read_gguf(path: Path) -> GGUFInfo:
    """Parse the header of ``path``; ``GGUFError`` when it is not GGUF, ``OSError`` when unreadable."""
    with path.open("rb") as file:
        if path.stat().st_size < 24:
            raise GGUFError("file is too small to be GGUF")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != MAGIC:
                raise GGUFError("not a GGUF file (bad magic bytes)")
            cursor = _Cursor(buf)
            cursor.pos = 4
            version = cursor.unpack("<I")
            if version < 2:
                raise GGUFError(f"GGUF version {version} is not supported")
            tensor_count = cursor.unpack("<Q")
            kv_count = cursor.unpack("<Q")
            metadata: dict[str, Any] = {}
            arrays: dict[str, int] = {}
            for _ in range(kv_count):
                key = cursor.string()
                kind = cursor.unpack("<I")
                if kind == _ARRAY:
                    arrays[key] = cursor.skip_array()
                else:
                    metadata[key] = cursor.value(kind)
            parameters = 0
            for _ in range(tensor_count):
                cursor.string()
                n_dims = cursor.unpack("<I")
                elements = 1
                for _ in range(n_dims):
                    elements *= cursor.unpack("<Q")
                cursor.unpack("<I")  # ggml type
                cursor.unpack("<Q")  # data offset
                parameters += elements
    return GGUFInfo(version=version, metadata=metadata, parameter_count=parameters, array_lengths=arrays)
