"""``server.forwarded_allow_ips`` (``--forwarded-allow-ips``): behind a trusted proxy, the client address in
the logs and the admin sign-in throttle is the forwarded one; without it, the headers are ignored."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.processes import Running, clean_environment, dragoman_process, free_port

KEY = "forwarded-test-key-0123456789"
PASSWORD = "forwarded-admin-password"


def start(tmp_path: Path, *flags: str) -> tuple[list[str], dict[str, str]]:
    (tmp_path / "dragoman.yaml").write_text("backends: [{name: test, type: echo, models: [echo]}]\n"
                                            f"database: sqlite:///{tmp_path / 'db.sqlite'}\n")
    args = ["--config", "dragoman.yaml", "--port", str(free_port()), "--api-key", KEY, *flags]
    return args, clean_environment(tmp_path, DRAGOMAN_ADMIN_PASSWORD=PASSWORD)


def guess_admin_password(running: Running, client: str) -> int:
    response = httpx.get(f"{running.url}/admin/api/keys", headers={"authorization": "Bearer wrong-guess",
                                                                   "x-forwarded-for": client})
    return response.status_code


def throttle(running: Running, client: str) -> None:
    for _ in range(50):
        if guess_admin_password(running, client) == 429:
            return
    raise AssertionError(f"{client} was never throttled")


def test_behind_a_trusted_proxy_the_forwarded_address_counts(tmp_path: Path) -> None:
    args, env = start(tmp_path, "--forwarded-allow-ips", "127.0.0.1")
    with dragoman_process(*args, env=env, cwd=tmp_path) as running:
        response = httpx.get(f"{running.url}/v1/models", headers={"authorization": "Bearer not-the-key",
                                                                  "x-forwarded-for": "203.0.113.7"})
        assert response.status_code == 401
        assert running.wait_for("rejected openai request from 203.0.113.7: an unknown, revoked, disabled or "
                                "expired key")
        throttle(running, "203.0.113.7")
        assert guess_admin_password(running, "203.0.113.8") == 401  # another client is not throttled
        secure = httpx.get(f"{running.url}/admin/api/session", headers={"x-forwarded-proto": "https"})
        assert "Secure" in secure.headers["set-cookie"]


def test_without_trusted_proxies_forwarded_headers_are_ignored(tmp_path: Path) -> None:
    args, env = start(tmp_path)
    with dragoman_process(*args, env=env, cwd=tmp_path) as running:
        response = httpx.get(f"{running.url}/v1/models", headers={"authorization": "Bearer not-the-key",
                                                                  "x-forwarded-for": "203.0.113.7"})
        assert response.status_code == 401
        assert running.wait_for("rejected openai request from 127.0.0.1")
        assert "203.0.113.7" not in running.output
        throttle(running, "203.0.113.7")
        assert guess_admin_password(running, "203.0.113.8") == 429  # everyone is 127.0.0.1: all throttled
