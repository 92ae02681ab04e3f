"""The admin UI's sessions: an admin token logs in once, a signed cookie keeps the session.

The cookie (``segflow_session``) holds ``{"t": the token's SHA-256, "c": the CSRF token, "e":
expiry}``, signed with HMAC-SHA256 under a key derived from the secret key
(``SecretBox.derive``), never the token itself. It is ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (no other site's page sends it), ``Secure`` when the request came over
https, and expires after ``SESSION_S``. Every request re-checks the token's hash against the
stored tokens (cached a few seconds), so a revoked token ends its sessions.

CSRF: a state-changing request (any method but GET, HEAD, OPTIONS) must carry the session's
CSRF token, in the ``X-CSRF-Token`` header (htmx sends it from the page's ``hx-headers``) or a
form's ``csrf`` field. The login form, before any session, carries a nonce that must equal the
one in a short-lived signed cookie set with the form (double submit).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson

SESSION_COOKIE = "segflow_session"
LOGIN_COOKIE = "segflow_login"
SESSION_S = 12 * 3600
LOGIN_S = 3600
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True)
class WebSession:
    token_hash: str
    csrf: str
    expires: int  # seconds since the epoch
    name: str = ""  # whose token (what the audit trail records), once checked


class Signer:
    """Signs small JSON payloads for cookies; ``loads`` refuses a changed or expired one."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def dumps(self, payload: dict[str, Any]) -> str:
        body = base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=")
        return f"{body.decode()}.{self._sign(body)}"

    def loads(self, value: str) -> dict[str, Any] | None:
        body, _, signature = value.encode().partition(b".")
        if not hmac.compare_digest(self._sign(body).encode(), signature):
            return None
        try:
            payload = orjson.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if not isinstance(payload, dict) or int(payload.get("e", 0)) < time.time():
            return None
        return payload

    def _sign(self, body: bytes) -> str:
        digest = hmac.new(self._key, body, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_session(signer: Signer, token_hash: str) -> tuple[WebSession, str]:
    """A fresh session for the token with this hash, and its cookie value."""
    session = WebSession(token_hash, secrets.token_urlsafe(24), int(time.time()) + SESSION_S)
    cookie = signer.dumps({"t": session.token_hash, "c": session.csrf, "e": session.expires})
    return session, cookie


def read_session(signer: Signer, cookie: str | None) -> WebSession | None:
    payload = signer.loads(cookie) if cookie else None
    if payload is None or not isinstance(payload.get("t"), str):
        return None
    return WebSession(payload["t"], str(payload.get("c", "")), int(payload["e"]))


def new_login_nonce(signer: Signer) -> tuple[str, str]:
    """A nonce for the login form, and the cookie value that vouches for it."""
    nonce = secrets.token_urlsafe(24)
    return nonce, signer.dumps({"n": nonce, "e": int(time.time()) + LOGIN_S})


def login_nonce_matches(signer: Signer, cookie: str | None, nonce: str) -> bool:
    payload = signer.loads(cookie) if cookie else None
    expected = str(payload.get("n", "")) if payload else ""
    return bool(expected) and hmac.compare_digest(expected.encode(), nonce.encode())


def csrf_matches(session: WebSession, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), (sent or "").encode())
