"""Which URLs Segflow sends webhooks to: http(s) only, and, unless
``SEGFLOW_ALLOW_PRIVATE_DESTINATIONS`` is on, only hosts whose every address is public.

Checked when a destination is saved and again before each send (``webhooks.send_webhook`` does),
since what a name resolves to changes. A name may still resolve differently between the check
and the connection (DNS rebinding); redirects are never followed, so an answer cannot point a
delivery elsewhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import SplitResult, urlsplit

import httpx

from app.dispatch.errors import UnresolvableDestinationURL, UnsafeDestinationURL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_LENGTH = 2000
SCHEMES = ("http", "https")

Resolver = Callable[[str, int], Iterable[str]]
AsyncResolver = Callable[[str, int], Awaitable[Iterable[str]]]


def parse_destination_url(url: str) -> tuple[SplitResult, str, int]:
    """The URL's parts, host and port, when its shape is one Segflow sends to."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeDestinationURL(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(char.isspace() or ord(char) < 32 for char in url):
        raise UnsafeDestinationURL("the URL holds whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        httpx.URL(url)  # what the client will make of it (IDNA host names, ...)
    except (ValueError, httpx.InvalidURL) as error:
        raise UnsafeDestinationURL(f"not a URL: {error}") from None
    if parts.scheme not in SCHEMES:
        raise UnsafeDestinationURL(
            f"only http and https URLs are called, not {parts.scheme or 'a URL without one'!r}"
        )
    if parts.username is not None or parts.password is not None:
        # it would show in every listing: authenticate with the signature, or a header
        raise UnsafeDestinationURL("the URL holds a user or password; send credentials as a header")
    host = parts.hostname
    if not host:
        raise UnsafeDestinationURL(f"{url!r} names no host")
    return parts, host, port or (443 if parts.scheme == "https" else 80)


def address_problem(address: IPAddress) -> str | None:
    """Why a webhook must not go to ``address`` (None: it is public)."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        problem = address_problem(embedded)
        return f"{problem} (inside {address})" if problem else None
    for word, flag in (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if flag:
            return f"{address} is a {word} address"
    if not address.is_global:  # shared (100.64/10), benchmarking, documentation ranges ...
        return f"{address} is not a public address"
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def _check_addresses(url: str, host: str, found: Iterable[str]) -> list[IPAddress]:
    addresses = sorted({ipaddress.ip_address(a.split("%", 1)[0]) for a in found}, key=str)
    if not addresses:
        raise UnresolvableDestinationURL(f"{host!r} resolves to no address")
    for address in addresses:
        problem = address_problem(address)
        if problem:
            shown = f"{host} resolves to {address}: " if host != str(address) else ""
            raise UnsafeDestinationURL(
                f"{shown}{problem}; webhooks go to public addresses only "
                "(SEGFLOW_ALLOW_PRIVATE_DESTINATIONS=1 allows others)"
            )
    return addresses


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_destination_url(
    url: str, *, allow_private: bool, resolve: Resolver | None = None
) -> list[IPAddress]:
    """Raise ``DestinationURLError`` unless Segflow may send to ``url``; answer the addresses
    checked (none when ``allow_private``: then only the URL's shape is checked). Blocking (DNS):
    call it from a thread, or ``check_destination_url_async``."""
    _parts, host, port = parse_destination_url(url)
    if allow_private:
        return []
    literal = _literal(host)
    if literal is not None:
        return _check_addresses(url, host, [str(literal)])
    try:
        found = list((resolve or _getaddrinfo)(host, port))
    except (OSError, UnicodeError, ValueError) as error:
        raise UnresolvableDestinationURL(f"{host!r} does not resolve: {error}") from None
    return _check_addresses(url, host, found)


async def check_destination_url_async(
    url: str, *, allow_private: bool, resolve: AsyncResolver | None = None
) -> list[IPAddress]:
    """``check_destination_url`` resolving on the event loop (what sends use)."""
    _parts, host, port = parse_destination_url(url)
    if allow_private:
        return []
    literal = _literal(host)
    if literal is not None:
        return _check_addresses(url, host, [str(literal)])
    try:
        found = list(await (resolve or _getaddrinfo_async)(host, port))
    except (OSError, UnicodeError, ValueError) as error:
        raise UnresolvableDestinationURL(f"{host!r} does not resolve: {error}") from None
    return _check_addresses(url, host, found)


def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def _getaddrinfo_async(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]
