"""The write key in ``Authorization: Basic base64(key:)``, as Segment's SDKs send it."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ingest.auth import write_key_from_authorization


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_the_key_with_an_empty_password_is_the_write_key() -> None:
    assert write_key_from_authorization("Basic d2stbGl2ZS0xMjM6") == "wk-live-123"  # "wk-live-123:"


def test_a_key_without_any_colon_is_the_write_key() -> None:
    assert write_key_from_authorization(basic("wk-live-123")) == "wk-live-123"


def test_the_password_is_ignored_even_when_it_holds_colons() -> None:
    assert write_key_from_authorization(basic("wk-live-123:pass:with:colons")) == "wk-live-123"


@pytest.mark.parametrize("scheme", ["basic", "BASIC", "Basic"])
def test_the_scheme_is_case_insensitive(scheme: str) -> None:
    assert write_key_from_authorization(f"{scheme} d2stbGl2ZS0xMjM6") == "wk-live-123"


def test_spaces_around_the_credentials_are_ignored() -> None:
    assert write_key_from_authorization("Basic   d2stbGl2ZS0xMjM6  ") == "wk-live-123"


@given(
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1).filter(lambda k: ":" not in k),
    st.text(st.characters(exclude_categories=["Cs"])),
)
def test_any_key_and_password_give_back_the_key(key: str, password: str) -> None:
    assert write_key_from_authorization(basic(f"{key}:{password}")) == key


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic",
        "Basic ",
        "Bearer d2stbGl2ZS0xMjM6",
        "Digest username=wk",
        "d2stbGl2ZS0xMjM6",  # credentials without a scheme
        "Basic not base64!",
        "Basic d2stbGl2ZS0xMjM",  # padding cut off
        "Basic " + base64.b64encode(b"\xff\xfe:").decode(),  # not UTF-8
        basic(":secret"),  # an empty key
        basic(":"),
    ],
)
def test_headers_without_a_write_key_give_none(header: str | None) -> None:
    assert write_key_from_authorization(header) is None
