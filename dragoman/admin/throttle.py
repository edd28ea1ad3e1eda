"""Slowing down password guessing: a growing delay per (account, client address).

A hard lockout after N failures lets anyone lock the admin out: every user behind one reverse
proxy shares an address, and the right password was refused with the wrong ones. Here each
(account, address) pair gets ``free`` failed attempts; after that it must wait before its next
attempt, ``first_delay`` seconds, doubling with every further failure up to ``max_delay``.
Attempts made while waiting are answered 429 without checking the password (so they are not
guesses and do not extend the wait); a success forgets the pair's failures. Other addresses are
never affected, so a flood from one address does not keep the admin out from another.

Memory is bounded: at most ``max_entries`` pairs are kept (the least recently failed are dropped
first), and a pair is forgotten ``forget_after`` seconds after its last failure. IPv6 addresses
count per /64 network, the block one subscriber usually holds, so rotating through it gains nothing.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


def address_bucket(address: str) -> str:
    """The unit an attempt is counted against: the IPv4 address, or the IPv6 /64 network."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]  # not an IP (a test client, a Unix socket): counted as it is, bounded
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


@dataclass(slots=True)
class _Failures:
    count: int
    last: float  # monotonic time of the last failure


class SignInThrottle:
    def __init__(self, *, free: int = 5, first_delay: float = 3.0, max_delay: float = 300.0,
                 forget_after: float = 3600.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free = free
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` consecutive failures."""
        if failures < self.free:
            return 0.0
        return min(self.max_delay, self.first_delay * 2.0 ** (failures - self.free))

    def _current(self, key: tuple[str, str]) -> _Failures | None:
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry.last >= self.forget_after:
            del self._entries[key]
            return None
        return entry

    def retry_after(self, account: str, address: str) -> float | None:
        """Seconds until this account may be tried again from ``address``; None: now."""
        entry = self._current((account, address_bucket(address)))
        if entry is None:
            return None
        wait = entry.last + self.delay(entry.count) - self._clock()
        return wait if wait > 0 else None

    def failed(self, account: str, address: str) -> None:
        key = (account, address_bucket(address))
        entry = self._current(key)
        if entry is None:
            while len(self._entries) >= self._max:
                self._entries.popitem(last=False)
            entry = self._entries[key] = _Failures(0, 0.0)
        entry.count += 1
        entry.last = self._clock()
        self._entries.move_to_end(key)

    def succeeded(self, account: str, address: str) -> None:
        self._entries.pop((account, address_bucket(address)), None)
