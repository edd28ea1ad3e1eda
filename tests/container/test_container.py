"""The container image and the compose stack, built and run for real.

The image is built from the repository's Dockerfile (on a local Debian base where no registry
is reachable, see docker_host.py); compose.yaml then starts two dragoman replicas with
PostgreSQL and Redis, and the official ``openai`` SDK talks to each replica. Everything the
tests start is removed again: containers, networks, volumes and the image.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from cryptography.fernet import Fernet

from tests.container.conftest import FIGURES
from tests.container.docker_host import DockerHost, Unavailable, base_images, docker_host

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
UID = 10001  # the image's user


@pytest.fixture(scope="module")
def host(request: pytest.FixtureRequest) -> DockerHost:
    try:
        docker = docker_host()
    except Unavailable as exc:
        pytest.skip(f"Docker cannot be used here: {exc}")
    request.config.stash[FIGURES] = docker.timings
    return docker


@pytest.fixture(scope="module")
def images(host: DockerHost) -> dict[str, str]:
    try:
        return base_images(host)
    except Unavailable as exc:
        pytest.skip(f"no base image: {exc}")


@pytest.fixture(scope="module")
def image(host: DockerHost, images: dict[str, str]) -> Iterator[str]:
    """The dragoman image with the default extras, built for this run and removed after it."""
    tag = f"dragoman-test/dragoman:run-{uuid.uuid4().hex[:12]}"
    host.timings["dragoman build"] = host.build_image(ROOT, tag, build_args={"BASE": images["BASE"]})
    host.timings["image MB"] = host.image_size(tag) / 1e6
    host.timings["base MB"] = host.image_size(images["BASE"]) / 1e6
    try:
        yield tag
    finally:
        host.run("rmi", "--force", tag, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def health_ok(port: int) -> bool:
    try:
        body: object = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
        return body == {"status": "ok"}
    except httpx.HTTPError:
        return False


def started_at(host: DockerHost, container: str) -> float:
    """The container's start time as a UNIX time (Docker gives nanoseconds; Python takes micro)."""
    stamp = host.run("inspect", "--format", "{{.State.StartedAt}}", container).stdout.strip()
    stamp = re.sub(r"(\.\d{6})\d*", r"\1", stamp).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def is_healthy(host: DockerHost, container: str) -> bool:
    return host.run("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip() == "healthy"


def test_runtime_stage_is_non_root_without_compilers_or_the_local_runtime(host: DockerHost, image: str) -> None:
    meta = json.loads(host.run("image", "inspect", image).stdout)[0]["Config"]
    assert meta["Entrypoint"] == ["dragoman"]
    assert meta["Cmd"] == ["serve", "--host", "0.0.0.0"]
    assert meta["User"] == "dragoman"
    assert list(meta["ExposedPorts"]) == ["11435/tcp"]
    assert list(meta["Volumes"]) == ["/data"]
    assert "DRAGOMAN_DATA_DIR=/data" in meta["Env"]
    assert meta["Healthcheck"]["Test"][0] == "CMD" and "/health" in meta["Healthcheck"]["Test"][-1]
    probe = ("import importlib.util, json, os, shutil; print(json.dumps({'uid': os.getuid(), "
             "'compilers': [c for c in ('gcc', 'cc', 'c++', 'clang', 'make') if shutil.which(c)], "
             "'modules': {m: importlib.util.find_spec(m) is not None for m in "
             "('dragoman', 'asyncpg', 'redis', 'llama_cpp', 'pip')}, "
             "'data_writable': os.access('/data', os.W_OK), 'opt_writable': os.access('/opt/dragoman', os.W_OK)}))")
    found = json.loads(host.run("run", "--rm", "--entrypoint", "python", image, "-c", probe).stdout)
    assert found == {"uid": UID, "compilers": [], "data_writable": True, "opt_writable": False,
                     "modules": {"dragoman": True, "asyncpg": True, "redis": True, "llama_cpp": False, "pip": False}}


def test_unwritable_data_dir_is_one_line_naming_path_and_setting(host: DockerHost, image: str) -> None:
    result = host.run("run", "--rm", "-e", "DRAGOMAN_DATA_DIR=/srv/state", image, check=False)
    assert result.returncode == 2
    assert result.stderr == ("dragoman: configuration error: cannot write to the data directory /srv/state: "
                             "Permission denied (DRAGOMAN_DATA_DIR)\n")


def test_read_only_config_keeps_its_state_in_the_data_volume(host: DockerHost, image: str, tmp_path: Path) -> None:
    """``-v ./conf:/etc/dragoman:ro`` on a read-only root file system: the SQLite file and the
    generated admin secret go to /data; the config's folder stays as it was."""
    conf = tmp_path / "conf"
    conf.mkdir(mode=0o755)
    (conf / "dragoman.yaml").write_text("auth: {mode: keys}\nbackends: [{name: echo, type: echo, models: [echo]}]\n")
    (conf / "dragoman.yaml").chmod(0o644)
    port = free_port()
    container = host.run("run", "--detach", "--read-only", "--publish", f"127.0.0.1:{port}:11435",
                         "--volume", f"{conf}:/etc/dragoman:ro", "--env", "DRAGOMAN_CONFIG=/etc/dragoman/dragoman.yaml",
                         image).stdout.strip()
    try:
        wait_for(lambda: health_ok(port), 60, "/health")
        assert "dragoman.db" in host.run("exec", container, "ls", "/data").stdout.split()
        assert host.run("exec", container, "ls", "/etc/dragoman").stdout == "dragoman.yaml\n"
        # The generated admin password is announced once: its hash and the session secret are
        # kept in /data, so a restart does not make new ones.
        host.run("restart", "--time", "10", container)
        wait_for(lambda: health_ok(port), 60, "/health after the restart")
        logs = host.run("logs", container)
        assert (logs.stdout + logs.stderr).count("dragoman admin password (generated") == 1
    finally:
        host.run("rm", "--force", "--volumes", container, check=False)


class ComposeStack:
    """compose.yaml as a project of its own, with .env.example as its .env and the test's images."""

    def __init__(self, host: DockerHost, images: dict[str, str], image: str) -> None:
        self.project = f"dragoman-test-{uuid.uuid4().hex[:10]}"
        self.ports = [free_port(), free_port()]
        self.env = {**host.env, "DRAGOMAN_IMAGE": image, "POSTGRES_IMAGE": images["POSTGRES_IMAGE"],
                    "REDIS_IMAGE": images["REDIS_IMAGE"], "POSTGRES_PASSWORD": uuid.uuid4().hex,
                    "DRAGOMAN_ADMIN_PASSWORD": uuid.uuid4().hex, "DRAGOMAN_PORT": str(self.ports[0]),
                    "DRAGOMAN_SECRET_KEY": Fernet.generate_key().decode(),
                    "DRAGOMAN_PORT_2": str(self.ports[1])}
        self.command = [*host.compose, "--project-name", self.project, "--project-directory", str(ROOT),
                        "--file", str(ROOT / "compose.yaml"), "--env-file", str(ROOT / ".env.example")]

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.command, *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def __enter__(self) -> ComposeStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)


