"""Real PostgreSQL and Redis for tests: find them on loopback, start them if installed but stopped.

``ensure_postgres()`` and ``ensure_redis()`` return a URL, or None when the server is not installed
(tests then skip with a clear message). A server these functions start is left running for later
test runs, like any local service. ``DRAGOMAN_TEST_POSTGRES`` / ``DRAGOMAN_TEST_REDIS`` point the
tests at other servers.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

PG_HOST, PG_PORT, PG_DB, PG_USER = "127.0.0.1", 5432, "test", "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379

POSTGRES_MISSING = "PostgreSQL is not installed (apt-get install postgresql) and DRAGOMAN_TEST_POSTGRES is unset"
REDIS_MISSING = "Redis is not installed (apt-get install redis-server) and DRAGOMAN_TEST_REDIS is unset"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(host, port):
            return True
        time.sleep(0.2)
    return False


def _psql(sql: str, database: str = "postgres") -> str | None:
    psql = shutil.which("psql")
    if psql is None:
        return None
    result = subprocess.run(
        [psql, "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-d", database, "-tAc", sql],
        capture_output=True, text=True, timeout=30, check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


@functools.cache
def ensure_postgres() -> str | None:
    """A ``postgresql://`` URL for database ``test`` on 127.0.0.1:5432 (trust auth), or None."""
    if os.environ.get("DRAGOMAN_TEST_POSTGRES"):
        return os.environ["DRAGOMAN_TEST_POSTGRES"]
    if not _port_open(PG_HOST, PG_PORT):
        versions = sorted(p.name for p in Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").is_dir() else []
        ctl = shutil.which("pg_ctlcluster")
        if not versions or ctl is None:
            return None
        subprocess.run([ctl, "--skip-systemctl-redirect", versions[-1], "main", "start"],
                       capture_output=True, timeout=60, check=False)
        if not _wait_port(PG_HOST, PG_PORT, 30):
            raise RuntimeError("PostgreSQL is installed but did not start on 127.0.0.1:5432")
    if _psql(f"SELECT 1 FROM pg_database WHERE datname = '{PG_DB}'") == "":
        _psql(f'CREATE DATABASE "{PG_DB}"')
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DB}"


@functools.cache
def ensure_redis() -> str | None:
    """A ``redis://`` URL for 127.0.0.1:6379 db 0, or None."""
    if os.environ.get("DRAGOMAN_TEST_REDIS"):
        return os.environ["DRAGOMAN_TEST_REDIS"]
    if not _port_open(REDIS_HOST, REDIS_PORT):
        server = shutil.which("redis-server")
        if server is None:
            return None
        subprocess.run([server, "--daemonize", "yes", "--bind", REDIS_HOST, "--port", str(REDIS_PORT),
                        "--save", "", "--appendonly", "no"], capture_output=True, timeout=30, check=False)
        if not _wait_port(REDIS_HOST, REDIS_PORT, 15):
            raise RuntimeError("Redis is installed but did not start on 127.0.0.1:6379")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


def unique_name(prefix: str = "t") -> str:
    """A name no other test run uses: for PostgreSQL schemas and Redis key prefixes."""
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"
