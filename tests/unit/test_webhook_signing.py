"""Signing secrets and signatures: Standard Webhooks' headers, checked against the spec's own
construction computed here by hand, and secrets sealed at rest."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from standardwebhooks import Webhook

from app.dispatch.errors import SecretUnreadable
from app.dispatch.secret_box import SecretBox, generate_signing_secret, signing_secret_problem
from app.dispatch.store import SendableDestination
from app.dispatch.webhooks import new_webhook_id, signature_headers, webhook_body

AT = datetime(2026, 11, 24, 12, 0, 5, 700_000, tzinfo=UTC)


def expected_signature(secret: str, webhook_id: str, timestamp: str, body: str) -> str:
    """The spec: HMAC-SHA256 of '{id}.{timestamp}.{body}', keyed by the base64-decoded part of
    the secret after 'whsec_', sent as 'v1,' and the base64 digest."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def test_headers_carry_id_whole_second_timestamp_and_the_specs_signature():
    secret = generate_signing_secret()
    body = webhook_body("segflow.test", {"message": "héllo"}, at=AT)
    headers = signature_headers(secret=SecretStr(secret), webhook_id="msg_1", body=body, at=AT)
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1795521605"
    assert headers["webhook-signature"] == expected_signature(secret, "msg_1", "1795521605", body)


def test_a_receiver_using_the_library_verifies_what_is_signed(monkeypatch):
    secret = generate_signing_secret()
    now = datetime.now(UTC)
    body = webhook_body("segflow.test", {"n": 1}, at=now)
    headers = signature_headers(secret=SecretStr(secret), webhook_id="msg_2", body=body, at=now)
    assert Webhook(secret).verify(body, headers) == {
        "type": "segflow.test",
        "timestamp": now.isoformat(),
        "data": {"n": 1},
    }
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(generate_signing_secret()).verify(body, headers)
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(secret).verify(body.replace("1", "2"), headers)


def test_generated_secrets_are_32_random_bytes_in_the_specs_shape():
    secrets = {generate_signing_secret() for _ in range(100)}
    assert len(secrets) == 100
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret[6:])) == 32
        assert signing_secret_problem(secret) is None


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("hunter2hunter2hunter2hunter2", "starts with 'whsec_'"),
        ("whsec_not base64!", "not base64"),
        ("whsec_" + base64.b64encode(b"x" * 8).decode(), "holds 8 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "holds 65 bytes"),
    ],
)
def test_a_secret_that_cannot_sign_is_refused_without_being_repeated(secret: str, problem: str):
    message = signing_secret_problem(secret)
    assert message is not None
    assert problem in message
    assert secret not in message


def test_the_box_seals_so_that_only_its_key_opens():
    box = SecretBox([Fernet.generate_key()])
    sealed = box.seal("whsec_abc")
    assert "whsec_abc" not in sealed
    assert box.seal("whsec_abc") != sealed  # a fresh IV each time
    assert box.open(sealed) == "whsec_abc"
    with pytest.raises(SecretUnreadable, match="destination 'email'"):
        SecretBox([Fernet.generate_key()]).open(sealed, what="the secret of destination 'email'")


def test_keys_rotate_the_newest_seals_and_every_key_opens():
    old, new = Fernet.generate_key(), Fernet.generate_key()
    sealed_before = SecretBox([old]).seal("whsec_old")
    rotated = SecretBox([new, old])
    assert rotated.open(sealed_before) == "whsec_old"
    assert SecretBox([new]).open(rotated.seal("whsec_new")) == "whsec_new"


def test_a_key_that_is_not_a_fernet_key_says_how_to_make_one():
    with pytest.raises(ValueError, match=r"Fernet\.generate_key"):
        SecretBox([b"too short"])


def test_a_destination_ready_to_send_never_shows_its_secret():
    secret = generate_signing_secret()
    destination = SendableDestination(
        name="email", url="https://x.example", secret=SecretStr(secret)
    )
    assert secret not in repr(destination)
    assert secret not in str(destination)
    assert secret not in repr(SecretBox([Fernet.generate_key()]))


def test_webhook_ids_are_unique_and_prefixed():
    ids = {new_webhook_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("msg_") for i in ids)
