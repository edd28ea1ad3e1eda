"""``dragoman keys create|list|revoke`` and ``dragoman usage``.

They work on the database directly (found through the config file, or ``--database``), so they
need no running gateway; a revoked key stops working on running instances within the key cache
TTL (a few seconds). Static keys (``auth.keys``, ``DRAGOMAN_API_KEY``) are listed from the config
and the environment, marked ``(config)``; they are changed there, not here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import orjson

from dragoman.errors import GatewayError
from dragoman.extras import database_requirements, require
from dragoman.gateway.keys import KEY_PREFIX, KeyInfo, KeyService, StaticKey
from dragoman.gateway.static_keys import static_keys
from dragoman.gateway.store import Store
from dragoman.gateway.timeutil import PERIODS, parse_duration, utcnow
from dragoman.gateway.usage_store import GROUPS, UsageStore, UsageSummary

_NUMBER = re.compile(r"^-?\d[\d.]*$")


def add_commands(subparsers: Any) -> None:
    """Register ``keys`` and ``usage`` on the CLI's ``add_subparsers()`` object; each sets
    ``func(args) -> int`` (the exit code)."""
    p_keys = subparsers.add_parser("keys", help="manage API keys")
    keys_sub = p_keys.add_subparsers(dest="keys_command", required=True)

    p_create = keys_sub.add_parser("create", help="create a key and print its secret (shown once)")
    _add_db_options(p_create)
    p_create.add_argument("--name", required=True, help="unique name, e.g. the person or app using it")
    p_create.add_argument("--models", nargs="+", default=["*"], metavar="GLOB",
                          help="models it may use: <backend>/<model> or alias names, globs allowed "
                               "(default: '*', all)")
    p_create.add_argument("--rpm", type=_positive_int, help="requests per minute")
    p_create.add_argument("--tpm", type=_positive_int, help="tokens per minute")
    p_create.add_argument("--parallel", type=_positive_int, help="requests in flight at once")
    p_create.add_argument("--expires", type=_expiry, metavar="WHEN",
                          help="a duration from now (30d, 12h) or an ISO date/time")
    p_create.add_argument("--budget-tokens", type=_positive_int, help="tokens per budget period")
    p_create.add_argument("--budget-cost", type=_positive_float, help="cost per budget period (price units)")
    p_create.add_argument("--budget-period", choices=PERIODS, help="budget period (UTC)")
    p_create.add_argument("--metadata", type=_json_object, help="a JSON object stored with the key")
    p_create.set_defaults(func=_run(_keys_create))

    p_list = keys_sub.add_parser("list", help="list keys (never their secrets)")
    _add_db_options(p_list)
    p_list.set_defaults(func=_run(_keys_list))

    p_revoke = keys_sub.add_parser("revoke", help="delete a key for good")
    _add_db_options(p_revoke)
    p_revoke.add_argument("key", metavar="NAME|ID", help="the key's name or id (see dragoman keys list)")
    p_revoke.set_defaults(func=_run(_keys_revoke))

    p_usage = subparsers.add_parser("usage", help="usage totals per key, model or day")
    _add_db_options(p_usage)
    p_usage.add_argument("--since", type=parse_duration_arg, default=parse_duration("7d"), metavar="DURATION",
                         help="how far back (default 7d)")
    p_usage.add_argument("--by", choices=sorted(GROUPS), default="key", help="group by (default key)")
    p_usage.set_defaults(func=_run(_usage))


def _add_db_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("DRAGOMAN_CONFIG"),
                        help="YAML config file, for its database (default: $DRAGOMAN_CONFIG)")
    parser.add_argument("--database", help="database URL, instead of the config's")


# -- argument types ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    return int(_positive(text, int, "an integer"))


def _positive_float(text: str) -> float:
    return _positive(text, float, "a number")


def _positive(text: str, parse: Callable[[str], float], what: str) -> float:
    try:
        value = parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def parse_duration_arg(text: str) -> Any:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _expiry(text: str) -> datetime:
    try:
        return utcnow() + parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a duration (30d) or an ISO date/time: {text!r}") from exc
    return when if when.tzinfo else when.astimezone()  # a bare date/time means local time


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


# -- running ----------------------------------------------------------------------------------


def _run(command: Callable[[argparse.Namespace, Store, KeyService], Awaitable[int]]
         ) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from dragoman.config import load_config

        config = load_config(args.config)  # with no file: the environment's settings alone
        url = str(args.database) if args.database else config.checked_database_url()
        if args.database:
            require(database_requirements(url, "--database"))
        else:
            require(database_requirements(url), where=f"{args.config}: " if args.config else "")
        static: list[StaticKey] = static_keys(config)

        async def main() -> int:
            store = await Store.open(url)
            try:
                return await command(args, store, KeyService(store, static=static))
            except GatewayError as exc:
                print(f"dragoman: {exc.message}", file=sys.stderr)
                return 1
            finally:
                await store.aclose()

        return asyncio.run(main())

    return handler


async def _keys_create(args: argparse.Namespace, store: Store, keys: KeyService) -> int:
    if (args.budget_tokens or args.budget_cost) and not args.budget_period:
        print("dragoman: --budget-tokens/--budget-cost need --budget-period day|month", file=sys.stderr)
        return 2
    info, secret = await keys.create(
        args.name, models=args.models, rpm=args.rpm, tpm=args.tpm, max_parallel=args.parallel,
        expires_at=args.expires, budget_tokens=args.budget_tokens, budget_cost=args.budget_cost,
        budget_period=args.budget_period, metadata=args.metadata,
    )
    print(f"Created key {info.name!r} ({info.id}):\n\n    {secret}\n")
    print("This secret will not be shown again: copy it now. dragoman stores only its hash.")
    print(format_table(*_keys_rows([info])))
    return 0


async def _keys_list(args: argparse.Namespace, store: Store, service: KeyService) -> int:
    keys = await service.list_keys()
    if not keys:
        print("No keys yet. Create one with: dragoman keys create --name NAME")
        return 0
    print(format_table(*_keys_rows(keys)))
    return 0


async def _keys_revoke(args: argparse.Namespace, store: Store, keys: KeyService) -> int:
    info = await keys.revoke(args.key)
    print(f"Revoked key {info.name!r} ({info.id}). Running gateways reject it within seconds.")
    return 0


async def _usage(args: argparse.Namespace, store: Store, keys: KeyService) -> int:
    since = utcnow() - args.since
    rows = await UsageStore(store).aggregate(since=since, by=[args.by])
    print(f"Usage since {since:%Y-%m-%d %H:%M} UTC, by {args.by}:")
    if not rows:
        print("(no requests)")
        return 0
    print(format_table(*_usage_rows(rows, args.by)))
    return 0


# -- output -----------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned table; columns of numbers are right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(_is_number(r[i]) for r in rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _is_number(cell: str) -> bool:
    return cell == "-" or _NUMBER.match(cell) is not None


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M")


def _keys_rows(keys: Sequence[KeyInfo]) -> tuple[list[str], list[list[str]]]:
    headers = ["NAME", "ID", "KEY", "MODELS", "RPM", "TPM", "PARALLEL", "BUDGET", "EXPIRES", "ENABLED",
               "LAST USED"]
    now = utcnow()
    rows = []
    for k in keys:
        budget = []
        if k.budget_tokens is not None:
            budget.append(f"{k.budget_tokens} tok")
        if k.budget_cost is not None:
            budget.append(f"{k.budget_cost:g}")
        expires = _when(k.expires_at) + (" (expired)" if k.expires_at and k.expires_at <= now else "")
        rows.append([
            k.name, k.id, "(config)" if k.source == "config" else f"{KEY_PREFIX}...{k.hint}", ",".join(k.models),
            _opt(k.rpm), _opt(k.tpm), _opt(k.max_parallel),
            ("/".join(budget) + f" per {k.budget_period}") if budget else "-",
            expires, "yes" if k.enabled else "no", _when(k.last_used_at),
        ])
    return headers, rows


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _usage_rows(rows: Sequence[UsageSummary], by: str) -> tuple[list[str], list[list[str]]]:
    label = {"key": "KEY", "model": "MODEL", "upstream": "UPSTREAM", "day": "DAY", "dialect": "DIALECT"}[by]
    headers = [label, "REQUESTS", "ERRORS", "PROMPT", "COMPLETION", "TOTAL", "COST", "AVG MS"]
    out = []
    for r in rows:
        g = r.group
        if by == "key":
            name = g.get("key_name") or g.get("key_id") or "(no key)"
        elif by == "upstream":
            name = f"{g.get('backend') or '?'}/{g.get('upstream_model') or '?'}"
        else:
            name = str(g[GROUPS[by][0]])
        out.append([
            name, str(r.requests), str(r.errors), str(r.prompt_tokens), str(r.completion_tokens),
            str(r.total_tokens), "-" if r.cost is None else f"{r.cost:.4f}",
            "-" if r.avg_latency_ms is None else f"{r.avg_latency_ms:.0f}",
        ])
    return headers, out
