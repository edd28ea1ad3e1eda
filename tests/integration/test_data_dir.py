"""The data directory: a read-only configuration (a ``:ro`` mount, a ConfigMap) keeps working,
and a data directory dragoman cannot write to is one line naming the path and the setting.

The CLI runs as a subprocess that the file modes bind: as root, which ignores them, it runs
without the capabilities that let root write anywhere (``setpriv``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_cli import free_port

# Root without these is bound by file modes like any other user.
DROP_OVERRIDES = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                  "--bounding-set=-dac_override,-dac_read_search", "--"]
ECHO_CONFIG = "backends:\n  - {name: test, type: echo, models: [echo]}\n"
DEFAULT = "the default; choose another with data_dir: or DRAGOMAN_DATA_DIR"


def cli(*args: str) -> list[str]:
    command = [sys.executable, "-m", "dragoman", *args]
    return [*DROP_OVERRIDES, *command] if os.geteuid() == 0 else command


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file modes cannot make a folder read-only")
    try:
        yield tmp_path
    finally:
        for path in [tmp_path, *tmp_path.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)  # so pytest can clean up


def folder(path: Path, *, writable: bool) -> Path:
    path.mkdir()
    path.chmod(0o755 if writable else 0o555)
    return path


def read_only_config(sandbox: Path, text: str = ECHO_CONFIG) -> Path:
    conf = sandbox / "conf"
    conf.mkdir()
    (conf / "dragoman.yaml").write_text(text)
    (conf / "dragoman.yaml").chmod(0o644)
    conf.chmod(0o555)
    return conf / "dragoman.yaml"


def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAGOMAN_")}
    return {**env, "HOME": str(home), "DRAGOMAN_ADMIN_PASSWORD": "test-password", **extra}


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=60, env=env, check=False, cwd="/")


@contextlib.contextmanager
def serving(config: Path, env: dict[str, str]) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(cli("serve", "--config", str(config), "--port", str(port)), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env, cwd="/")
    try:
        output = ""
        deadline = time.monotonic() + 30
        assert process.stdout is not None
        while "-d '" not in output and time.monotonic() < deadline and process.poll() is None:
            output += process.stdout.readline()
        assert "-d '" in output, output
        yield port
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) in (0, 130)


def test_read_only_config_folder_keeps_state_in_the_users_data_dir(sandbox: Path) -> None:
    config = read_only_config(sandbox)
    home = folder(sandbox / "home", writable=True)
    with serving(config, environment(home)) as port:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=10,
                              json={"model": "test/echo", "messages": [{"role": "user", "content": "hi"}]})
        assert response.json()["choices"][0]["message"]["content"] == "hi"
    assert sorted(p.name for p in config.parent.iterdir()) == ["dragoman.yaml"]
    assert (home / ".dragoman" / "dragoman.db").is_file()


def test_data_dir_from_the_environment_holds_the_database(sandbox: Path) -> None:
    config = read_only_config(sandbox)
    home = folder(sandbox / "home", writable=False)
    data = folder(sandbox / "data", writable=True)
    result = run_cli("keys", "create", "--name", "one", "--config", str(config),
                     env=environment(home, DRAGOMAN_DATA_DIR=str(data / "state")))
    assert result.returncode == 0, result.stderr
    assert (data / "state" / "dragoman.db").is_file()
    env = environment(home, DRAGOMAN_DATA_DIR=str(data / "state"))
    listed = run_cli("keys", "list", "--config", str(config), env=env)
    assert listed.stdout.splitlines()[2].startswith("one ")


@pytest.mark.parametrize("command", [["serve"], ["keys", "list"], ["usage"]])
@pytest.mark.parametrize("setting", ["environment", "file", "default"])
def test_unwritable_data_dir_is_one_line_naming_path_and_setting(sandbox: Path, command: list[str],
                                                                setting: str) -> None:
    home = folder(sandbox / "home", writable=False)
    locked = folder(sandbox / "locked", writable=False)
    extra: dict[str, str] = {}
    text = ECHO_CONFIG
    if setting == "environment":
        extra["DRAGOMAN_DATA_DIR"] = str(locked / "state")
        expected = f"cannot write to the data directory {locked / 'state'}: Permission denied (DRAGOMAN_DATA_DIR)"
    elif setting == "file":
        text += f"data_dir: {locked}\n"
        expected = (f"cannot write to the data directory {locked}: Permission denied "
                    f"(data_dir in {sandbox}/conf/dragoman.yaml)")
    else:
        expected = f"cannot write to the data directory {home / '.dragoman'}: Permission denied ({DEFAULT})"
    config = read_only_config(sandbox, text)
    result = run_cli(*command, "--config", str(config), env=environment(home, **extra))
    assert result.returncode == 2
    assert result.stderr == f"dragoman: configuration error: {expected}\n"
    assert result.stdout == ""
