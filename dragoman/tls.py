"""https served by uvicorn itself (``server.tls``, ``--ssl-certfile``/``--ssl-keyfile``).

The certificate and key are loaded once before the server starts, so a missing file, a key that
does not match its certificate or a wrong format is a one-line configuration error (exit code 2)
rather than a traceback from inside uvicorn.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from dragoman.config import ConfigError, TLSConfig


def check_tls(tls: TLSConfig) -> None:
    """Raise ``ConfigError`` unless uvicorn can serve with these files."""
    for field, path in (("certfile", tls.certfile), ("keyfile", tls.keyfile), ("ca_certs", tls.ca_certs)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"server.tls.{field}: {path}: file not found")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(tls.certfile), str(tls.keyfile) if tls.keyfile else None)
    except ssl.SSLError as exc:
        files = f"{tls.certfile}" + (f" and {tls.keyfile}" if tls.keyfile else "")
        raise ConfigError(f"server.tls: cannot use the certificate and key in {files} "
                          f"({exc.reason or exc}): are both PEM, and does the key match the certificate?") from exc
    except OSError as exc:
        raise ConfigError(f"server.tls: cannot read the certificate or key: {exc.strerror or exc}") from exc
    if tls.ca_certs is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_certs))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"server.tls.ca_certs: {tls.ca_certs}: not a PEM CA bundle ({exc})") from exc


def uvicorn_tls_options(tls: TLSConfig | None) -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments; with ``ca_certs``, clients must present a certificate."""
    if tls is None:
        return {}
    options: dict[str, Any] = {"ssl_certfile": str(tls.certfile),
                               "ssl_keyfile": str(tls.keyfile) if tls.keyfile else None}
    if tls.ca_certs is not None:
        options.update(ssl_ca_certs=str(tls.ca_certs), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options
