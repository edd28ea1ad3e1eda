"""``dragoman config show``: the configuration in effect, as YAML, with every secret masked.

What the file, the environment and the defaults add up to, so an operator can see what a start
would use without reading code. Secrets are masked the way the admin UI masks them (backend keys
as ``sk-...abcd``, passwords and static keys entirely, passwords inside database and Redis URLs).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from dragoman.admin.masking import MASK, mask
from dragoman.config import Config


def masked_config(config: Config) -> dict[str, Any]:
    """Every setting, defaults included, with no secret in clear."""
    data = config.model_dump(mode="json")
    data["backends"] = mask(data["backends"])
    auth = data["auth"]
    for name in ("admin_password", "session_secret"):
        if auth.get(name):
            auth[name] = MASK
    for key in auth.get("keys", []):
        key["key"] = MASK
    if data.get("database"):
        data["database"] = mask_url_password(data["database"])
    if data.get("redis"):  # a mapping: {url, max_connections, pool_wait}
        data["redis"]["url"] = mask_url_password(data["redis"]["url"])
    return data


def mask_url_password(url: str) -> str:
    """``postgresql://user:••••@host/db``: the user and host stay, the password goes."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


def render(config: Config) -> str:
    source = str(config.source) if config.source else "none (built-in defaults)"
    environment = ", ".join(config.environment) or "none"
    header = (f"# dragoman configuration in effect (secrets masked)\n# file: {source}\n"
              f"# environment variables applied: {environment}\n")
    return header + yaml.safe_dump(masked_config(config), sort_keys=False, allow_unicode=True)
