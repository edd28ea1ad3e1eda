"""Admin sign-in pieces on their own: secret masking, login throttling, signed sessions."""

from __future__ import annotations

from pathlib import Path

from dragoman.admin.masking import MASK, contains_mask, mask, mask_value, unmask
from dragoman.admin.security import AdminAuth
from dragoman.admin.throttle import SignInThrottle, address_bucket
from dragoman.gateway.settings import SettingsStore
from dragoman.gateway.store import Store
from tests.gateway_fixtures import FakeClock

SECRET = "sk-proj-0123456789abcdefWXYZ"


def test_mask_hides_every_secret_and_only_secrets() -> None:
    settings = {"base_url": "https://x", "api_key": SECRET, "max_tokens": 5,
                "headers": {"Authorization": "Bearer abc", "X-Api-Key": "k", "Accept": "json"},
                "models": ["a"], "access_token": "tok"}
    masked = mask(settings)
    assert masked == {"base_url": "https://x", "api_key": "sk-...WXYZ", "max_tokens": 5,
                      "headers": {"Authorization": MASK, "X-Api-Key": MASK, "Accept": "json"},
                      "models": ["a"], "access_token": MASK}
    assert SECRET not in repr(masked)
    assert mask_value("forward") == "forward"  # a mode, not a secret


def test_unmask_keeps_unchanged_secrets_and_takes_new_ones() -> None:
    old = {"api_key": SECRET, "headers": {"Authorization": "Bearer abc"}}
    same = unmask(mask(old), old)
    assert same == old
    changed = unmask({"api_key": "sk-new", "headers": {"Authorization": MASK}}, old)
    assert changed == {"api_key": "sk-new", "headers": {"Authorization": "Bearer abc"}}
    orphan = unmask({"api_key": MASK}, {})
    assert contains_mask(orphan)


def test_throttle_delay_grows_per_account_and_address_and_is_capped() -> None:
    clock = FakeClock()
    throttle = SignInThrottle(free=5, first_delay=3, max_delay=300, clock=clock)
    for _ in range(5):
        assert throttle.retry_after("admin", "10.0.0.1") is None
        throttle.failed("admin", "10.0.0.1")
    waits = []
    for _ in range(10):
        wait = throttle.retry_after("admin", "10.0.0.1")
        assert wait is not None
        waits.append(wait)
        clock.advance(wait)
        assert throttle.retry_after("admin", "10.0.0.1") is None  # a delay, never a lockout
        throttle.failed("admin", "10.0.0.1")
    assert waits == [3, 6, 12, 24, 48, 96, 192, 300, 300, 300]
    # Other addresses and other accounts are untouched.
    assert throttle.retry_after("admin", "10.0.0.2") is None
    assert throttle.retry_after("other", "10.0.0.1") is None
    # A success forgets the failures; so does an hour without one.
    throttle.succeeded("admin", "10.0.0.1")
    assert throttle.retry_after("admin", "10.0.0.1") is None
    for _ in range(7):
        throttle.failed("admin", "10.0.0.3")
    assert throttle.retry_after("admin", "10.0.0.3") is not None
    clock.advance(3600)
    throttle.failed("admin", "10.0.0.3")
    assert throttle.retry_after("admin", "10.0.0.3") is None  # the count started over


def test_throttle_counts_an_ipv6_network_as_one_address() -> None:
    assert address_bucket("2001:db8:1:2:aaaa::1") == address_bucket("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:3::1") != address_bucket("2001:db8:1:2::1")
    assert address_bucket("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_bucket("198.51.100.4") == "198.51.100.4"
    throttle = SignInThrottle(clock=FakeClock())
    for n in range(5):
        throttle.failed("admin", f"2001:db8:1:2::{n + 1:x}")
    assert throttle.retry_after("admin", "2001:db8:1:2::ffff") is not None


def test_throttle_memory_is_bounded() -> None:
    throttle = SignInThrottle(max_entries=10, clock=FakeClock())
    for n in range(100):
        throttle.failed("admin", f"10.0.{n}.1")
    assert len(throttle) == 10
    assert throttle.retry_after("admin", "10.0.99.1") is None  # one failure: no wait yet
    for _ in range(5):
        throttle.failed("admin", "10.0.99.1")
    assert throttle.retry_after("admin", "10.0.99.1") is not None  # the latest are the ones kept


async def test_sessions_are_signed_and_survive_a_restart_but_not_a_new_password(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'd.db'}")
    try:
        settings = SettingsStore(store)
        shown: list[str] = []
        auth = AdminAuth(password="first-password", session_secret=None, announce=shown.append)
        await auth.setup(settings)
        session, cookie = auth.new_session(signed_in=True)
        assert auth.load(cookie) == session
        assert auth.load(cookie[:-2] + "xx") is None  # forged
        assert auth.load("garbage") is None
        assert await auth.check_password("first-password")
        assert not await auth.check_password("first-passwore")
        restarted = AdminAuth(password="first-password", session_secret=None, announce=shown.append)
        await restarted.setup(settings)
        assert restarted.load(cookie) == session
        changed = AdminAuth(password="second-password", session_secret=None, announce=shown.append)
        await changed.setup(settings)
        loaded = changed.load(cookie)
        assert loaded is not None and not loaded.signed_in
        assert shown == []  # configured passwords are never printed
        assert "first-password" not in repr(await settings.all())
    finally:
        await store.aclose()
