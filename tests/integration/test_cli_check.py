"""``dragoman check`` (exit codes 0, 1, 2, one line per backend), ``--version`` and help on every option."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from dragoman import __version__
from dragoman.cli import build_parser
from tests.certs import CertificateAuthority
from tests.fakes.openai_upstream import FakeOpenAI
from tests.processes import clean_environment, free_port, run_dragoman
from tests.servers import ServerThread


@pytest.fixture
def upstream() -> Iterator[tuple[FakeOpenAI, ServerThread]]:
    fake = FakeOpenAI()
    with ServerThread(fake.app()) as server:
        yield fake, server


def write_config(tmp_path: Path, backends: str, extra: str = "") -> Path:
    path = tmp_path / "dragoman.yaml"
    path.write_text(f"backends:\n{backends}database: sqlite:///{tmp_path / 'db.sqlite'}\n{extra}")
    return path


def test_check_passes_when_every_backend_answers(tmp_path: Path, upstream: tuple[FakeOpenAI, ServerThread]) -> None:
    fake, server = upstream
    ca = CertificateAuthority(tmp_path)
    cert = ca.issue("server")
    config = write_config(tmp_path, f"  - {{name: up, type: openai, base_url: '{server.url}/v1', models: [gpt-test]}}\n"
                                    "  - {name: test, type: echo, models: [echo]}\n",
                          f"server: {{tls: {{certfile: {cert.cert}, keyfile: {cert.key}}}}}\n")
    result = run_dragoman("check", "--config", str(config), env=clean_environment(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"ok      config {config}",
        f"ok      tls certificate {cert.cert}",
        "ok      backend up (openai): 1 models: gpt-test",
        "ok      backend test (echo): 1 models: echo",
        "2 of 2 backends answered; all good",
    ]
    # The explicit model list needs no discovery to serve, but check asked the upstream anyway.
    assert [r.path for r in fake.requests] == ["/v1/models"]
    assert not (tmp_path / "db.sqlite").exists()  # check writes nothing


def test_check_fails_with_one_line_per_backend(tmp_path: Path, upstream: tuple[FakeOpenAI, ServerThread]) -> None:
    _, server = upstream
    closed = free_port()
    config = write_config(tmp_path, f"  - {{name: up, type: openai, base_url: '{server.url}/v1', models: ['gpt-t*']}}\n"
                                    f"  - {{name: gone, type: ollama, base_url: 'http://127.0.0.1:{closed}'}}\n")
    result = run_dragoman("check", "--config", str(config), env=clean_environment(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[1] == "ok      backend up (openai): 3 models: gpt-test, gpt-tools, gpt-think"
    assert lines[2].startswith(f"FAILED  backend gone (ollama): upstream 'gone' is unreachable: Cannot connect to "
                               f"host 127.0.0.1:{closed}")
    assert lines[3] == "1 of 2 backends answered"


def test_check_config_errors_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, "  - {name: up, type: openai, models: [a]}\n")
    result = run_dragoman("check", "--config", str(config), env=clean_environment(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"dragoman: configuration error: {config}: backends[0] (up).base_url: Field required\n"
    missing = run_dragoman("check", "--config", str(tmp_path / "nope.yaml"), env=clean_environment(tmp_path),
                           cwd=tmp_path)
    assert (missing.returncode, missing.stderr) == (2, f"dragoman: configuration error: {tmp_path / 'nope.yaml'}: "
                                                       "file not found\n")


def test_check_reports_an_unusable_certificate(tmp_path: Path) -> None:
    config = write_config(tmp_path, "  - {name: test, type: echo, models: [echo]}\n",
                          "server: {tls: {certfile: missing.pem}}\n")
    result = run_dragoman("check", "--config", str(config), env=clean_environment(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert f"server.tls.certfile: {tmp_path / 'missing.pem'}: file not found" in result.stderr


def test_version(tmp_path: Path) -> None:
    result = run_dragoman("--version", env=clean_environment(tmp_path), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, f"dragoman {__version__}\n")


def _parsers(parser: argparse.ArgumentParser, path: str = "dragoman") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def test_every_option_and_command_has_help() -> None:
    undocumented = [f"{path} {'/'.join(action.option_strings) or action.dest}"
                    for path, parser in _parsers(build_parser()) for action in parser._actions
                    if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()]
    assert undocumented == []
    commands = [path for path, _ in _parsers(build_parser())]
    assert {"dragoman serve", "dragoman check", "dragoman config show", "dragoman keys create"} <= set(commands)


def test_serve_help_explains_host_and_port(tmp_path: Path) -> None:
    result = run_dragoman("serve", "--help", env=clean_environment(tmp_path), cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--host HOST address to listen on; 'localhost' means 127.0.0.1 and ::1" in text
    assert "--port PORT TCP port to listen on; 0 picks a free one (default 11435; $DRAGOMAN_PORT)" in text
    assert "Exit codes: 0 success, 1 failure" in text
