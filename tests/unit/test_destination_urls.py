"""Which URLs webhooks may go to: http(s) only, and hosts whose every address is public, unless
private destinations are allowed. DNS is faked here (the addresses a name resolves to are given);
the integration tests call real receivers on loopback."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.dispatch.errors import (
    DestinationURLError,
    UnresolvableDestinationURL,
    UnsafeDestinationURL,
)
from app.dispatch.urls import address_problem, check_destination_url, check_destination_url_async

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


def resolving_to(*addresses: str):
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return list(addresses)

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


def refusal(url: str, *addresses: str) -> str:
    with pytest.raises(UnsafeDestinationURL) as caught:
        check_destination_url(url, allow_private=False, resolve=resolving_to(*addresses))
    return str(caught.value)


def test_a_public_host_is_allowed_and_its_addresses_answered():
    resolve = resolving_to(PUBLIC_V4, PUBLIC_V6)
    addresses = check_destination_url(
        "https://hooks.example.com/segflow?x=1", allow_private=False, resolve=resolve
    )
    assert addresses == sorted(map(ipaddress.ip_address, [PUBLIC_V4, PUBLIC_V6]), key=str)
    assert resolve.asked == [("hooks.example.com", 443)]


def test_the_port_asked_for_is_the_urls():
    resolve = resolving_to(PUBLIC_V4)
    check_destination_url("http://hooks.example.com:8080/", allow_private=False, resolve=resolve)
    check_destination_url("http://hooks.example.com/", allow_private=False, resolve=resolve)
    assert resolve.asked == [("hooks.example.com", 8080), ("hooks.example.com", 80)]


@pytest.mark.parametrize(
    ("address", "word"),
    [
        ("127.0.0.1", "loopback"),
        ("127.1.2.3", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address refused, not one bound
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not a public"),  # carrier-grade NAT
        ("192.0.2.10", "private"),  # documentation
    ],
)
def test_a_host_resolving_to_an_address_that_is_not_public_is_refused(address: str, word: str):
    message = refusal("https://hooks.example.com/x", PUBLIC_V4, address)
    assert f"hooks.example.com resolves to {ipaddress.ip_address(address)}" in message
    assert word in message
    assert "SEGFLOW_ALLOW_PRIVATE_DESTINATIONS" in message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped
        "http://[2002:7f00:1::]/hook",  # 6to4 around 127.0.0.1
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
    ],
)
def test_an_address_written_in_the_url_is_checked_without_dns(url: str):
    with pytest.raises(UnsafeDestinationURL):
        check_destination_url(url, allow_private=False, resolve=resolving_to(PUBLIC_V4))


def test_an_ipv4_address_inside_an_ipv6_one_is_named():
    problem = address_problem(ipaddress.ip_address("::ffff:10.0.0.1"))
    assert problem == "10.0.0.1 is a private address (inside ::ffff:a00:1)"
    assert address_problem(ipaddress.ip_address(f"::ffff:{PUBLIC_V4}")) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/", "only http and https URLs are called, not 'ftp'"),
        ("file:///etc/passwd", "only http and https URLs are called, not 'file'"),
        ("gopher://hooks.example.com/", "not 'gopher'"),
        ("hooks.example.com/x", "only http and https URLs are called, not 'a URL without one'"),
        ("https://", "names no host"),
        ("https://user:pw@hooks.example.com/", "holds a user or password"),
        ("https://hooks.example.com:99999/", "not a URL"),
        ("https://\u00e9\u2603.example/", "not a URL: Invalid IDNA hostname"),
        ("https://hooks.example.com/a b", "whitespace"),
        ("https://hooks.example.com/\r\nX-Evil: 1", "whitespace or control characters"),
        ("https://hooks.example.com/" + "x" * 2000, "longer than 2000"),
    ],
)
def test_urls_of_another_shape_are_refused_before_any_lookup(url: str, reason: str):
    resolve = resolving_to(PUBLIC_V4)
    with pytest.raises(UnsafeDestinationURL) as caught:
        check_destination_url(url, allow_private=True, resolve=resolve)
    assert reason in str(caught.value)
    assert resolve.asked == []


def test_a_credential_in_the_url_is_not_repeated_in_the_refusal():
    message = refusal("https://user:hunter2@hooks.example.com/", PUBLIC_V4)
    assert "hunter2" not in message


def test_allowing_private_destinations_skips_the_address_check_only():
    resolve = resolving_to("127.0.0.1")
    assert check_destination_url("http://127.0.0.1:9/", allow_private=True, resolve=resolve) == []
    assert check_destination_url("http://localhost/", allow_private=True, resolve=resolve) == []
    assert resolve.asked == []
    with pytest.raises(UnsafeDestinationURL):
        check_destination_url("ftp://127.0.0.1/", allow_private=True)


def test_a_name_that_does_not_resolve_is_told_apart_from_an_unsafe_one():
    def fails(host: str, port: int) -> list[str]:
        raise OSError(-2, "Name or service not known")

    with pytest.raises(UnresolvableDestinationURL) as caught:
        check_destination_url("https://nowhere.example/", allow_private=False, resolve=fails)
    assert (
        str(caught.value)
        == "'nowhere.example' does not resolve: [Errno -2] Name or service not known"
    )
    with pytest.raises(UnresolvableDestinationURL):
        check_destination_url(
            "https://nowhere.example/", allow_private=False, resolve=resolving_to()
        )


def test_the_check_at_send_time_resolves_on_the_event_loop_and_checks_alike():
    async def resolve(host: str, port: int) -> list[str]:
        return ["10.0.0.7"]

    async def check(url: str) -> object:
        return await check_destination_url_async(url, allow_private=False, resolve=resolve)

    with pytest.raises(
        UnsafeDestinationURL, match=r"resolves to 10\.0\.0\.7: 10\.0\.0\.7 is a private"
    ):
        asyncio.run(check("https://rebinding.example/"))
    with pytest.raises(UnsafeDestinationURL, match="loopback"):
        asyncio.run(check("http://127.0.0.1/"))


@given(st.ip_addresses())
def test_only_globally_routable_unicast_addresses_are_allowed(address):
    target = address
    if address.version == 6:  # an IPv4 address carried inside is what is reached
        target = address.ipv4_mapped or address.sixtofour or (address.teredo or (0, address))[1]
    problem = address_problem(address)
    if not target.is_global:
        assert problem is not None
    if problem is None:
        assert target.is_global
        assert not target.is_multicast
        assert not target.is_reserved
        assert not target.is_private


@given(st.text(max_size=300))
def test_any_text_is_either_allowed_or_refused_with_a_reason(url: str):
    try:
        check_destination_url(url, allow_private=False, resolve=resolving_to(PUBLIC_V4))
    except DestinationURLError as error:
        reason = str(error)
    else:
        reason = "allowed"
    assert reason
