"""Upstream secrets never reach the database in clear (issue 14, "Exposure").

A secret that came from the environment (``api_key: ${UPSTREAM_TOKEN}``) is stored as that
reference and resolved again at every start; one typed in the admin API (or written literally in
the config file) is stored encrypted with Fernet. The tests read the raw SQLite files and the
PostgreSQL rows and find none of the secrets, while a fake upstream shows each backend still
authenticating with its own secret, also after a restart and after an old database with clear
secrets was migrated.
"""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import ServerThread, dragoman_server
from tests.services import _psql, ensure_postgres, unique_name

PASSWORD = "secrets-admin-pw-81b2"
ENV_SECRET = "sk-env-only-7d1f0c9e4b2a8d6e"
ROTATED_SECRET = "sk-env-rotated-2c4e6a8b0d1f3e5a"
TYPED_SECRET = "sk-typed-in-admin-3e9b7a1c5d0f2468"
FILE_SECRET = "sk-written-in-yaml-9a8b7c6d5e4f3a2b"
SESSION_SECRET = "legacy-session-signing-secret-5f0e9d8c7b6a5948"  # what older versions kept in clear
ALL_SECRETS = (ENV_SECRET, ROTATED_SECRET, TYPED_SECRET, FILE_SECRET, SESSION_SECRET)


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
def upstream(fake: FakeOpenAI) -> Iterator[ServerThread]:
    with ServerThread(fake.app()) as server:
        yield server


def config(database: str, upstream: ServerThread) -> dict[str, Any]:
    base_url = f"{upstream.url}/v1"
    return {
        "backends": [
            {"name": "from-env", "type": "openai", "base_url": base_url, "api_key": "${UPSTREAM_TOKEN}",
             "models": ["gpt-test"]},
            {"name": "in-file", "type": "openai", "base_url": base_url, "api_key": FILE_SECRET,
             "models": ["gpt-test"]},
        ],
        "database": database,
        "auth": {"mode": "none", "admin_password": PASSWORD},
    }


def admin(server: ServerThread) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {PASSWORD}"}, timeout=20)


def add_typed_backend(server: ServerThread, upstream: ServerThread) -> None:
    with admin(server) as client:
        created = client.post("/admin/api/backends", json={
            "name": "typed", "type": "openai",
            "settings": {"base_url": f"{upstream.url}/v1", "api_key": TYPED_SECRET, "models": ["gpt-test"]}})
        assert created.status_code == 200, created.text
        assert TYPED_SECRET not in created.text


