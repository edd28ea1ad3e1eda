"""A fake Hugging Face hub speaking the endpoints ``huggingface_hub`` uses to download a file.

* ``GET /api/models/{org}/{repo}[/revision/{rev}]`` (``?blobs=true``): the model info, with each
  file's size and LFS sha256;
* ``HEAD|GET /{org}/{repo}/resolve/{rev}/{file}``: the file, with ``X-Repo-Commit``,
  ``X-Linked-Etag`` (the LFS sha256, as the hub sends for LFS files) and ``X-Linked-Size``
  headers, and ``Range`` requests answered with 206 for resumed downloads.

Repositories are added with :meth:`FakeHub.add`; ``corrupt`` serves different bytes than the
advertised sha256, ``stall_after`` stops sending after that many bytes (until ``release``),
``drop_after`` closes the connection that many bytes into a response, ``drops`` times (for
resuming). Every request is recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 1 << 20


@dataclass
class HubFile:
    source: bytes | Path  # the bytes, or a file read as it is sent (a real model is too big to copy)
    size: int
    sha256: str

    def read(self, start: int, end: int) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[start:end]
        with self.source.open("rb") as handle:
            handle.seek(start)
            return handle.read(end - start)


@dataclass
class HubRepo:
    files: dict[str, HubFile] = field(default_factory=dict)


@dataclass
class FakeHub:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    stall_after: int | None = None
    release: threading.Event = field(default_factory=threading.Event)
    drop_after: int | None = None
    drops: int = 1  # how many responses ``drop_after`` breaks

    def add(self, repo: str, filename: str, data: bytes, *, corrupt: bool = False) -> str:
        """Serve ``data`` as ``repo``'s ``filename``; returns the advertised sha256 (with ``corrupt``,
        that of ``data``, while one byte of what is served differs)."""
        digest = hashlib.sha256(data).hexdigest()
        served = data[:-1] + bytes([data[-1] ^ 0xFF]) if corrupt else data
        self.repos.setdefault(repo, HubRepo()).files[filename] = HubFile(served, len(data), digest)
        return digest

    def add_path(self, repo: str, filename: str, path: Path, sha256: str) -> None:
        """Serve the file at ``path`` (whose sha256 the caller knows) as ``repo``'s ``filename``."""
        self.repos.setdefault(repo, HubRepo()).files[filename] = HubFile(path, path.stat().st_size, sha256)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/api/models/{org}/{repo}", self.model_info),
            Route("/api/models/{org}/{repo}/revision/{revision}", self.model_info),
            Route("/{org}/{repo}/resolve/{revision}/{filename:path}", self.resolve, methods=["GET", "HEAD"]),
        ])

    def _repo(self, request: Request) -> HubRepo | None:
        p = request.path_params
        return self.repos.get(f"{p['org']}/{p['repo']}")

    async def model_info(self, request: Request) -> Response:
        self.requests.append((request.method, request.url.path, dict(request.headers)))
        repo = self._repo(request)
        if repo is None:
            return JSONResponse({"error": "Repository not found"}, status_code=401,
                                headers={"x-error-code": "RepoNotFound"})
        p = request.path_params
        siblings: list[dict[str, Any]] = [
            {"rfilename": name, "size": f.size, "blobId": f.sha256[:40],
             "lfs": {"size": f.size, "sha256": f.sha256, "pointerSize": 134}}
            for name, f in repo.files.items()]
        siblings.append({"rfilename": "README.md", "size": 10, "blobId": "b" * 40})
        return JSONResponse({"_id": "x", "id": f"{p['org']}/{p['repo']}", "modelId": f"{p['org']}/{p['repo']}",
                             "sha": COMMIT, "private": False, "gated": False, "disabled": False,
                             "tags": ["gguf"], "siblings": siblings})

    async def resolve(self, request: Request) -> Response:
        self.requests.append((request.method, request.url.path, dict(request.headers)))
        repo = self._repo(request)
        hub_file = repo.files.get(request.path_params["filename"]) if repo else None
        if hub_file is None:
            return JSONResponse({"error": "Entry not found"}, status_code=404,
                                headers={"x-error-code": "EntryNotFound"})
        size = hub_file.size
        headers = {"x-repo-commit": COMMIT, "x-linked-etag": f'"{hub_file.sha256}"',
                   "x-linked-size": str(size), "etag": f'"{hub_file.sha256}"', "accept-ranges": "bytes",
                   "content-type": "application/octet-stream"}
        if request.method == "HEAD":
            return Response(headers={**headers, "content-length": str(size)})
        start, status = 0, 200
        ranged = request.headers.get("range", "")
        if ranged.startswith("bytes="):
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            status = 206
            headers["content-range"] = f"bytes {start}-{size - 1}/{size}"
        headers["content-length"] = str(size - start)
        return StreamingResponse(self._body(hub_file, start), status_code=status, headers=headers)

    async def _body(self, hub_file: HubFile, start: int) -> Any:
        position, size = start, hub_file.size
        while position < size:
            if self.drop_after is not None and position - start >= self.drop_after:
                self.drops -= 1
                if self.drops <= 0:
                    self.drop_after = None
                raise ConnectionResetError("fake hub drops the connection")
            if self.stall_after is not None and position >= self.stall_after:
                while not self.release.is_set():
                    await asyncio.sleep(0.02)
                self.stall_after = None
            end = min(position + CHUNK, size)
            yield hub_file.read(position, end)
            position = end
            await asyncio.sleep(0)
