"""``dragoman keys ...`` and ``dragoman usage`` through the real CLI entry point."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from dragoman.cli import main
from dragoman.gateway.keys import KeyService
from dragoman.gateway.store import Store
from dragoman.gateway.timeutil import utcnow
from dragoman.gateway.usage import UsageRecord
from dragoman.gateway.usage_store import UsageStore


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_lifecycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--database", f"sqlite:///{tmp_path / 'd.db'}"]
    code, out, _ = run(capsys, "keys", "list", *db)
    assert code == 0 and "No keys yet" in out

    code, out, _ = run(capsys, "keys", "create", "--name", "alice", "--models", "up/*", "fast", "--rpm", "10",
                       "--tpm", "5000", "--parallel", "2", "--expires", "30d", "--budget-tokens", "100000",
                       "--budget-period", "month", "--metadata", '{"team": "web"}', *db)
    assert code == 0
    secret = re.search(r"sk-dm-[A-Za-z0-9_-]{40}", out)
    assert secret is not None and "will not be shown again" in out

    code, out, _ = run(capsys, "keys", "list", *db)
    assert code == 0
    assert secret.group(0) not in out  # never shown again
    header, _rule, row = out.strip().splitlines()
    assert header.split()[:4] == ["NAME", "ID", "KEY", "MODELS"]
    assert row.split()[0] == "alice" and "up/*,fast" in row and "100000 tok per month" in row
    assert f"sk-dm-...{secret.group(0)[-4:]}" in row

    async def check() -> None:
        store = await Store.open(db[1])
        try:
            principal = await KeyService(store).authenticate(secret.group(0))
            assert (principal.rpm, principal.tpm, principal.max_parallel) == (10, 5000, 2)
            assert principal.metadata == {"team": "web"} and principal.expires_at is not None
            assert principal.expires_at - utcnow() > timedelta(days=29)
        finally:
            await store.aclose()

    asyncio.run(check())

    code, _, err = run(capsys, "keys", "create", "--name", "alice", *db)
    assert code == 1 and "already exists" in err
    code, _, err = run(capsys, "keys", "create", "--name", "b", "--budget-tokens", "5", *db)
    assert code == 2 and "--budget-period" in err
    code, out, _ = run(capsys, "keys", "revoke", "alice", *db)
    assert code == 0 and "Revoked key 'alice'" in out
    code, _, err = run(capsys, "keys", "revoke", "alice", *db)
    assert code == 1 and "no API key" in err


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["keys", "create", "--name", "x", "--rpm", "0"],
                 ["keys", "create", "--name", "x", "--expires", "soon"],
                 ["usage", "--since", "7 days"], ["usage", "--by", "colour"]):
        with pytest.raises(SystemExit) as info:
            main([*argv, "--database", f"sqlite:///{tmp_path / 'd.db'}"])
        assert info.value.code == 2
    capsys.readouterr()


def test_usage_report_from_the_config_database(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "dragoman.yaml"
    config.write_text(yaml.safe_dump({"backends": [{"name": "echo", "type": "echo", "models": ["echo"]}]}))
    monkeypatch.setenv("DRAGOMAN_CONFIG", str(config))

    async def seed() -> None:
        store = await Store.open(f"sqlite:///{tmp_path / 'dragoman.db'}")  # next to the config file
        try:
            now = utcnow()
            await UsageStore(store).write_usage([
                UsageRecord("openai", "echo/echo", ts=now, key_id="k1", key_name="alice", prompt_tokens=100,
                            completion_tokens=20, cost=0.5, latency_ms=10),
                UsageRecord("openai", "fast", ts=now - timedelta(days=2), key_id="k1", key_name="alice",
                            prompt_tokens=1, completion_tokens=1, latency_ms=30),
                UsageRecord("ollama", "echo/echo", ts=now - timedelta(days=30), key_id="k2", key_name="bob",
                            prompt_tokens=5),
            ])
        finally:
            await store.aclose()

    asyncio.run(seed())
    code, out, _ = run(capsys, "usage", "--config", str(config))
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("Usage since") and lines[0].endswith("by key:")
    assert lines[1].split() == ["KEY", "REQUESTS", "ERRORS", "PROMPT", "COMPLETION", "TOTAL", "COST", "AVG", "MS"]
    assert lines[3].split() == ["alice", "2", "0", "101", "21", "122", "0.5000", "20"]
    assert len(lines) == 4  # bob's request is older than 7 days

    code, out, _ = run(capsys, "usage", "--since", "60d", "--by", "model")  # config from $DRAGOMAN_CONFIG
    assert code == 0
    rows = {line.split()[0]: line.split()[1] for line in out.strip().splitlines()[3:]}
    assert rows == {"echo/echo": "2", "fast": "1"}
