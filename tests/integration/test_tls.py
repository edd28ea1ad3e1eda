"""https served by dragoman itself: flags and ``server.tls``, the official SDKs trusting a test CA,
Secure admin cookies, client certificates, and clear errors for unusable files."""

from __future__ import annotations

import ssl
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.certs import CertificateAuthority
from tests.processes import clean_environment, dragoman_process, free_port, run_dragoman

ECHO = "backends:\n  - {name: test, type: echo, models: [echo]}\n"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    directory = tmp_path / "pki"
    directory.mkdir()
    return CertificateAuthority(directory)


def trusting(ca: CertificateAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.path))


def test_ssl_flags_serve_https_to_every_sdk(tmp_path: Path, ca: CertificateAuthority) -> None:
    server = ca.issue("server")
    (tmp_path / "dragoman.yaml").write_text(ECHO + f"database: sqlite:///{tmp_path / 'db.sqlite'}\n")
    env = clean_environment(tmp_path, DRAGOMAN_ADMIN_PASSWORD="admin-password-123")
    port = free_port()
    with dragoman_process("--config", "dragoman.yaml", "--port", str(port), "--ssl-certfile", str(server.cert),
                          "--ssl-keyfile", str(server.key), env=env, cwd=tmp_path) as running:
        url = f"https://127.0.0.1:{port}"
        assert running.url == url

        # Each SDK's own HTTP client class (the anthropic SDK's is not httpx's), trusting the test CA.
        with openai.DefaultHttpxClient(verify=trusting(ca)) as http:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", http_client=http, max_retries=0)
            reply = client.chat.completions.create(model="test/echo",
                                                   messages=[{"role": "user", "content": "over tls"}])
            assert reply.choices[0].message.content == "over tls"
            assert [m.id for m in client.models.list()] == ["test/echo"]

        with anthropic.DefaultHttpxClient(verify=trusting(ca)) as http:
            claude = anthropic.Anthropic(base_url=url, api_key="unused", http_client=http, max_retries=0)
            message = claude.messages.create(model="test/echo", max_tokens=32,
                                             messages=[{"role": "user", "content": "hello anthropic"}])
            assert message.content[0].type == "text" and message.content[0].text == "hello anthropic"

        local = ollama.Client(host=url, verify=trusting(ca))
        answer = local.chat(model="test/echo", messages=[{"role": "user", "content": "hello ollama"}], stream=False)
        assert answer.message.content == "hello ollama"
        assert [m.model for m in local.list().models] == ["test/echo"]

        # The admin session cookie is Secure over https.
        with httpx.Client(verify=trusting(ca)) as http:
            session = http.get(f"{url}/admin/api/session")
        cookie = session.headers["set-cookie"]
        assert cookie.startswith("dragoman_admin=") and "Secure" in cookie and "HttpOnly" in cookie

        # A client that does not trust the certificate is refused by its own TLS check.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/health")


def test_plain_http_cookie_is_not_secure(tmp_path: Path) -> None:
    """The other half of the Secure check: without TLS (and no proxy saying https) no Secure flag."""
    (tmp_path / "dragoman.yaml").write_text(ECHO + f"database: sqlite:///{tmp_path / 'db.sqlite'}\n")
    env = clean_environment(tmp_path, DRAGOMAN_ADMIN_PASSWORD="admin-password-123")
    with dragoman_process("--config", "dragoman.yaml", "--port", str(free_port()), env=env, cwd=tmp_path) as running:
        assert running.url.startswith("http://")
        cookie = httpx.get(f"{running.url}/admin/api/session").headers["set-cookie"]
        assert cookie.startswith("dragoman_admin=") and "Secure" not in cookie


def test_server_tls_in_the_file_with_client_certificates(tmp_path: Path, ca: CertificateAuthority) -> None:
    """``server.tls`` paths are relative to the file's folder; ``ca_certs`` makes client certificates
    mandatory (mutual TLS)."""
    ca.issue("server")  # pki/server.pem and pki/server.key, named in the file below
    client = ca.issue("client", server=False)
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "dragoman.yaml").write_text(
        ECHO + f"database: sqlite:///{tmp_path / 'db.sqlite'}\n"
        "server:\n  tls: {certfile: ../pki/server.pem, keyfile: ../pki/server.key,\n"
        "         ca_certs: ../pki/dragoman-test-CA.pem}\n")
    port = free_port()
    env = clean_environment(tmp_path, DRAGOMAN_ADMIN_PASSWORD="admin-password-123")
    with dragoman_process("--config", str(config_dir / "dragoman.yaml"), "--port", str(port), env=env,
                          cwd=tmp_path) as running:
        assert running.url == f"https://127.0.0.1:{port}"
        with_cert = trusting(ca)
        with_cert.load_cert_chain(str(client.cert), str(client.key))
        with openai.DefaultHttpxClient(verify=with_cert) as http:
            client_sdk = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", http_client=http,
                                       max_retries=0)
            reply = client_sdk.chat.completions.create(model="test/echo",
                                                       messages=[{"role": "user", "content": "mutual"}])
            assert reply.choices[0].message.content == "mutual"
        # No client certificate: the server ends the handshake.
        with pytest.raises(httpx.TransportError), httpx.Client(verify=trusting(ca)) as http:
            http.get(f"{running.url}/health").raise_for_status()


def test_unusable_certificate_files_are_one_line_config_errors(tmp_path: Path, ca: CertificateAuthority) -> None:
    server, other = ca.issue("server"), ca.issue("other")
    (tmp_path / "dragoman.yaml").write_text(ECHO + f"database: sqlite:///{tmp_path / 'db.sqlite'}\n")
    env = clean_environment(tmp_path)

    mismatched = run_dragoman("serve", "--config", "dragoman.yaml", "--ssl-certfile", str(server.cert),
                              "--ssl-keyfile", str(other.key), env=env, cwd=tmp_path)
    assert mismatched.returncode == 2
    assert "Traceback" not in mismatched.stderr
    assert (f"dragoman: configuration error: server.tls: cannot use the certificate and key in {server.cert} "
            f"and {other.key}") in mismatched.stderr

    missing = run_dragoman("serve", "--config", "dragoman.yaml", "--ssl-certfile", "nowhere.pem", env=env,
                           cwd=tmp_path)
    assert missing.returncode == 2
    assert f"server.tls.certfile: {tmp_path / 'nowhere.pem'}: file not found" in missing.stderr

    key_alone = run_dragoman("serve", "--config", "dragoman.yaml", "--ssl-keyfile", str(server.key), env=env,
                             cwd=tmp_path)
    assert key_alone.returncode == 2
    assert "DRAGOMAN_SSL_KEYFILE (--ssl-keyfile) needs DRAGOMAN_SSL_CERTFILE (--ssl-certfile) too" in key_alone.stderr
