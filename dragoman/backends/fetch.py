"""Fetch image URLs for backends that need bytes, without becoming an SSRF proxy.

Rules (DESIGN.md): http(s) only; every host, the first and each redirect's (followed by hand,
at most five), is resolved here and refused if any address is not public (loopback, private,
link-local incl. cloud metadata, multicast, reserved, unspecified, shared, and IPv6 forms
embedding such IPv4 addresses); the connection then goes to exactly the addresses checked
(a pinned resolver), so a DNS answer cannot change between check and connect. The body is
streamed and cut past ``max_bytes``; the whole fetch is bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Sequence

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from dragoman.core.images import sniff_media_type
from dragoman.errors import ErrorKind, GatewayError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _refused(url: str, reason: str) -> GatewayError:
    return GatewayError(ErrorKind.INVALID_REQUEST, f"image URL {url} is not allowed: {reason}", param="messages")


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address, also looking inside IPv6 forms that carry IPv4."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and not is_public(embedded):
            return False
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified
                                      or address.is_loopback or address.is_link_local)


class _PinnedResolver(AbstractResolver):
    """Answers only with the addresses already checked for each host."""

    def __init__(self) -> None:
        self.pins: dict[str, list[ResolveResult]] = {}

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        pinned = self.pins.get(host)
        if not pinned:
            raise OSError(f"host {host!r} was not checked before connecting")
        return [{**result, "port": port or result["port"]} for result in pinned]

    async def close(self) -> None:
        return None


class SafeImageFetcher:
    """Implements ``dragoman.backends.base.ImageFetcher``."""

    def __init__(self, *, allow_hosts: Sequence[str] = (), max_bytes: int = 20 * 1024 * 1024,
                 timeout: float = 10.0, allow_private: bool = False,
                 trusted_networks: Sequence[str] = ()) -> None:
        self.allow_hosts = [h.lower() for h in allow_hosts]
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.allow_private = allow_private
        # Non-public networks an operator vouches for (an internal image store); tests use it too.
        self.trusted_networks = [ipaddress.ip_network(n) for n in trusted_networks]

    async def fetch(self, url: str) -> tuple[bytes, str]:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._fetch(url)
        except TimeoutError as exc:
            raise GatewayError(ErrorKind.INVALID_REQUEST,
                               f"fetching image URL {url} took longer than {self.timeout:g}s",
                               param="messages") from exc

    async def _fetch(self, original: str) -> tuple[bytes, str]:
        resolver = _PinnedResolver()
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, force_close=True)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=True) as session:
            url = original
            for _ in range(MAX_REDIRECTS + 1):
                target = self._parse(url)
                host = target.raw_host or ""
                resolver.pins[host] = await self._resolve(url, host, target.port or 80)
                try:
                    async with session.get(target, allow_redirects=False,
                                           headers={"Accept": "image/*"}) as response:
                        if response.status in REDIRECT_STATUSES:
                            location = response.headers.get("Location")
                            if not location:
                                raise _refused(url, f"HTTP {response.status} redirect without a Location")
                            url = str(target.join(URL(location)))
                            continue
                        if response.status != 200:
                            raise GatewayError(ErrorKind.INVALID_REQUEST,
                                               f"fetching image URL {url} failed with HTTP {response.status}",
                                               param="messages")
                        return await self._body(url, response)
                except aiohttp.ClientError as exc:
                    raise GatewayError(ErrorKind.INVALID_REQUEST, f"fetching image URL {url} failed: {exc}",
                                       param="messages") from exc
            raise _refused(original, f"more than {MAX_REDIRECTS} redirects")

    def _parse(self, url: str) -> URL:
        try:
            target = URL(url)
        except ValueError as exc:
            raise _refused(url, "not a valid URL") from exc
        if target.scheme not in ("http", "https"):
            raise _refused(url, "only http and https URLs are fetched")
        host = (target.raw_host or "").lower()
        if not host:
            raise _refused(url, "the URL has no host")
        if self.allow_hosts and not any(fnmatch.fnmatchcase(host, pattern) for pattern in self.allow_hosts):
            raise _refused(url, f"host {host} is not in the allow-list")
        return target

    async def _resolve(self, url: str, host: str, port: int) -> list[ResolveResult]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"image URL {url}: cannot resolve host {host}",
                               param="messages") from exc
        results: list[ResolveResult] = []
        for family, _, proto, _, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if not self._allowed(address):
                raise _refused(url, f"host {host} resolves to a non-public address ({address})")
            results.append({"hostname": host, "host": str(address), "port": port, "family": family,
                            "proto": proto, "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV})
        if not results:
            raise _refused(url, f"host {host} has no address")
        return results

    def _allowed(self, address: IPAddress) -> bool:
        if self.allow_private or any(address in network for network in self.trusted_networks):
            return True
        return is_public(address)

    async def _body(self, url: str, response: aiohttp.ClientResponse) -> tuple[bytes, str]:
        too_large = GatewayError(ErrorKind.INVALID_REQUEST,
                                 f"image at {url} is larger than {self.max_bytes} bytes", param="messages")
        if response.content_length is not None and response.content_length > self.max_bytes:
            raise too_large
        data = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            data += chunk
            if len(data) > self.max_bytes:
                raise too_large
        content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        media_type = content_type if content_type.startswith("image/") else sniff_media_type(bytes(data))
        return bytes(data), media_type
