"""Destinations' signing secrets: generated, checked, and sealed at rest.

Standard Webhooks signs with the secret itself (HMAC-SHA256 keyed by it), so Segflow must be
able to read it back: a hash, as for admin tokens, would not do. It is sealed with Fernet
(AES-128-CBC and HMAC-SHA256, from ``cryptography``) under a key kept apart from the database:
``SEGFLOW_SECRET_KEY`` when set (comma-separated keys, newest first, to rotate: the first seals,
each opens), else ``SEGFLOW_DATA_DIR/secret.key``, generated once with mode 0600. A database
dump or backup alone then gives no secret away. Processes on several hosts sharing one
database need the same key: set ``SEGFLOW_SECRET_KEY`` there.

Secrets are never logged, and the API shows one only once, when it generated it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.dispatch.errors import SecretUnreadable
from app.settings import Settings

SECRET_PREFIX = "whsec_"  # noqa: S105 - the spec's prefix, not a secret
SECRET_BYTES = 32
# Standard Webhooks: secrets are random, between 24 and 64 bytes.
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
KEY_FILE = "secret.key"


def generate_signing_secret() -> str:
    """A new ``whsec_`` secret: 32 random bytes, base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signing_secret_problem(secret: str) -> str | None:
    """Why ``secret`` cannot sign (None: it can). The message never repeats the secret."""
    if not secret.startswith(SECRET_PREFIX):
        return f"a signing secret starts with {SECRET_PREFIX!r} (leave it out to have one made)"
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return f"the part after {SECRET_PREFIX!r} is not base64"
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        return (
            f"the secret holds {len(raw)} bytes; Standard Webhooks asks for "
            f"{MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes"
        )
    return None


class SecretBox:
    """Seals and opens secrets with one or more Fernet keys (the first seals)."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("a secret box needs a key")
        self._newest = keys[0]
        try:
            self._fernet = MultiFernet([Fernet(key) for key in keys])
        except (ValueError, binascii.Error) as error:
            raise ValueError(
                "SEGFLOW_SECRET_KEY: each key is a Fernet key (32 url-safe base64 bytes), e.g. "
                "from `python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`"
            ) from error

    def __repr__(self) -> str:
        return "SecretBox(<keys hidden>)"

    def derive(self, purpose: str) -> bytes:
        """A key of its own for ``purpose`` (e.g. signing the admin UI's session cookies),
        derived from the newest key: rotating the key ends what it signed."""
        return hmac.new(self._newest, purpose.encode(), hashlib.sha256).digest()

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode("ascii")

    def open(self, sealed: str, *, what: str = "a secret") -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except (InvalidToken, UnicodeError) as error:
            raise SecretUnreadable(
                f"{what} cannot be opened with this key: it was sealed under another "
                "SEGFLOW_SECRET_KEY or SEGFLOW_DATA_DIR/secret.key; restore that key, or set "
                "a new secret with PUT"
            ) from error


def secret_box(settings: Settings) -> SecretBox:
    """The box of these settings' key (read once per process and key)."""
    configured = settings.secret_key.get_secret_value() if settings.secret_key else None
    return _box(configured, settings.data_dir.resolve())


@functools.lru_cache(maxsize=8)
def _box(configured: str | None, data_dir: Path) -> SecretBox:
    if configured:
        return SecretBox([part.strip().encode() for part in configured.split(",") if part])
    return SecretBox([_key_file(data_dir / KEY_FILE)])


def _key_file(path: Path) -> bytes:
    """The key in ``path``, created first when missing. Several processes may start at once:
    the key is written to a file of its own and linked into place, so each reads the same
    complete key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(Fernet.generate_key() + b"\n")
            with contextlib.suppress(FileExistsError):  # another process was first: its key wins
                os.link(draft, path)
        finally:
            draft.unlink(missing_ok=True)
    return path.read_bytes().strip()
