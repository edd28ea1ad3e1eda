"""Backend settings at rest: values from the environment as their ``${VAR}`` reference, secrets
encrypted with Fernet; no upstream secret in clear.

A copy of the database must not leak the upstream keys. A backend's settings exist in three forms:

* **stored** (the ``backends`` settings in the database): a value the config file wrote wholly as
  ``${VAR}`` references keeps the references; every other secret (a setting named like one, see
  :func:`dragoman.admin.masking.is_secret_name`) is ``fernet:<token>``;
* **edited** (what :class:`dragoman.admin.live.LiveSettings` compares and the admin API masks):
  secrets in clear, references kept as written;
* **run** (handed to the backend): references resolved from the environment.

References come only from the config file, and only when every variable in them is set and none
has a default (``${VAR:-default}`` may resolve to a default written in the file: that value is kept
resolved, and encrypted when it is a secret). A secret typed in the admin UI is always encrypted; a
reference typed there is refused, so the UI cannot be used to read the gateway's environment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from dragoman.admin.masking import MASK, is_secret_name
from dragoman.config import has_env_reference, interpolate, plain_env_references

SEALED_PREFIX = "fernet:"

Where = tuple[str | int, ...]  # dict keys and list indexes, from the top of the entry
StringMap = Callable[[str, Where, bool], str]  # (text, where it is, secret?) -> replacement


class SecretBox:
    """Encrypts and decrypts secret strings (``fernet:`` + a Fernet token). The first key
    encrypts; every key decrypts (rotation: a new key first, the old ones after it)."""

    def __init__(self, keys: Sequence[Fernet]) -> None:
        if not keys:
            raise ValueError("a SecretBox needs at least one key")
        self._first = keys[0]
        self._all = MultiFernet(list(keys))

    def encrypt(self, text: str) -> str:
        return SEALED_PREFIX + self._first.encrypt(text.encode()).decode()

    def decrypt(self, sealed: str) -> str:
        """The clear text; ``InvalidToken`` when no key here sealed it (or it was tampered with)."""
        return self._all.decrypt(_token(sealed)).decode()

    def current(self, sealed: str) -> bool:
        """True when the first key sealed it (nothing to rotate)."""
        try:
            self._first.decrypt(_token(sealed))
        except InvalidToken:
            return False
        return True

    def rotated(self, sealed: str) -> str:
        """``sealed`` encrypted anew with the first key; ``InvalidToken`` when no key opens it."""
        return SEALED_PREFIX + self._all.rotate(_token(sealed)).decode()


def _token(sealed: str) -> bytes:
    return sealed[len(SEALED_PREFIX):].encode()


def is_sealed(text: str) -> bool:
    return text.startswith(SEALED_PREFIX)


def map_strings(settings: Any, replace: StringMap, *, where: Where = (), secret: bool = False) -> Any:
    """A copy of ``settings`` with every string passed through ``replace`` (told whether it is a
    secret: under a secret-named key, at any depth)."""
    if isinstance(settings, dict):
        return {k: map_strings(v, replace, where=(*where, str(k)), secret=secret or is_secret_name(str(k)))
                for k, v in settings.items()}
    if isinstance(settings, list):
        return [map_strings(v, replace, where=(*where, i), secret=secret) for i, v in enumerate(settings)]
    if isinstance(settings, str):
        return replace(settings, where, secret)
    return settings


def describe(where: Where) -> str:
    """``settings.headers.Authorization``, ``settings.keys[0]``: for messages."""
    text = "settings"
    for part in where:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def value_at(settings: Any, where: Where) -> Any:
    """The value at ``where`` in ``settings``, or None when there is none."""
    value = settings
    for part in where:
        if isinstance(part, int):
            value = value[part] if isinstance(value, list) and part < len(value) else None
        else:
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return None
    return value


def _protectable(text: str, secret: bool) -> bool:
    """A secret in clear: not a reference, not sealed, not empty, not a mode (``api_key: forward``)."""
    return secret and text not in ("", "forward") and not is_sealed(text) and not has_env_reference(text)


def seal(entry: Mapping[str, Any], box: SecretBox) -> dict[str, Any]:
    """Edited -> stored: every clear secret encrypted; references and sealed values kept."""
    def encrypt(text: str, _where: Where, secret: bool) -> str:
        return box.encrypt(text) if _protectable(text, secret) else text
    return dict(map_strings(dict(entry), encrypt))


def unseal(entry: Mapping[str, Any], box: SecretBox, problems: list[str] | None = None) -> dict[str, Any]:
    """Stored -> edited. A secret no key here can decrypt becomes the mask (so it must be typed
    again), and where it is goes into ``problems``."""
    def decrypt(text: str, where: Where, secret: bool) -> str:
        if not (secret and is_sealed(text)):
            return text
        try:
            return box.decrypt(text)
        except InvalidToken:
            if problems is not None:
                problems.append(describe(where))
            return MASK
    return dict(map_strings(dict(entry), decrypt))


def resealed(entry: Mapping[str, Any], box: SecretBox) -> dict[str, Any] | None:
    """For entries an older dragoman (or an older key) wrote: the entry with clear secrets
    encrypted and sealed ones re-encrypted with the first key; None when nothing needs doing."""
    changed = False

    def redo(text: str, _where: Where, secret: bool) -> str:
        nonlocal changed
        if _protectable(text, secret):
            changed = True
            return box.encrypt(text)
        if secret and is_sealed(text) and not box.current(text):
            try:
                rotated = box.rotated(text)
            except InvalidToken:
                return text  # no key here opens it: left for the admin to type again
            changed = True
            return rotated
        return text

    redone = dict(map_strings(dict(entry), redo))
    return redone if changed else None


def resolve(entry: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Edited -> run: references resolved (``ConfigError`` naming an unset variable)."""
    def lookup(text: str, where: Where, _secret: bool) -> str:
        return str(interpolate(text, environ, describe(where))) if has_env_reference(text) else text
    return dict(map_strings(dict(entry), lookup))


def keep_references(resolved: Mapping[str, Any], written: Mapping[str, Any],
                    environ: Mapping[str, str]) -> dict[str, Any]:
    """A config-file entry in edited form: values written as ``${VAR}`` keep the reference."""
    def reference(text: str, where: Where, _secret: bool) -> str:
        original = value_at(written, where)
        if isinstance(original, str) and plain_env_references(original, environ):
            return original
        return text
    return dict(map_strings(dict(resolved), reference))


def typed_references(entry: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[str]:
    """Where ``entry`` holds a reference that ``old`` did not hold at the same place."""
    found: list[str] = []

    def check(text: str, where: Where, _secret: bool) -> str:
        if has_env_reference(text) and value_at(old or {}, where) != text:
            found.append(describe(where))
        return text
    map_strings(dict(entry), check)
    return found
