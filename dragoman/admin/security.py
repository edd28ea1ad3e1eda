"""Admin sign-in: the password, signed sessions, CSRF tokens and login throttling.

* The password comes from ``DRAGOMAN_ADMIN_PASSWORD`` / ``auth.admin_password``; without either,
  one is generated on the first start, shown once on the terminal and only its argon2 hash is
  kept (in the settings table, so it survives restarts). There is no built-in default.
* A session is a cookie signed with itsdangerous: ``{csrf token, signed in?, password
  fingerprint}``. Any instance sharing the database (and so the signing secret, kept there
  encrypted) accepts it, also after a restart; changing the password ends every session (the
  fingerprint no longer matches).
* CSRF: a synchronizer token lives in the session; every unsafe request made with the cookie
  must echo it (``x-csrf-token`` header or ``csrf_token`` form field).
* Scripts use ``Authorization: Bearer <admin password>`` instead (no cookie, so no CSRF). A
  verified bearer is remembered as an HMAC, compared in constant time, so argon2 runs once.
* Failed attempts (form or bearer) are throttled per account and client address, with a
  growing delay (:mod:`dragoman.admin.throttle`); a dragoman API key sent instead of the
  password is refused as such and is not a guess.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.fernet import InvalidToken
from itsdangerous import BadSignature, URLSafeTimedSerializer

from dragoman.admin.sealing import SecretBox, is_sealed
from dragoman.admin.throttle import SignInThrottle
from dragoman.config import ConfigError
from dragoman.gateway.keys import looks_like_key
from dragoman.gateway.settings import SettingsStore

log = logging.getLogger("dragoman.admin")

PASSWORD_HASH_SETTING = "admin:password_hash"
SESSION_SECRET_SETTING = "admin:session_secret"
COOKIE_NAME = "dragoman_admin"
SESSION_MAX_AGE = 12 * 3600
ADMIN_ACCOUNT = "admin"  # the one account today; the throttle counts per account and address
_SALT = "dragoman-admin-session"


@dataclass(slots=True, frozen=True)
class Session:
    """What a session cookie says once its signature checks out."""

    csrf: str
    signed_in: bool

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf.encode(), (token or "").encode())


def _opened(stored: object, box: SecretBox | None) -> tuple[str, str] | None:
    """(clear signing secret, as stored), or None when there is none this process can use."""
    if not isinstance(stored, str):
        return None
    clear = stored
    if is_sealed(stored):
        if box is None:
            return None
        try:
            clear = box.decrypt(stored)
        except InvalidToken:
            log.warning("the saved session signing secret cannot be decrypted with this secret key (was "
                        "DRAGOMAN_SECRET_KEY or the key file changed?); a new one ends every admin session")
            return None
    return (clear, stored) if len(clear) >= 32 else None


class AdminAuth:
    """The admin credential and sessions. :meth:`setup` must run (once, at start) before use."""

    def __init__(self, *, password: str | None, session_secret: str | None,
                 announce: Callable[[str], None], throttle: SignInThrottle | None = None) -> None:
        self._configured_password = password
        self._configured_secret = session_secret
        self._announce = announce
        self.throttle = throttle or SignInThrottle()
        self._hasher = PasswordHasher()
        self._hash: str | None = None
        self._serializer: URLSafeTimedSerializer | None = None
        self._fingerprint = ""
        self._mac_key = secrets.token_bytes(32)  # per process: keys the remembered bearer digest
        self._bearer_digest: bytes | None = None

    @property
    def ready(self) -> bool:
        return self._hash is not None and self._serializer is not None

    async def setup(self, settings: SettingsStore, box: SecretBox | None = None) -> bool:
        """Resolve the signing secret and the password hash, generating and persisting them
        when they are not configured. With ``box`` the signing secret is stored encrypted (a copy
        of the database must not let anyone forge a session); returns True when one an older
        version stored in clear was encrypted now."""
        secret = self._configured_secret
        resealed = False
        if not secret:
            secret, resealed = await self._session_secret(settings, box)
        self._serializer = URLSafeTimedSerializer(secret, salt=_SALT)
        if self._configured_password:
            if looks_like_key(self._configured_password):
                raise ConfigError("the admin password must not look like a dragoman API key (sk-dm-...): "
                                  "such bearers are refused on the admin API as user keys")
            password, self._configured_password = self._configured_password, None  # keep only hashes
            self._hash = await asyncio.to_thread(self._hasher.hash, password)
            # Stable across restarts (the argon2 hash is salted anew each start), new with a new password.
            fingerprint = hmac.new(secret.encode(), b"admin-password:" + password.encode(), hashlib.sha256)
        else:
            stored = await settings.get(PASSWORD_HASH_SETTING)
            if not isinstance(stored, str) or not stored.startswith("$argon2"):
                generated = secrets.token_urlsafe(15)
                digest = await asyncio.to_thread(self._hasher.hash, generated)
                await settings.set(PASSWORD_HASH_SETTING, digest)
                stored = await settings.get(PASSWORD_HASH_SETTING)
                if stored == digest:  # another instance starting at once may have won the race
                    self._announce(generated)
            self._hash = str(stored)
            fingerprint = hmac.new(secret.encode(), b"admin-hash:" + self._hash.encode(), hashlib.sha256)
        self._fingerprint = fingerprint.hexdigest()[:16]
        self._bearer_digest = None
        return resealed

    async def _session_secret(self, settings: SettingsStore, box: SecretBox | None) -> tuple[str, bool]:
        """The stored signing secret (generated when missing), and whether it was resealed."""
        stored = _opened(await settings.get(SESSION_SECRET_SETTING), box)
        if stored is not None:
            if box is not None and not is_sealed(stored[1]):  # clear, from an older version
                await settings.set(SESSION_SECRET_SETTING, box.encrypt(stored[0]))
                return stored[0], True
            return stored[0], False
        fresh = secrets.token_urlsafe(48)
        await settings.set(SESSION_SECRET_SETTING, box.encrypt(fresh) if box is not None else fresh)
        # Another instance starting at once may have written its own: every instance uses the last one.
        again = _opened(await settings.get(SESSION_SECRET_SETTING), box)
        return (again[0] if again is not None else fresh), False

    # -- the password -------------------------------------------------------------------------

    async def check_password(self, password: str) -> bool:
        """argon2 verification, off the event loop (it is deliberately slow)."""
        if self._hash is None or not password or len(password) > 1024:
            return False
        return await asyncio.to_thread(self._verify, self._hash, password)

    def _verify(self, digest: str, password: str) -> bool:
        try:
            return bool(self._hasher.verify(digest, password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def check_bearer(self, token: str) -> bool:
        """The admin password as a bearer token: constant-time compare against the last one
        that verified, argon2 otherwise."""
        digest = hmac.new(self._mac_key, token.encode(), hashlib.sha256).digest()
        if self._bearer_digest is not None and hmac.compare_digest(digest, self._bearer_digest):
            return True
        if await self.check_password(token):
            self._bearer_digest = digest
            return True
        return False

    # -- sessions -----------------------------------------------------------------------------

    def new_session(self, *, signed_in: bool) -> tuple[Session, str]:
        """A fresh session (new CSRF token) and its cookie value."""
        session = Session(csrf=secrets.token_urlsafe(32), signed_in=signed_in)
        return session, self.dump(session)

    def dump(self, session: Session) -> str:
        assert self._serializer is not None, "AdminAuth.setup() has not run"
        return self._serializer.dumps({"c": session.csrf, "a": int(session.signed_in), "p": self._fingerprint})

    def load(self, cookie: str | None) -> Session | None:
        """The session in ``cookie``, or None when it is missing, forged, expired or stale."""
        if not cookie or self._serializer is None or len(cookie) > 4096:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=SESSION_MAX_AGE)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        signed_in = data.get("a") == 1 and hmac.compare_digest(str(data.get("p", "")), self._fingerprint)
        return Session(csrf=data["c"], signed_in=signed_in)
