"""Pulling Ollama-style Hugging Face names into the Hugging Face cache (``POST /api/pull``).

``hf.co/{org}/{repo}:{quant}`` picks the repository's GGUF whose name carries that quantisation
(case-insensitive; ``Q4_K_M`` when the tag is missing or ``latest``, as the hub does for Ollama);
``hf.co/{org}/{repo}:{file}.gguf`` names the file. The download itself is ``hf_hub_download``:
into the usual cache, from ``hf_endpoint`` or
``HF_ENDPOINT``; huggingface_hub retries a broken transfer itself, continuing where it broke
(versions before 1.x also continue an earlier pull's ``.incomplete`` file; newer ones start
over). Progress is the growing ``.incomplete`` blob's size; the finished blob is checked
against the sha256 the hub lists before the model is offered. Everything here blocks: the backend
runs it on its thread pool.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dragoman.errors import ErrorKind, GatewayError

HF_NAME = re.compile(r"(?:https?://)?(?:hf\.co|huggingface\.co)/([A-Za-z0-9][\w.-]*/[\w.-]+?)(?::([^/:]+))?")
DEFAULT_QUANT = "Q4_K_M"
HUB_TIMEOUT = 10.0  # seconds for the hub to answer a metadata request (an unreachable hub fails at once)


@dataclass(slots=True, frozen=True)
class HubName:
    repo: str
    tag: str  # a quantisation, or a file name ending in .gguf

    @property
    def model_name(self) -> str:
        """The name the pulled model is served under (Ollama's)."""
        return f"hf.co/{self.repo}:{self.tag}"


@dataclass(slots=True, frozen=True)
class HubFile:
    repo: str
    filename: str
    size: int
    sha256: str


def parse_hub_name(name: str) -> HubName | None:
    """``hf.co/org/repo[:tag]`` as a :class:`HubName`; None for any other name."""
    match = HF_NAME.fullmatch(name.strip())
    if match is None:
        return None
    tag = match.group(2) or "latest"
    return HubName(match.group(1), DEFAULT_QUANT if tag.lower() == "latest" else tag)


def pick_file(name: HubName, files: list[HubFile]) -> HubFile:
    """The GGUF ``name`` asks for among the repository's files (split GGUFs are refused)."""
    ggufs = [f for f in files if f.filename.lower().endswith(".gguf")]
    if name.tag.lower().endswith(".gguf"):
        exact = [f for f in ggufs if f.filename == name.tag or f.filename.rsplit("/", 1)[-1] == name.tag]
        if exact:
            return exact[0]
        raise GatewayError(ErrorKind.NOT_FOUND, f"hf.co/{name.repo} has no file {name.tag!r} "
                                                f"(GGUF files: {', '.join(f.filename for f in ggufs) or 'none'})")
    quant = re.compile(rf"(?<![A-Za-z0-9]){re.escape(name.tag)}(?![A-Za-z0-9])", re.IGNORECASE)
    matches = [f for f in ggufs if quant.search(f.filename.rsplit("/", 1)[-1])
               and "mmproj" not in f.filename.lower()]
    whole = [f for f in matches if not re.search(r"-\d{5}-of-\d{5}\.gguf$", f.filename)]
    if whole:
        return min(whole, key=lambda f: len(f.filename))
    if matches:
        raise GatewayError(ErrorKind.INVALID_REQUEST, f"hf.co/{name.repo}:{name.tag} is split into several "
                                                      "files, which dragoman cannot pull yet")
    quants = sorted({q for f in ggufs if (q := _quant_of(f.filename))})
    raise GatewayError(ErrorKind.NOT_FOUND, f"hf.co/{name.repo} has no GGUF for {name.tag!r} "
                                            f"(available: {', '.join(quants) or 'no GGUF files'})")


def _quant_of(filename: str) -> str | None:
    match = re.search(r"(?i)(?:^|[-_.])((?:I?Q\d[\w]*?|F16|BF16|F32))\.gguf$", filename.rsplit("/", 1)[-1])
    return match.group(1) if match else None


def hub_files(repo: str, *, endpoint: str | None) -> list[HubFile]:
    """The repository's files with size and sha256, from the hub's model info."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint).model_info(repo, files_metadata=True, timeout=HUB_TIMEOUT)
    except Exception as exc:
        raise hub_error(exc, f"hf.co/{repo}", endpoint) from exc
    files = []
    for sibling in info.siblings or []:
        lfs: Any = sibling.lfs
        if lfs is not None:
            files.append(HubFile(repo, sibling.rfilename, int(lfs.size), str(lfs.sha256)))
    return files


def blobs_folder(file: HubFile, cache_dir: str | None) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(cache_dir or constants.HF_HUB_CACHE)
    return root / repo_folder_name(repo_id=file.repo, repo_type="model") / "blobs"


def downloaded_bytes(file: HubFile, cache_dir: str | None) -> int | None:
    """How much of ``file`` is on disk while ``hf_hub_download`` writes it: the blob named by its
    sha256 etag with ``.incomplete`` (older versions, which resume it) or ``.<id>.incomplete``."""
    sizes = []
    for partial in blobs_folder(file, cache_dir).glob(f"{file.sha256}*.incomplete"):
        try:
            sizes.append(partial.stat().st_size)
        except OSError:
            continue
    return max(sizes) if sizes else None


def download(file: HubFile, *, endpoint: str | None, cache_dir: str | None) -> Path:
    """Download (or resume) ``file`` into the cache; its path there."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(file.repo, file.filename, cache_dir=cache_dir, endpoint=endpoint,
                                    etag_timeout=HUB_TIMEOUT))
    except Exception as exc:
        raise hub_error(exc, f"hf.co/{file.repo}/{file.filename}", endpoint) from exc


