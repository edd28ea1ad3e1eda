"""The key that encrypts secrets at rest: from ``DRAGOMAN_SECRET_KEY``, else a key file.

``DRAGOMAN_SECRET_KEY`` holds one or more Fernet keys separated by commas (make one with
``python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"``):
the first encrypts, every one decrypts, so a key is rotated by putting the new one first (what the
old one encrypted is re-encrypted at the next start). Instances that share a database need the same key.

Without it, a key file is generated on the first start with mode 0600 (never overwritten): beside
a SQLite database (``dragoman.db.key`` next to ``dragoman.db``), else in the data directory
(``dragoman.key``; the config file's folder may be read-only). The key file protects a copy of
the database, not a copy of its folder; set
``DRAGOMAN_SECRET_KEY`` from a secret store to keep the two apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from dragoman.admin.sealing import SecretBox
from dragoman.config import Config, ConfigError

log = logging.getLogger("dragoman.admin")

ENV_NAME = "DRAGOMAN_SECRET_KEY"
HOW_TO_MAKE_ONE = 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'


def _fernet(key: str, where: str) -> Fernet:
    try:
        return Fernet(key.strip().encode())
    except ValueError as exc:
        raise ConfigError(f"{where} must be a Fernet key (44 URL-safe base64 characters); make one with "
                          f"{HOW_TO_MAKE_ONE}") from exc


def key_file_path(config: Config) -> Path | None:
    """Where the generated key lives: beside a SQLite file, else in the data directory; None for an
    in-memory database (its secrets die with the process, and so may the key)."""
    try:
        url = make_url(config.database_url)
    except ArgumentError:
        return config.writable_data_dir() / "dragoman.key"
    if url.get_backend_name() == "sqlite":
        database = url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        return Path(database + ".key")
    return config.writable_data_dir() / "dragoman.key"


class SecretKeySource:
    """Reads ``DRAGOMAN_SECRET_KEY`` at once (a bad one stops the start); the key file, which may
    have to be created, only in :meth:`open`."""

    def __init__(self, config: Config) -> None:
        raw = config.environ.get(ENV_NAME, "").strip()
        self._from_env = [_fernet(k, ENV_NAME) for k in raw.split(",") if k.strip()] if raw else []
        self._file = None if self._from_env else key_file_path(config)
        self._shared_database = not config.database_url.startswith("sqlite")

    async def open(self) -> SecretBox:
        if self._from_env:
            return SecretBox(self._from_env)
        if self._file is None:
            return SecretBox([Fernet(Fernet.generate_key())])
        key = await asyncio.to_thread(read_or_create_key_file, self._file)
        if self._shared_database:
            log.warning("secrets in the database are encrypted with the key in %s; every instance sharing the "
                        "database needs the same key: set %s on each", self._file, ENV_NAME)
        return SecretBox([_fernet(key, f"the key file {self._file}")])


def read_or_create_key_file(path: Path) -> str:
    """The key in ``path``, generated first (mode 0600) when the file does not exist. Two instances
    starting at once agree: the file appears whole (a hard link to a finished temporary file) or not at all."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(Fernet.generate_key() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another instance made it first: use theirs
            os.link(temporary, path)
            log.warning("generated %s, the key that encrypts the backend secrets saved in the database; "
                        "keep it with backups of the database, or set %s instead", path, ENV_NAME)
    finally:
        temporary.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s can be read by other users (mode %o); chmod 600 it", path, mode)
    return path.read_text(encoding="ascii").strip()
