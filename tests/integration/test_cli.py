"""The command line: ``serve`` on both loopback families, ``models``, and config errors."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ECHO_CONFIG = "backends:\n  - {name: test, type: echo, models: [echo]}\ndatabase: sqlite:///%s\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dragoman", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, check=False)


@contextlib.contextmanager
def serving(tmp_path: Path, host: str) -> Iterator[tuple[int, str]]:
    """``dragoman serve`` on ``host`` as a subprocess: (port, everything printed up to the curl example)."""
    config = tmp_path / "dragoman.yaml"
    config.write_text(ECHO_CONFIG % (tmp_path / "db.sqlite"))
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "dragoman", "serve", "--config", str(config),
                                "--host", host, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "DRAGOMAN_ADMIN_PASSWORD": "test-password"})
    try:
        output = ""
        deadline = time.monotonic() + 30
        assert process.stdout is not None
        while "-d '" not in output and time.monotonic() < deadline:
            output += process.stdout.readline()
        yield port, output
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) in (0, 130)  # 130: the conventional exit after Ctrl-C


def test_serve_localhost_listens_on_ipv4_and_ipv6(tmp_path: Path) -> None:
    with serving(tmp_path, "localhost") as (port, banner):
        assert f"http://127.0.0.1:{port}" in banner
        assert "test/echo" in banner and "curl" in banner
        hosts = ["127.0.0.1"] + (["[::1]"] if has_ipv6_loopback() else [])
        for host in hosts:
            response = httpx.post(f"http://{host}:{port}/v1/chat/completions", timeout=10,
                                  json={"model": "test/echo", "messages": [{"role": "user", "content": "hi"}]})
            assert response.json()["choices"][0]["message"]["content"] == "hi", host


def test_models_command_prints_resolved_models(tmp_path: Path) -> None:
    config = tmp_path / "dragoman.yaml"
    config.write_text(ECHO_CONFIG % (tmp_path / "db.sqlite") + "aliases: {fast: test/echo}\n")
    result = run_cli("models", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("test/echo\t")
    assert any(line.startswith("fast -> test/echo") for line in lines)


def test_broken_config_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "dragoman.yaml"
    config.write_text("backends:\n  - {name: up, type: openai, models: [a]}\n")
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{config}: backends[0] (up).base_url: Field required" in result.stderr


def test_missing_env_var_names_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "dragoman.yaml"
    config.write_text('backends:\n  - {name: up, type: openai, base_url: x, api_key: "${NOT_SET_ANYWHERE}"}\n')
    result = run_cli("models", "--config", str(config), env={"DRAGOMAN_CONFIG": ""})
    assert result.returncode == 2
    assert "backends[0].api_key: environment variable NOT_SET_ANYWHERE is not set" in result.stderr


@pytest.mark.parametrize("flag", ["--help"])
def test_python_dash_m_works(flag: str) -> None:
    result = run_cli(flag)
    assert result.returncode == 0
    assert "serve" in result.stdout and "models" in result.stdout and "keys" in result.stdout


def test_open_auth_on_a_public_address_warns(tmp_path: Path) -> None:
    with serving(tmp_path, "0.0.0.0") as (_, output):
        assert "WARNING: auth.mode is 'none' on a non-loopback address" in output