def verify(path: Path, file: HubFile) -> None:
    """Compare the downloaded file's sha256 with the hub's; remove it (blob and link) on a mismatch."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != file.sha256:
        remove_download(path)
        raise GatewayError(ErrorKind.UPSTREAM_ERROR,
                           f"digest mismatch for hf.co/{file.repo}/{file.filename}: expected sha256:{file.sha256}, "
                           f"got sha256:{actual}; the corrupt download was removed, pull again")


def remove_download(path: Path) -> None:
    """Remove a cached file: the blob it links to, then the link."""
    blob = path.resolve()
    for target in (blob, path):
        try:
            target.unlink()
        except FileNotFoundError:
            pass


def remove_incomplete(file: HubFile, cache_dir: str | None) -> None:
    for partial in blobs_folder(file, cache_dir).glob(f"{file.sha256}*.incomplete"):
        try:
            partial.unlink()
        except FileNotFoundError:
            pass


def hub_error(exc: BaseException, what: str, endpoint: str | None) -> GatewayError:
    """A hub client failure as the client's error, saying what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    where = endpoint or constants.ENDPOINT
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, GatedRepoError):
        return GatewayError(ErrorKind.PERMISSION, f"{what} is gated: accept its licence on the hub and set HF_TOKEN")
    if isinstance(exc, RepositoryNotFoundError):
        return GatewayError(ErrorKind.NOT_FOUND, f"{what} not found on {where}")
    if isinstance(exc, EntryNotFoundError):
        return GatewayError(ErrorKind.NOT_FOUND, f"{what} not found on {where}")
    if isinstance(exc, HfHubHTTPError):
        return GatewayError(ErrorKind.UPSTREAM_ERROR, f"the hub at {where} refused {what}: {exc}")
    if isinstance(exc, OSError) and exc.errno is not None:
        reason = exc.strerror or str(exc)
        return GatewayError(ErrorKind.INTERNAL, f"writing {what} failed: {reason}; the partial download was removed",
                            status=507 if exc.errno == 28 else 500)
    return GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, f"cannot reach the Hugging Face hub at {where} for {what} "
                                                        f"({type(exc).__name__}: {exc}); check the network, "
                                                        "HF_ENDPOINT or the backend's hf_endpoint")
