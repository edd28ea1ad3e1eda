"""``dragoman`` run as a real process, the way an operator starts it (flags, environment, no file).

:func:`dragoman_process` starts ``python -m dragoman serve ...``, waits for the banner and yields a
:class:`Running` whose ``output`` keeps growing with everything the process prints (stdout and
stderr), so a test can look for log lines. The process is stopped with Ctrl-C (SIGINT) at the end
and must exit cleanly.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BANNER = re.compile(r"dragoman is listening on (https?://\S+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_environment(home: Path, **extra: str) -> dict[str, str]:
    """The parent's environment without any dragoman or seed setting, with ``HOME`` (and so the
    default data folder) in ``home``, plus ``extra``."""
    from dragoman.envconfig import VARIABLES

    names = {v.name for v in VARIABLES} | {"DRAGOMAN_DATA_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in names}
    return {**env, "HOME": str(home), "DRAGOMAN_DATA_DIR": str(home / ".dragoman"), **extra}


@dataclass
class Running:
    process: subprocess.Popen[str]
    url: str = ""
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return True
            time.sleep(0.05)
        return False


def _pump(running: Running) -> None:
    assert running.process.stdout is not None
    for line in running.process.stdout:
        running.lines.append(line)


@contextlib.contextmanager
def dragoman_process(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60.0,
                     exit_codes: tuple[int, ...] = (0, 130)) -> Iterator[Running]:
    """``dragoman serve <args>`` until the banner (with the curl example) is printed; it must end
    with one of ``exit_codes`` (a test that kills it says how)."""
    process = subprocess.Popen([sys.executable, "-m", "dragoman", "serve", *args], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    running = Running(process)
    reader = threading.Thread(target=_pump, args=(running,), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while "-d '" not in running.output:
            if process.poll() is not None or time.monotonic() > deadline:
                reader.join(timeout=5)
                raise AssertionError(f"dragoman did not start (exit code {process.poll()}):\n{running.output}")
            time.sleep(0.05)
        match = BANNER.search(running.output)
        assert match is not None, running.output
        running.url = match.group(1)
        yield running
    finally:
        code = _stop(process)
        reader.join(timeout=5)
    assert code in exit_codes, f"exit code {code} after Ctrl-C:\n{running.output}"


def _stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def run_dragoman(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dragoman", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
