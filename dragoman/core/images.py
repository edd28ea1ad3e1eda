"""Image payload helpers shared by dialects and backends (pure: no fetching here)."""

from __future__ import annotations

import base64
import binascii

from dragoman.errors import ErrorKind, GatewayError

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def sniff_media_type(data: bytes) -> str:
    """The media type from magic bytes (Ollama sends bare base64 with no type)."""
    for signature, media_type in _SIGNATURES:
        if data.startswith(signature):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def decode_base64(data: str, *, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "image data is not valid base64", param=param) from exc


def parse_data_url(url: str, *, param: str) -> tuple[bytes, str]:
    """``data:image/png;base64,...`` -> (bytes, media type)."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise GatewayError(ErrorKind.INVALID_REQUEST,
                           "image data URL must look like data:image/png;base64,<data>", param=param)
    data = decode_base64(payload, param=param)
    media_type = header[5:-7] or sniff_media_type(data)
    return data, media_type


def encode_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
