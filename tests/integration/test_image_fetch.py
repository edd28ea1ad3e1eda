"""The SSRF-safe image fetcher against real local servers.

Loopback stands in for "private": the allowed paths run with ``allow_private`` or with only
127.0.0.2 trusted, so a redirect from there to 127.0.0.1 is the blocked hop.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from dragoman.backends.fetch import SafeImageFetcher, is_public
from dragoman.errors import ErrorKind, GatewayError
from tests.fakes.ollama_upstream import PNG
from tests.servers import ServerThread


def image_app() -> Starlette:
    async def png(request: Request) -> Response:
        return Response(PNG, media_type="image/png")

    async def untyped(request: Request) -> Response:
        return Response(PNG, media_type="application/octet-stream")

    async def big(request: Request) -> Response:
        return Response(b"\x89PNG" + b"0" * 5000, media_type="image/png")

    async def big_chunked(request: Request) -> Response:
        async def chunks() -> object:
            for _ in range(10):
                yield b"0" * 1000

        return StreamingResponse(chunks(), media_type="image/png")  # type: ignore[arg-type]

    async def slow(request: Request) -> Response:
        await asyncio.sleep(1)
        return Response(PNG, media_type="image/png")

    async def redirect(request: Request) -> Response:
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def loop(request: Request) -> Response:
        return RedirectResponse("/loop", status_code=307)

    async def missing(request: Request) -> Response:
        return Response(b"no", status_code=404)

    return Starlette(routes=[Route("/png", png), Route("/untyped", untyped), Route("/big", big),
                             Route("/big-chunked", big_chunked), Route("/slow", slow),
                             Route("/redirect", redirect), Route("/loop", loop), Route("/missing", missing)])


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(image_app()) as s:
        yield s


@pytest.fixture(scope="module")
def trusted() -> Iterator[ServerThread]:
    """The same app on 127.0.0.2, the one address the ``trusted_networks`` fetcher accepts."""
    with ServerThread(image_app(), host="127.0.0.2") as s:
        yield s


async def refused(fetcher: SafeImageFetcher, url: str) -> str:
    with pytest.raises(GatewayError) as info:
        await fetcher.fetch(url)
    assert info.value.kind is ErrorKind.INVALID_REQUEST and info.value.status == 400
    return info.value.message


async def test_allowed_fetch(server: ServerThread) -> None:
    fetcher = SafeImageFetcher(allow_private=True)
    assert await fetcher.fetch(server.url + "/png") == (PNG, "image/png")
    assert await fetcher.fetch(server.url + "/untyped") == (PNG, "image/png")  # sniffed
    redirected = f"{server.url}/redirect?to=/png"
    assert await fetcher.fetch(redirected) == (PNG, "image/png")


async def test_loopback_literal_is_refused(server: ServerThread) -> None:
    message = await refused(SafeImageFetcher(), server.url + "/png")
    assert message == (f"image URL {server.url}/png is not allowed: host 127.0.0.1 resolves to a non-public "
                       "address (127.0.0.1)")


async def test_hostname_resolving_to_loopback_is_refused(server: ServerThread) -> None:
    url = f"http://localhost:{server.port}/png"
    message = await refused(SafeImageFetcher(), url)
    assert "host localhost resolves to a non-public address" in message


async def test_redirect_to_loopback_is_refused(trusted: ServerThread, server: ServerThread) -> None:
    fetcher = SafeImageFetcher(trusted_networks=["127.0.0.2/32"])
    assert await fetcher.fetch(trusted.url + "/png") == (PNG, "image/png")
    target = server.url + "/png"
    message = await refused(fetcher, f"{trusted.url}/redirect?to={target}")
    assert message == f"image URL {target} is not allowed: host 127.0.0.1 resolves to a non-public address (127.0.0.1)"


async def test_redirect_to_another_scheme_is_refused(server: ServerThread) -> None:
    message = await refused(SafeImageFetcher(allow_private=True), f"{server.url}/redirect?to=file:///etc/passwd")
    assert message == "image URL file:///etc/passwd is not allowed: only http and https URLs are fetched"


async def test_too_many_redirects(server: ServerThread) -> None:
    message = await refused(SafeImageFetcher(allow_private=True), server.url + "/loop")
    assert message.endswith("more than 5 redirects")


async def test_schemes_and_allow_list(server: ServerThread) -> None:
    fetcher = SafeImageFetcher(allow_private=True, allow_hosts=["*.example.com"])
    assert (await refused(fetcher, "ftp://images.example.com/a.png")).endswith("only http and https URLs are fetched")
    assert (await refused(fetcher, server.url + "/png")).endswith("host 127.0.0.1 is not in the allow-list")


async def test_size_limit(server: ServerThread) -> None:
    fetcher = SafeImageFetcher(allow_private=True, max_bytes=1000)
    assert (await refused(fetcher, server.url + "/big")).endswith("is larger than 1000 bytes")
    assert (await refused(fetcher, server.url + "/big-chunked")).endswith("is larger than 1000 bytes")


async def test_time_limit(server: ServerThread) -> None:
    fetcher = SafeImageFetcher(allow_private=True, timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await refused(fetcher, server.url + "/slow")).endswith("took longer than 0.3s")
    assert loop.time() - started < 2


async def test_error_status(server: ServerThread) -> None:
    message = await refused(SafeImageFetcher(allow_private=True), server.url + "/missing")
    assert message.endswith("failed with HTTP 404")


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.100.100.200", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("255.255.255.255", False), ("240.0.0.1", False), ("::1", False), ("::", False), ("fe80::1", False),
    ("fd00:ec2::254", False), ("ff02::1", False), ("::ffff:127.0.0.1", False), ("64:ff9b::7f00:1", False),
    ("2002:7f00:1::", False), ("2002:808:808::", True),
])
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public
