"""A Docker daemon, a BuildKit builder and a compose command for the container tests.

What a bare CI machine lacks is set up when it can be (Debian, as root): ``docker.io``,
``docker-compose`` and ``debootstrap`` from apt, ``dockerd`` started in the background (left
running, as scripts/test.sh leaves PostgreSQL and Redis). Where no registry can be reached, the
base image is made from Debian's packages with debootstrap (``DRAGOMAN_TEST_BASE_IMAGE`` names
another, e.g. ``python:3.11-slim``) and PostgreSQL and Redis stand-ins are built on it; all
three are kept by tag and reused by later runs. When none of this is possible, :class:`Unavailable`
says why, and the tests skip with that reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STANDINS = Path(__file__).parent / "standins"
# Bump when the recipe below changes, so cached images from an older recipe are not reused.
RECIPE = "bookworm-1"
BASE_TAG = f"dragoman-test/base:{RECIPE}"
DEBIAN_PACKAGES = "python3,python3-venv,ca-certificates"
# What a debootstrap root keeps that no image needs: package caches and lists, documentation.
TRIM = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale")
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Unavailable(Exception):
    """Docker cannot be used here; the message is the reason the tests print when they skip."""


@dataclass
class DockerHost:
    """The commands that work on this machine, and what the setup measured."""

    docker: list[str]
    build: list[str]  # `docker build` with BuildKit (buildx, or a pre-23 client with DOCKER_BUILDKIT=1)
    compose: list[str]
    env: dict[str, str]
    ca_bundle: Path | None  # handed to builds as the pip-ca secret, never into an image
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        return _run([*self.docker, *args], env=self.env, check=check, timeout=timeout, input=input)

    def image_exists(self, tag: str) -> bool:
        return self.run("image", "inspect", tag, check=False).returncode == 0

    def image_size(self, tag: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())

    def build_image(self, context: Path, tag: str, *, build_args: dict[str, str] | None = None,
                    timeout: float = 900) -> float:
        """Build ``context`` as ``tag``; seconds taken. The CA bundle goes in as a BuildKit secret."""
        command = [*self.build, "--tag", tag]
        for name, value in (build_args or {}).items():
            command += ["--build-arg", f"{name}={value}"]
        if self.ca_bundle is not None:
            command += ["--secret", f"id=pip-ca,src={self.ca_bundle}"]
        started = time.monotonic()
        _run([*command, str(context)], env=self.env, timeout=timeout)
        return time.monotonic() - started


def _run(command: Sequence[str], *, env: dict[str, str] | None = None, check: bool = True, timeout: float = 120,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(command), capture_output=True, text=True, env=env, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}"
                           f"\n{result.stderr[-3000:]}")
    return result


def _is_root() -> bool:
    return os.geteuid() == 0


def _apt_install(*packages: str) -> None:
    if not (_is_root() and shutil.which("apt-get")):
        raise Unavailable(f"{', '.join(packages)} missing and cannot be installed here (needs apt-get as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(["apt-get", "install", "-y", "-q", *packages], capture_output=True, text=True,
                            env=env, timeout=600)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=300)
        result = subprocess.run(["apt-get", "install", "-y", "-q", *packages], capture_output=True, text=True,
                                env=env, timeout=600)
    if result.returncode != 0:
        raise Unavailable(f"apt-get install {' '.join(packages)} failed: {result.stderr.strip()[-300:]}")


@contextlib.contextmanager
def _machine_lock(name: str) -> Iterator[None]:
    """One setup at a time on this machine (two test runs may start together)."""
    with open(Path(tempfile.gettempdir()) / f"dragoman-test-{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _daemon_answers(docker: str) -> bool:
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _ensure_daemon() -> str:
    docker = shutil.which("docker")
    if docker and _daemon_answers(docker):
        return docker
    if not shutil.which("dockerd"):
        _apt_install("docker.io")
        docker = shutil.which("docker")
    if docker is None or not shutil.which("dockerd"):
        raise Unavailable("no Docker installed")
    if _daemon_answers(docker):
        return docker
    if not _is_root():
        raise Unavailable("the Docker daemon is not running and only root may start it")
    log = Path(tempfile.gettempdir()) / "dragoman-test-dockerd.log"
    with open(log, "ab") as out:
        subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _daemon_answers(docker):
            return docker
        time.sleep(1)
    raise Unavailable(f"dockerd did not start within 60 s (see {log})")


def _client_major(docker: str) -> int:
    result = subprocess.run([docker, "version", "--format", "{{.Client.Version}}"], capture_output=True,
                            text=True, timeout=20)
    match = re.match(r"(\d+)\.", result.stdout.strip())
    return int(match.group(1)) if match else 0


def _builder(env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(docker, build command): buildx where installed; else a client older than 23, whose own
    ``docker build`` speaks BuildKit with DOCKER_BUILDKIT=1 (newer ones need buildx for it)."""
    candidates: list[str] = []
    for folder in env.get("PATH", "").split(os.pathsep):
        path = os.path.join(folder, "docker")
        if os.access(path, os.X_OK) and os.path.realpath(path) not in map(os.path.realpath, candidates):
            candidates.append(path)
    for docker in candidates:
        if subprocess.run([docker, "buildx", "version"], capture_output=True, timeout=20).returncode == 0:
            return [docker], [docker, "buildx", "build", "--load", "--quiet"]
    for docker in candidates:
        if 0 < _client_major(docker) < 23:
            return [docker], [docker, "build", "--quiet"]
    raise Unavailable("no Docker client can build with BuildKit (install the buildx plugin)")