def upstream_credentials(server: ServerThread, fake: FakeOpenAI, *backends: str) -> dict[str, str]:
    """The Authorization header the upstream received for one chat request through each backend."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20)
    seen = {}
    for backend in backends:
        answer = client.chat.completions.create(model=f"{backend}/gpt-test",
                                                messages=[{"role": "user", "content": backend}])
        assert answer.choices[0].message.content == f"You said: {backend}"
        seen[backend] = fake.last().headers["authorization"]
    return seen


def sqlite_bytes(directory: Path) -> bytes:
    """Every byte SQLite keeps for the database: the file, its write-ahead log and shared memory."""
    files = sorted(directory.glob("dragoman.db*"))
    assert any(f.name == "dragoman.db" for f in files)
    return b"".join(f.read_bytes() for f in files if not f.name.endswith(".key"))


def assert_no_secret(data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    for secret in ALL_SECRETS:
        assert secret.encode() not in raw, f"{secret} is stored in clear"


def test_sqlite_holds_references_and_ciphertext_only(tmp_path: Path, fake: FakeOpenAI,
                                                      upstream: ServerThread) -> None:
    cfg = config(f"sqlite:///{tmp_path / 'dragoman.db'}", upstream)
    with dragoman_server(cfg, env={"UPSTREAM_TOKEN": ENV_SECRET}) as server:
        add_typed_backend(server, upstream)
        assert upstream_credentials(server, fake, "from-env", "in-file", "typed") == {
            "from-env": f"Bearer {ENV_SECRET}", "in-file": f"Bearer {FILE_SECRET}", "typed": f"Bearer {TYPED_SECRET}"}
        assert_no_secret(sqlite_bytes(tmp_path))
        with sqlite3.connect(tmp_path / "dragoman.db") as db:
            stored = dict(db.execute("SELECT name, value FROM settings").fetchall())
        db.close()
        assert json.loads(stored["admin:session_secret"]).startswith("fernet:")
        assert json.loads(stored["backends"])["typed"]["api_key"].startswith("fernet:")
        assert set(json.loads(stored["backends"])) == {"typed"}  # the config file's entries are not copied here
        with admin(server) as client:
            backends = client.get("/admin/api/backends").json()["backends"]
        listing = {b["name"]: b["settings"]["api_key"] for b in backends}
        # The reference is not a secret: the admin sees where the key comes from.
        assert listing == {"from-env": "${UPSTREAM_TOKEN}", "in-file": "sk-...3a2b", "typed": "sk-...2468"}
    assert_no_secret(sqlite_bytes(tmp_path))
    key_file = tmp_path / "dragoman.db.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    # A restart decrypts what was typed and resolves the reference from the environment it runs in.
    with dragoman_server(cfg, env={"UPSTREAM_TOKEN": ROTATED_SECRET}) as server:
        assert upstream_credentials(server, fake, "from-env", "in-file", "typed") == {
            "from-env": f"Bearer {ROTATED_SECRET}", "in-file": f"Bearer {FILE_SECRET}",
            "typed": f"Bearer {TYPED_SECRET}"}
    assert_no_secret(sqlite_bytes(tmp_path))


def test_the_secret_key_can_come_from_the_environment(tmp_path: Path, fake: FakeOpenAI,
                                                       upstream: ServerThread) -> None:
    from cryptography.fernet import Fernet

    env = {"UPSTREAM_TOKEN": ENV_SECRET, "DRAGOMAN_SECRET_KEY": Fernet.generate_key().decode()}
    cfg = config(f"sqlite:///{tmp_path / 'dragoman.db'}", upstream)
    with dragoman_server(cfg, env=env) as server:
        add_typed_backend(server, upstream)
    assert not (tmp_path / "dragoman.db.key").exists()
    assert_no_secret(sqlite_bytes(tmp_path))
    with dragoman_server(cfg, env=env) as server:
        assert upstream_credentials(server, fake, "typed") == {"typed": f"Bearer {TYPED_SECRET}"}
    # Another key cannot read it: the backend is left out with a clear log line, the others run.
    other = {**env, "DRAGOMAN_SECRET_KEY": Fernet.generate_key().decode()}
    with dragoman_server(cfg, env=other) as server:
        assert upstream_credentials(server, fake, "from-env") == {"from-env": f"Bearer {ENV_SECRET}"}
        with admin(server) as client:
            typed = next(b for b in client.get("/admin/api/backends").json()["backends"] if b["name"] == "typed")
        assert typed["settings"]["api_key"] == "••••"
        assert typed["reachable"] is False


def test_an_invalid_secret_key_is_refused(tmp_path: Path, upstream: ServerThread) -> None:
    from dragoman.app import create_app
    from dragoman.config import ConfigError, load_config

    path = tmp_path / "dragoman.yaml"
    path.write_text(json.dumps(config(f"sqlite:///{tmp_path / 'dragoman.db'}", upstream)), encoding="utf-8")
    loaded = load_config(path, environ={"UPSTREAM_TOKEN": ENV_SECRET, "DRAGOMAN_SECRET_KEY": "hunter2"})
    with pytest.raises(ConfigError, match="DRAGOMAN_SECRET_KEY must be a Fernet key"):
        create_app(loaded)


def test_references_to_the_environment_cannot_be_typed_in(tmp_path: Path, upstream: ServerThread) -> None:
    cfg = config(f"sqlite:///{tmp_path / 'dragoman.db'}", upstream)
    with dragoman_server(cfg, env={"UPSTREAM_TOKEN": ENV_SECRET}) as server, admin(server) as client:
        refused = client.post("/admin/api/backends", json={
            "name": "probe", "type": "openai",
            "settings": {"base_url": f"{upstream.url}/v1", "api_key": "${HOME}", "models": ["gpt-test"]}})
        assert refused.status_code == 400
        assert refused.json()["error"] == {
            "type": "invalid_request", "param": "settings",
            "message": "settings.api_key: environment references (${...}) can only be written in the config file"}
        # Saving the config file's backend unchanged keeps its reference.
        shown = next(b for b in client.get("/admin/api/backends").json()["backends"] if b["name"] == "from-env")
        kept = client.put("/admin/api/backends/from-env", json={"type": "openai", "settings": shown["settings"]})
        assert kept.status_code == 200, kept.text
    assert_no_secret(sqlite_bytes(tmp_path))


def _legacy_rows(upstream: ServerThread) -> dict[str, Any]:
    """What dragoman before this change wrote: every secret in clear."""
    base_url = f"{upstream.url}/v1"
    from_file = {
        "from-env": {"type": "openai", "base_url": base_url, "api_key": ENV_SECRET, "models": ["gpt-test"]},
        "in-file": {"type": "openai", "base_url": base_url, "api_key": FILE_SECRET, "models": ["gpt-test"]},
    }
    typed = {"type": "openai", "base_url": base_url, "api_key": TYPED_SECRET, "models": ["gpt-test"]}
    return {"backends": {**from_file, "typed": typed}, "seeded:backends": from_file,
            "admin:session_secret": SESSION_SECRET}


def test_an_old_sqlite_database_is_migrated_on_start(tmp_path: Path, fake: FakeOpenAI,
                                                      upstream: ServerThread) -> None:
    cfg = config(f"sqlite:///{tmp_path / 'dragoman.db'}", upstream)
    env = {"UPSTREAM_TOKEN": ENV_SECRET}
    with dragoman_server(cfg, env=env):
        pass
    with sqlite3.connect(tmp_path / "dragoman.db") as db:
        for name, value in _legacy_rows(upstream).items():
            db.execute("UPDATE settings SET value = ? WHERE name = ?", (json.dumps(value), name))
    db.close()
    assert ENV_SECRET.encode() in sqlite_bytes(tmp_path)  # the old state, as an old version left it
    with dragoman_server(cfg, env=env) as server:
        assert upstream_credentials(server, fake, "from-env", "in-file", "typed") == {
            "from-env": f"Bearer {ENV_SECRET}", "in-file": f"Bearer {FILE_SECRET}", "typed": f"Bearer {TYPED_SECRET}"}
        assert_no_secret(sqlite_bytes(tmp_path))
    assert_no_secret(sqlite_bytes(tmp_path))


@pytest.mark.postgres
def test_postgres_rows_hold_no_secret(fake: FakeOpenAI, upstream: ServerThread, tmp_path: Path) -> None:
    postgres = ensure_postgres()
    if postgres is None:
        pytest.skip("PostgreSQL is needed (apt-get install postgresql)")
    database = unique_name("dragoman_secrets").lower()
    assert _psql(f"CREATE DATABASE {database}") is not None
    try:
        cfg = config(postgres.rsplit("/", 1)[0] + f"/{database}", upstream)
        env = {"UPSTREAM_TOKEN": ENV_SECRET}
        with dragoman_server(cfg, env=env, workdir=tmp_path) as server:
            add_typed_backend(server, upstream)
            rows = _psql("SELECT name || '=' || value::text FROM settings", database)
            assert rows is not None and "typed" in rows and "from-env" not in rows  # the file's are not copied
            assert_no_secret(rows)
        # Rows an old version left in clear are migrated on the next start.
        for name, value in _legacy_rows(upstream).items():
            literal = json.dumps(value).replace("'", "''")
            assert _psql(f"UPDATE settings SET value = '{literal}' WHERE name = '{name}'", database) is not None
        with dragoman_server(cfg, env=env, workdir=tmp_path) as server:
            assert upstream_credentials(server, fake, "from-env", "in-file", "typed") == {
                "from-env": f"Bearer {ENV_SECRET}", "in-file": f"Bearer {FILE_SECRET}",
                "typed": f"Bearer {TYPED_SECRET}"}
            rows = _psql("SELECT name || '=' || value::text FROM settings", database)
            assert rows is not None and "typed" in rows
            assert_no_secret(rows)
        # Without DRAGOMAN_SECRET_KEY the key file sits next to the config file.
        assert stat.S_IMODE((tmp_path / "dragoman.key").stat().st_mode) == 0o600
    finally:
        _psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
