"""Secrets at rest on their own: sealing backend settings, references, key rotation, the key file."""

from __future__ import annotations

import asyncio
import logging
import stat
import threading
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from dragoman.admin.masking import MASK, mask
from dragoman.admin.sealing import (
    SecretBox,
    keep_references,
    resealed,
    resolve,
    seal,
    typed_references,
    unseal,
)
from dragoman.admin.secret_key import SecretKeySource, key_file_path, read_or_create_key_file
from dragoman.config import Config, ConfigError, load_config

SECRET = "sk-proj-unit-secret-0123456789"
ENTRY = {"type": "openai", "base_url": "https://up.example/v1", "api_key": SECRET, "models": ["a"],
         "headers": {"Authorization": "Bearer hdr-secret-42", "Accept": "json"}, "max_tokens": 5}


def box(*keys: bytes) -> SecretBox:
    return SecretBox([Fernet(k) for k in keys or (Fernet.generate_key(),)])


def test_seal_encrypts_every_secret_and_nothing_else() -> None:
    sealer = box()
    stored = seal(ENTRY, sealer)
    assert SECRET not in repr(stored) and "hdr-secret-42" not in repr(stored)
    assert stored["api_key"].startswith("fernet:") and stored["headers"]["Authorization"].startswith("fernet:")
    assert {k: v for k, v in stored.items() if k not in ("api_key", "headers")} == \
        {k: v for k, v in ENTRY.items() if k not in ("api_key", "headers")}
    assert stored["headers"]["Accept"] == "json"
    assert unseal(stored, sealer) == ENTRY
    assert seal(stored, sealer) == stored  # sealing twice changes nothing
    # Modes and references are not secrets to encrypt.
    assert seal({"api_key": "forward"}, sealer) == {"api_key": "forward"}
    assert seal({"api_key": "${UP_KEY}"}, sealer) == {"api_key": "${UP_KEY}"}


def test_a_secret_sealed_with_another_key_becomes_the_mask() -> None:
    stored = seal(ENTRY, box())
    problems: list[str] = []
    opened = unseal(stored, box(), problems)
    assert opened["api_key"] == MASK and opened["headers"]["Authorization"] == MASK
    assert problems == ["settings.api_key", "settings.headers.Authorization"]


def test_reseal_encrypts_clear_values_and_rotates_old_keys() -> None:
    old_key, new_key = Fernet.generate_key(), Fernet.generate_key()
    legacy = {"api_key": SECRET, "base_url": "https://x"}
    under_old = resealed(legacy, box(old_key))
    assert under_old is not None and SECRET not in repr(under_old)
    assert resealed(under_old, box(old_key)) is None  # already current
    rotated = resealed(under_old, box(new_key, old_key))
    assert rotated is not None and rotated != under_old
    assert unseal(rotated, box(new_key)) == legacy  # the old key is no longer needed
    assert resealed(under_old, box(Fernet.generate_key())) is None  # cannot open it: left as it is


def test_references_are_kept_resolved_and_never_typed_in() -> None:
    written = {"name": "up", "type": "openai", "api_key": "${UP_KEY}", "base_url": "${UP_URL}",
               "headers": {"Authorization": "Bearer ${UP_KEY}", "X-Tenant": "${TENANT:-acme}"}}
    environ = {"UP_KEY": SECRET, "UP_URL": "https://up.example/v1"}
    resolved = {"api_key": SECRET, "base_url": "https://up.example/v1",
                "headers": {"Authorization": f"Bearer {SECRET}", "X-Tenant": "acme"}}
    edited = keep_references(resolved, written, environ)
    # The default came from the file, not the environment: the value is kept as resolved.
    assert edited == {"api_key": "${UP_KEY}", "base_url": "${UP_URL}",
                      "headers": {"Authorization": "Bearer ${UP_KEY}", "X-Tenant": "acme"}}
    assert resolve(edited, environ) == resolved
    assert resolve(edited, {**environ, "UP_KEY": "rotated"})["api_key"] == "rotated"
    with pytest.raises(ConfigError, match=r"settings\.api_key: environment variable UP_KEY is not set"):
        resolve(edited, {"UP_URL": "x"})
    assert mask(edited)["api_key"] == "${UP_KEY}"  # shown as written: it says where the key is
    assert typed_references(edited, edited) == []
    assert typed_references({"api_key": "${HOME}"}, edited) == ["settings.api_key"]
    assert typed_references({"base_url": "${HOME}"}, {}) == ["settings.base_url"]


def test_the_environment_key_is_checked_at_once(tmp_path: Path) -> None:
    path = tmp_path / "dragoman.yaml"
    path.write_text(f"backends: [{{name: e, type: echo}}]\ndatabase: sqlite:///{tmp_path / 'd.db'}\n")
    with pytest.raises(ConfigError, match="DRAGOMAN_SECRET_KEY must be a Fernet key"):
        SecretKeySource(load_config(path, environ={"DRAGOMAN_SECRET_KEY": "not-a-key"}))
    first, second = Fernet.generate_key(), Fernet.generate_key()
    config = load_config(path, environ={"DRAGOMAN_SECRET_KEY": f"{first.decode()}, {second.decode()}"})
    assert key_file_path(config) == tmp_path / "d.db.key"
    opened = asyncio.run(SecretKeySource(config).open())
    assert opened.decrypt(box(second).encrypt("x")) == "x"  # every listed key decrypts
    assert box(first).decrypt(opened.encrypt("y")) == "y"  # the first encrypts
    assert not (tmp_path / "d.db.key").exists()


def test_key_file_is_private_stable_and_shared_by_racing_starts(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "data" / "dragoman.db.key"
    keys: list[str] = []
    threads = [threading.Thread(target=lambda: keys.append(read_or_create_key_file(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1 and Fernet(keys[0].encode())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_or_create_key_file(path) == keys[0]
    assert [p.name for p in path.parent.iterdir()] == ["dragoman.db.key"]  # no temporary file left
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="dragoman.admin"):
        read_or_create_key_file(path)
    assert "can be read by other users (mode 644)" in caplog.text


def test_key_file_location(tmp_path: Path) -> None:
    def located(database: str | None) -> Path | None:
        config = Config.model_validate({"backends": [{"name": "e", "type": "echo"}], "database": database})
        config.source = tmp_path / "dragoman.yaml"
        return key_file_path(config)

    assert located(None) == tmp_path / "dragoman.db.key"
    assert located(f"sqlite:///{tmp_path / 'x' / 'state.sqlite'}") == tmp_path / "x" / "state.sqlite.key"
    assert located("postgresql://u@db/dragoman") == tmp_path / "dragoman.key"
    assert located("sqlite://") is None
