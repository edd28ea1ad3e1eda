"""``dragoman serve --model PATH_OR_HF_NAME``: one GGUF served by a llamacpp backend, no config.

A path is served under its file name (``qwen2.5-0.5b-instruct-q4_k_m``); ``hf.co/{org}/{repo}:{quant}``
(or ``:{file}.gguf``) is resolved to the repository's file once at start (from the hub, or from the
Hugging Face cache when the hub cannot be reached) and downloaded on first use, as a ``hf:`` model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dragoman.config import BackendEntry, Config, ConfigError
from dragoman.errors import ErrorKind, GatewayError

BACKEND = "local"


def model_entry(spec: str) -> dict[str, Any]:
    """The ``models:`` entry of a llamacpp backend for ``spec``; ``ConfigError`` when it cannot be one."""
    from dragoman.backends.llamacpp.pull import parse_hub_name

    hub_name = parse_hub_name(spec)
    if hub_name is None:
        path = Path(spec).expanduser().absolute()
        if not path.is_file():
            raise ConfigError(f"--model {spec}: no such file (give a .gguf path or hf.co/ORG/REPO:QUANT)")
        return {"name": path.stem, "path": str(path)}
    filename = _hub_file(spec, hub_name)
    return {"name": hub_name.model_name, "hf": hub_name.repo, "file": filename}


def _hub_file(spec: str, hub_name: Any) -> str:
    from dragoman.backends.llamacpp.pull import HubFile, hub_files, pick_file

    try:
        return pick_file(hub_name, hub_files(hub_name.repo, endpoint=None)).filename
    except GatewayError as exc:
        if exc.kind is not ErrorKind.UPSTREAM_UNAVAILABLE:
            raise ConfigError(f"--model {spec}: {exc.message}") from exc
        cached = [HubFile(hub_name.repo, p.name, 0, "") for p in _cached_ggufs(hub_name.repo)]
        try:
            return pick_file(hub_name, cached).filename
        except GatewayError:
            raise ConfigError(f"--model {spec}: {exc.message}, and no matching file is in the Hugging Face "
                              "cache") from exc


def _cached_ggufs(repo: str) -> list[Path]:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model") / "snapshots"
    return sorted(folder.glob("*/*.gguf"))


def serve_one_model(config: Config, spec: str) -> Config:
    """``config`` with its backends replaced by one llamacpp backend serving ``spec``."""
    entry = model_entry(spec)
    old = next((b for b in config.backends if b.type == "llamacpp"), None)
    settings = {k: v for k, v in (old.settings if old else {}).items() if k != "models"}
    backend = BackendEntry.model_validate({"name": BACKEND, "type": "llamacpp", **settings, "models": [entry]})
    return config.model_copy(update={"backends": [backend], "aliases": {}, "models": []})