def test_compose_stack_two_replicas_share_keys_limits_and_usage(host: DockerHost, images: dict[str, str],
                                                                image: str) -> None:
    with ComposeStack(host, images, image) as compose:
        started = time.monotonic()
        compose("up", "--detach", "--no-build")
        host.timings["compose up"] = time.monotonic() - started
        ports = compose.ports
        containers = [compose("ps", "-q", service).stdout.strip() for service in ("dragoman", "dragoman-2")]
        for index, (port, container) in enumerate(zip(ports, containers, strict=True)):
            wait_for(partial(health_ok, port), 90, f"/health of replica {index + 1}")
            host.timings[f"replica {index + 1} healthy"] = time.time() - started_at(host, container)
        for container in containers:  # the image's own HEALTHCHECK agrees
            wait_for(partial(is_healthy, host, container), 60, "Docker's health status", interval=1)

        created = compose("exec", "-T", "dragoman", "dragoman", "keys", "create", "--name", "smoke", "--rpm", "2")
        secret = re.search(r"sk-dm-[A-Za-z0-9_-]+", created.stdout)
        assert secret, created.stdout

        clients = [openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=secret.group(0), max_retries=0)
                   for port in ports]
        for number, client in enumerate(clients, 1):
            raw = client.chat.completions.with_raw_response.create(
                model="echo/echo", messages=[{"role": "user", "content": f"hello, replica {number}"}])
            assert raw.headers["x-dragoman-backend"] == "echo/echo"
            answer = raw.parse()
            assert answer.choices[0].message.content == f"hello, replica {number}"
            assert answer.model == "echo/echo"
        # The key's 2 requests per minute are counted once across both replicas (Redis).
        with pytest.raises(openai.RateLimitError) as limited:
            clients[0].chat.completions.create(model="echo/echo", messages=[{"role": "user", "content": "three"}])
        assert limited.value.status_code == 429
        assert limited.value.body == {"message": "Rate limit exceeded for key 'smoke': 2 requests per minute.",
                                      "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}
        for client in clients:
            client.close()

        def usage_rows() -> list[str]:
            query = "SELECT key_name, requested_model, backend, status, dialect FROM usage_records ORDER BY ts"
            result = compose("exec", "-T", "postgres", "psql", "-U", "dragoman", "-d", "dragoman", "-At", "-c", query)
            rows = result.stdout.split()
            return rows if len(rows) >= 3 else []

        assert wait_for(usage_rows, 20, "three usage rows in PostgreSQL", interval=0.5) == [
            "smoke|echo/echo|echo|200|openai", "smoke|echo/echo|echo|200|openai", "smoke|echo/echo||429|openai"]

    label = f"label=com.docker.compose.project={compose.project}"
    for kind in ("container", "network", "volume"):
        left = host.run(kind, "ls", *(["--all"] if kind == "container" else []), "--quiet", "--filter", label)
        assert left.stdout.strip() == "", f"{kind}s left behind"


# -- environment-only configuration ---------------------------------------------------------------
def test_docker_run_with_only_environment_is_an_ollama_front_for_an_openai_upstream(
        host: DockerHost, image: str) -> None:
    import ollama

    from tests.fakes.openai_upstream import FakeOpenAI
    from tests.servers import ServerThread

    fake = FakeOpenAI()
    with ServerThread(fake.app()) as upstream:
        port = free_port()
        # The host's network: the container reaches the fake upstream on loopback.
        container = host.run("run", "--detach", "--network", "host", "--env", f"DRAGOMAN_PORT={port}",
                             "--env", f"DRAGOMAN_OPENAI_BASE_URL={upstream.url}/v1",
                             "--env", "DRAGOMAN_OPENAI_API_KEY=sk-upstream", image).stdout.strip()
        try:
            wait_for(lambda: health_ok(port), 60, "/health")
            client = ollama.Client(host=f"http://127.0.0.1:{port}")
            names = [model.model for model in client.list().models]
            model = next(name for name in names if name and name.endswith("gpt-test"))
            reply = client.chat(model=model, messages=[{"role": "user", "content": "hi"}], stream=False)
            assert reply.message.content == "You said: hi"
            assert fake.last().headers["authorization"] == "Bearer sk-upstream"
        finally:
            host.run("rm", "--force", "--volumes", container, check=False)
