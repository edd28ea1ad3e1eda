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

``/metrics`` reports the whole server: the supervisor makes a private directory for
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, see
:mod:`dragoman.gateway.metrics`), retires the gauges of each worker that ended, and removes the
directory when it stops. A worker whose supervisor dies (even by SIGKILL, which nothing can
catch) stops too, as if the supervisor had sent it SIGTERM (:func:`exit_with_supervisor`), so no
orphan keeps the port.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from uvicorn import Config as UvicornConfig
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from dragoman.config import Config, ConfigError
from dragoman.gateway.metrics import MULTIPROC_DIR

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
        self.supervisor = os.getpid()  # built in the supervisor
        self._app: Any = None

    def load(self) -> None:
        exit_with_supervisor(self.supervisor)
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
    metrics_dir = tempfile.mkdtemp(prefix="dragoman-metrics-")  # mode 0700: this user's only
    os.environ[MULTIPROC_DIR] = metrics_dir  # the workers inherit it (a user's own value is replaced)
    try:
        Supervisor(config, sockets, metrics_dir).run()
    finally:
        del os.environ[MULTIPROC_DIR]
        shutil.rmtree(metrics_dir, ignore_errors=True)


class Supervisor(Multiprocess):
    """uvicorn's supervisor, which also retires the metrics of the workers that ended (died,
    were killed, or were replaced on SIGHUP): their gauges leave the sums, their counters stay."""

    def __init__(self, config: WorkerConfig, sockets: list[Any], metrics_dir: str) -> None:
        super().__init__(config, sockets)
        self.metrics_dir = metrics_dir

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()  # every 0.5 s, after SIGHUP's replacements too
        from prometheus_client.multiprocess import mark_process_dead

        live = {p.pid for p in self.processes if p.process.is_alive()}
        for pid in ended_workers(self.metrics_dir, live):
            mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]


_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def ended_workers(metrics_dir: str, live: Iterable[int | None]) -> set[int]:
    """The pids with live gauges in ``metrics_dir`` that are not among ``live``."""
    pids = {int(m.group(1)) for f in Path(metrics_dir).iterdir() if (m := _LIVE_GAUGE_FILE.fullmatch(f.name))}
    return pids - set(live)


# Seconds between two looks at the parent where the kernel cannot be asked to signal its death.
PARENT_CHECK = 1.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_supervisor(supervisor: int) -> None:
    """SIGTERM this worker when ``supervisor`` (its parent) dies: on Linux the kernel sends it
    (``prctl(PR_SET_PDEATHSIG)``), elsewhere a thread checks the parent pid every
    :data:`PARENT_CHECK` seconds. The worker then drains as on the supervisor's own SIGTERM
    (uvicorn's graceful shutdown, bounded by its timeout) and its lifespan flushes its usage."""
    if _parent_death_signal(signal.SIGTERM):
        if os.getppid() != supervisor:  # it died before the kernel was asked
            os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=_watch_parent, args=(supervisor,), name="dragoman-supervisor-watch", daemon=True).start()


def _parent_death_signal(sig: signal.Signals) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _watch_parent(supervisor: int) -> None:
    while os.getppid() == supervisor:
        time.sleep(PARENT_CHECK)
    log.warning("worker %d: the supervisor %d is gone; stopping", os.getpid(), supervisor)
    os.kill(os.getpid(), signal.SIGTERM)
