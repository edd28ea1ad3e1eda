"""Several worker processes on one port: ``dragoman serve --workers N`` (``server.workers``).

The supervisor is uvicorn's own (:class:`uvicorn.supervisors.Multiprocess`): it binds nothing
itself but hands the sockets ``dragoman serve`` bound to each worker it spawns, restarts a worker
that dies or stops answering its health pings (and logs it), drains every worker on SIGTERM or
SIGINT (each finishes its requests, then its lifespan flushes its usage batch), and on SIGHUP
replaces the workers one at a time, each new one serving before the old one is stopped. A new
worker reads the config file again, so SIGHUP also applies an edited config (but not the address,
the port or the number of workers, which belong to the supervisor).

Each worker builds its own app in its own process (spawned, not forked: nothing of the parent's
event loop, threads or connections is inherited). What they share lives in the database and in
Redis, so what must be decided once is decided here, before any worker starts: the schema is
migrated, the secret key file is created and the admin password and session secret are generated
and announced (:func:`prepare_shared_state`). :func:`check_workers` refuses what several workers
cannot do (an in-memory database, embedded llama.cpp models unless ``local_models_per_worker``)
and says what only holds per worker (limits without Redis).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import make_url
from uvicorn import Config as UvicornConfig
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from dragoman.config import Config, ConfigError

log = logging.getLogger("dragoman.workers")

# What a worker builds in its own process: its app and its HTTP protocol class.
WorkerFactory = Callable[[], tuple[Any, type[asyncio.Protocol]]]


class WorkerConfig(UvicornConfig):
    """uvicorn's config as it is pickled into each spawned worker: the app and the protocol class
    (neither can cross a process boundary) are built by ``factory`` in the worker, when uvicorn
    loads the config there."""

    def __init__(self, factory: WorkerFactory, **options: Any) -> None:
        super().__init__(app="dragoman.app:create_app", **options)  # a placeholder: load_app builds the app
        self.build_worker = factory
        self._app: Any = None

    def load(self) -> None:
        try:
            self._app, self.http = self.build_worker()
        except ConfigError as exc:
            # A config file edited badly before a SIGHUP: this worker cannot start, the old ones keep serving.
            log.error("worker %d cannot start: configuration error: %s", os.getpid(), exc)
            sys.exit(STARTUP_FAILURE)
        super().load()

    def load_app(self) -> Any:
        return self._app


def check_workers(config: Config, workers: int) -> None:
    """Refuse what several workers cannot share; warn about what only holds per worker."""
    url = make_url(config.database_url)
    if url.get_backend_name() == "sqlite" and (not url.database or url.database == ":memory:"
                                               or "mode=memory" in str(url)):
        raise ConfigError(f"server.workers is {workers}, but the database is in memory: each worker would have "
                          "its own keys and usage; use a database file or PostgreSQL")
    local = [b.name for b in config.backends if b.type == "llamacpp"]
    if local and not config.server.local_models_per_worker:
        raise ConfigError(
            f"server.workers is {workers}, and backend(s) {', '.join(local)} run llama.cpp models inside dragoman: "
            f"each worker would load its own copy of every model it serves (memory and CPU threads times "
            f"{workers}). Serve local models with one worker, or set server.local_models_per_worker: true "
            "if that is what you want")
    if local:
        log.warning("%d workers each load their own copy of the llama.cpp models of %s (on first use; "
                    "server.local_models_per_worker is set)", workers, ", ".join(local))
    if config.redis is None and config.auth.mode == "keys":
        log.warning("limits are counted per worker without Redis: with %d workers a key may get up to %d "
                    "times its rpm, tpm and max_parallel, and budgets are checked per worker; set redis: "
                    "for limits exact across workers", workers, workers)


def prepare_shared_state(config: Config) -> None:
    """Decide once what every worker would otherwise race to create (see the module docstring)."""
    asyncio.run(_prepare(config))


async def _prepare(config: Config) -> None:
    from dragoman.admin.routes import announce_password
    from dragoman.admin.secret_key import SecretKeySource
    from dragoman.admin.security import AdminAuth
    from dragoman.gateway.settings import SettingsStore
    from dragoman.gateway.store import Store

    store = await Store.open(config.checked_database_url(), request_timeout=config.database_timeout)
    try:
        box = await SecretKeySource(config).open()
        auth = AdminAuth(password=config.auth.admin_password, session_secret=config.auth.session_secret,
                         announce=announce_password)
        await auth.setup(SettingsStore(store), box)
    finally:
        await store.aclose()


# Seconds a worker has to answer the supervisor's ping, and a new one to start serving; a worker
# answers from a thread of its own, but starting (spawning, importing, opening the database) on a
# busy machine takes seconds, and uvicorn's 5 s kills workers that are only slow to start.
HEALTHCHECK_TIMEOUT = 30


def run_workers(workers: int, factory: WorkerFactory, sockets: list[Any], **options: Any) -> None:
    """Serve on ``sockets`` with ``workers`` processes until SIGTERM or SIGINT."""
    config = WorkerConfig(factory, workers=workers, timeout_worker_healthcheck=HEALTHCHECK_TIMEOUT, **options)
    log.info("starting %d workers", workers)
    Multiprocess(config, sockets=sockets).run()
