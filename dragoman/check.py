"""``dragoman check``: validate the configuration and ask every backend, like ``nginx -t``.

Exit code 0 when the configuration is valid and every backend answered, 1 when one did not, 2 for
a configuration error (raised as ``ConfigError`` and reported by the CLI). One line per backend.
Nothing is written: the database is not opened.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from dragoman.backends.base import Backend, BackendDeps
from dragoman.config import Config
from dragoman.errors import GatewayError
from dragoman.tls import check_tls

PROBE_TIMEOUT = 15.0  # seconds per backend; they are asked at once


@dataclass(slots=True, frozen=True)
class BackendReport:
    name: str
    type: str
    problem: str | None
    models: tuple[str, ...]

    def line(self, forwarded: bool) -> str:
        if self.problem is None:
            shown = ", ".join(self.models[:5]) + (", ..." if len(self.models) > 5 else "")
            return f"ok      backend {self.name} ({self.type}): {len(self.models)} models" + (
                f": {shown}" if shown else "")
        hint = (" (api_key: forward: this check sends no key; clients' own keys may still work)"
                if forwarded else "")
        return f"FAILED  backend {self.name} ({self.type}): {self.problem}{hint}"


async def probe(backend: Backend) -> BackendReport:
    """Ask ``backend`` for its models now; never raises for an upstream's failure."""
    models: list[str] = []
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await backend.start()
            problem = await backend.probe()
            try:
                models = [m.name for m in await backend.list_models()]
            except GatewayError as exc:
                problem = problem or exc.message
            problem = problem or await backend.health()
    except TimeoutError:
        problem = f"no answer within {PROBE_TIMEOUT:g}s"
    except GatewayError as exc:
        problem = exc.message
    finally:
        await backend.aclose()
    return BackendReport(backend.name, backend.type, problem, tuple(models))


def run_check(config: Config) -> int:
    """Print the report; 0 when everything answered, 1 otherwise (``ConfigError`` propagates)."""
    from dragoman.app import build_backends

    if config.server.tls is not None:
        check_tls(config.server.tls)
    backends = build_backends(config, BackendDeps(config_dir=config.config_dir))
    source = str(config.source) if config.source else "no file (built-in defaults)"
    environment = ", ".join(config.environment)
    print(f"ok      config {source}" + (f" + environment ({environment})" if environment else ""))
    if config.server.tls is not None:
        print(f"ok      tls certificate {config.server.tls.certfile}")

    async def run() -> list[BackendReport]:
        return list(await asyncio.gather(*(probe(b) for b in backends)))

    reports = asyncio.run(run())
    forwarded = {e.name for e in config.backends if e.settings.get("api_key") == "forward"}
    for report in reports:
        print(report.line(report.name in forwarded))
    failed = sum(1 for r in reports if r.problem is not None)
    print(f"{len(reports) - failed} of {len(reports)} backends answered" + ("" if failed else "; all good"))
    return 1 if failed else 0
