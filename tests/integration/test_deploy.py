"""The files in ``deploy/``: the systemd unit passes ``systemd-analyze verify`` with its hardening, the
example environment builds a valid configuration, and the nginx example, run for real in front of
dragoman, serves https and streams frame by frame.

``systemd-analyze`` and ``nginx`` are looked up on ``PATH`` (``DRAGOMAN_TEST_NGINX`` may name an
nginx binary); without them those tests skip.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from dragoman.config import load_config
from tests.certs import CertificateAuthority
from tests.fakes.openai_upstream import FakeOpenAI
from tests.processes import clean_environment, dragoman_process, free_port
from tests.servers import ServerThread

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_systemd_unit_verifies_and_is_locked_down(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (DEPLOY / "dragoman.service").read_text()
    for line in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "ProtectHome=yes",
                 "PrivateTmp=yes", "CapabilityBoundingSet=\n", "StateDirectory=dragoman",
                 "ExecStart=/usr/local/bin/dragoman serve"):
        assert line in unit
    # verify checks that ExecStart exists: point it at this environment's dragoman.
    local = tmp_path / "dragoman.service"
    local.write_text(unit.replace("/usr/local/bin/dragoman", str(Path(sys.executable).with_name("dragoman"))))
    verify = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60, check=False)
    assert (verify.returncode, verify.stderr) == (0, "")
    security = subprocess.run([analyze, "security", "--offline=yes", str(local)], capture_output=True, text=True,
                              timeout=60, check=False)
    exposure = re.search(r"Overall exposure level for dragoman\.service: ([\d.]+)", security.stdout)
    assert exposure is not None, security.stdout + security.stderr
    assert float(exposure.group(1)) <= 2.0  # systemd calls up to 2.0 "OK"


def test_example_environment_builds_a_configuration() -> None:
    variables = {}
    for line in (DEPLOY / "dragoman.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            variables[name] = value
    assert {"DRAGOMAN_API_KEY", "DRAGOMAN_FORWARDED_ALLOW_IPS", "DRAGOMAN_OPENAI_BASE_URL"} <= set(variables)
    config = load_config(None, environ={**variables, "DRAGOMAN_API_KEY": "a-key-of-sixteen-or-more",
                                        "DRAGOMAN_OPENAI_API_KEY": "sk-upstream"})
    assert (config.server.host, config.server.port, config.server.forwarded_allow_ips) == (
        "127.0.0.1", 11435, ["127.0.0.1"])
    assert [(b.name, b.settings["models"]) for b in config.backends] == [
        ("openai", ["openai/gpt-4o-mini", "anthropic/*"])]
    assert config.auth.mode == "keys"


def _nginx() -> str:
    binary = os.environ.get("DRAGOMAN_TEST_NGINX") or shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx); the reverse-proxy example is not run")
    return binary


def _site(example: str, *, https_port: int, http_port: int, dragoman_port: int, cert: Path, key: Path) -> str:
    """The example as an operator would adapt it: ports, certificate paths (everything else as shipped)."""
    site = example.replace("server 127.0.0.1:11435;", f"server 127.0.0.1:{dragoman_port};")
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    site = re.sub(r"\n\s*listen \[::\]:\d+( ssl)?;", "", site)
    site = site.replace("/etc/letsencrypt/live/llm.example.com/fullchain.pem", str(cert))
    site = site.replace("/etc/letsencrypt/live/llm.example.com/privkey.pem", str(key))
    assert str(cert) in site and f"127.0.0.1:{dragoman_port}" in site
    return site


@pytest.fixture
def nginx_in_front(tmp_path: Path) -> Iterator[tuple[str, str, CertificateAuthority]]:
    """(https URL, http URL, the CA that signed nginx's certificate): nginx as the example sets it up,
    in front of dragoman (environment only) in front of a fake OpenAI upstream."""
    binary = _nginx()
    ca = CertificateAuthority(tmp_path)
    cert = ca.issue("server")
    fake = FakeOpenAI()
    with ServerThread(fake.app()) as upstream:
        dragoman_port, https_port, http_port = free_port(), free_port(), free_port()
        env = clean_environment(tmp_path, DRAGOMAN_OPENAI_BASE_URL=f"{upstream.url}/v1",
                                DRAGOMAN_OPENAI_MODELS="gpt-slow", DRAGOMAN_PORT=str(dragoman_port),
                                DRAGOMAN_FORWARDED_ALLOW_IPS="127.0.0.1")
        site = _site((DEPLOY / "nginx.conf").read_text(), https_port=https_port, http_port=http_port,
                     dragoman_port=dragoman_port, cert=cert.cert, key=cert.key)
        (tmp_path / "site.conf").write_text(site)
        user = "user root;\n" if os.geteuid() == 0 else ""
        (tmp_path / "nginx.conf").write_text(
            f"{user}worker_processes 1;\ndaemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
            "events {}\nhttp {\n  access_log off;\n"
            + "".join(f"  {kind}_temp_path {tmp_path}/{kind};\n"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + f"  include {tmp_path}/site.conf;\n}}\n")
        with dragoman_process(env=env, cwd=tmp_path):
            nginx = subprocess.Popen([binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                url = f"https://127.0.0.1:{https_port}"
                trusted = ssl.create_default_context(cafile=str(ca.path))
                deadline = time.monotonic() + 10
                while True:
                    try:
                        assert httpx.get(f"{url}/health", verify=trusted, timeout=1).json() == {"status": "ok"}
                        break
                    except httpx.TransportError:
                        if nginx.poll() is not None or time.monotonic() > deadline:
                            raise AssertionError((tmp_path / "error.log").read_text()) from None
                        time.sleep(0.1)
                yield url, f"http://127.0.0.1:{http_port}", ca
            finally:
                nginx.send_signal(signal.SIGQUIT)
                nginx.wait(timeout=15)


def test_nginx_example_streams_each_frame_as_it_comes(nginx_in_front: tuple[str, str, CertificateAuthority]) -> None:
    url, plain, ca = nginx_in_front
    redirect = httpx.get(f"{plain}/v1/models", headers={"host": "llm.example.com"})
    assert redirect.status_code == 301 and redirect.headers["location"] == "https://llm.example.com/v1/models"

    with openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(ca.path))) as http:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", http_client=http, max_retries=0)
        arrivals: list[float] = []
        text = ""
        # The fake upstream sends a 4-character chunk every 50 ms.
        stream = client.chat.completions.create(model="gpt-slow", stream=True, messages=[
            {"role": "user", "content": "streamed through nginx, one frame at a time"}])
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
                text += chunk.choices[0].delta.content
    assert text == "You said: streamed through nginx, one frame at a time"
    # Buffered, every frame would come at once at the end; streamed, they are spread over ~0.7 s. (dragoman's
    # streams also say X-Accel-Buffering: no, so nginx would not buffer them even with proxy_buffering on.)
    assert arrivals[-1] - arrivals[0] > 0.4, arrivals