def _compose(docker: list[str], env: dict[str, str]) -> list[str]:
    if subprocess.run([*docker, "compose", "version"], capture_output=True, env=env, timeout=20).returncode == 0:
        return [*docker, "compose"]
    if not shutil.which("docker-compose"):
        _apt_install("docker-compose")
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise Unavailable("neither `docker compose` nor docker-compose is installed")


def _pip_ca_bundle() -> Path | None:
    """The certificate bundle pip trusts here (``PIP_CERT`` or pip's ``cert`` setting), if any."""
    configured = os.environ.get("PIP_CERT")
    if not configured:
        result = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                                timeout=60)
        for line in result.stdout.splitlines():
            name, _, value = line.partition("=")
            if name.strip().endswith(".cert"):
                configured = value.strip().strip("'\"")
                break
    return Path(configured) if configured and Path(configured).is_file() else None


def _debian_mirror() -> str | None:
    """The Debian mirror apt already uses (deb822 ``URIs:`` or a ``deb`` line), not the security one."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
               *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for source in sources:
        with contextlib.suppress(OSError):
            for line in source.read_text().splitlines():
                match = re.match(r"\s*(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(https?://\S+)", line)
                if match and "security" not in match.group(1) and "/debian" in match.group(1):
                    return match.group(1)
    return None


def _make_local_base(host: DockerHost) -> None:
    """A Debian bookworm root with Python, imported as an image (no registry needed)."""
    if not shutil.which("debootstrap"):
        _apt_install("debootstrap")
    if not _is_root():
        raise Unavailable("building the local base image with debootstrap needs root")
    mirror = _debian_mirror()
    with tempfile.TemporaryDirectory(prefix="dragoman-base-") as folder:
        root = Path(folder) / "root"
        command = ["debootstrap", "--variant=minbase", f"--include={DEBIAN_PACKAGES}", "bookworm", str(root)]
        result = subprocess.run([*command, *([mirror] if mirror else [])], capture_output=True, text=True,
                                timeout=1200)
        if result.returncode != 0:
            raise Unavailable(f"debootstrap failed: {(result.stdout + result.stderr).strip()[-500:]}")
        for part in TRIM:
            for child in (root / part).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            imported = subprocess.run([*host.docker, "import", "--change", f"ENV PATH={STANDARD_PATH}", "-",
                                       BASE_TAG], stdin=tar.stdout, capture_output=True, text=True,
                                      env=host.env, timeout=600)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()
        if imported.returncode != 0:
            raise Unavailable(f"docker import failed: {imported.stderr.strip()}")


def base_images(host: DockerHost) -> dict[str, str]:
    """The images the tests build on and run beside dragoman: {BASE, POSTGRES_IMAGE, REDIS_IMAGE}.

    ``DRAGOMAN_TEST_BASE_IMAGE`` (and ``DRAGOMAN_TEST_POSTGRES_IMAGE``/``..._REDIS_IMAGE``) name
    images to use as they are, e.g. the official ones where a registry is reachable; otherwise
    each is built here once and found by its tag afterwards.
    """
    base = os.environ.get("DRAGOMAN_TEST_BASE_IMAGE")
    images = {"BASE": base or BASE_TAG}
    with _machine_lock("images"):
        if base is None and not host.image_exists(BASE_TAG):
            started = time.monotonic()
            _make_local_base(host)
            host.timings["base image"] = time.monotonic() - started
        for name in ("postgres", "redis"):
            given = os.environ.get(f"DRAGOMAN_TEST_{name.upper()}_IMAGE")
            tag = given or f"dragoman-test/{name}:{RECIPE}" + ("" if base is None else f"-{_slug(base)}")
            if given is None and not host.image_exists(tag):
                host.timings[f"{name} stand-in"] = host.build_image(STANDINS / name, tag,
                                                                    build_args={"BASE": images["BASE"]})
            images[f"{name.upper()}_IMAGE"] = tag
    return images


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower())


def docker_host() -> DockerHost:
    """Everything set up, or :class:`Unavailable` with the reason."""
    if os.environ.get("DRAGOMAN_SKIP_DOCKER"):
        raise Unavailable("DRAGOMAN_SKIP_DOCKER is set")
    started = time.monotonic()
    with _machine_lock("daemon"):
        _ensure_daemon()
    env = {**os.environ, "DOCKER_BUILDKIT": "1", "COMPOSE_DOCKER_CLI_BUILD": "1"}
    docker, build = _builder(env)
    host = DockerHost(docker=docker, build=build, compose=_compose(docker, env), env=env, ca_bundle=_pip_ca_bundle())
    host.timings["daemon"] = time.monotonic() - started
    return host
