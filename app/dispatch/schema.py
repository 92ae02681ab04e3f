"""What an operator sends to create or change a destination or a template (the admin API's
bodies, and the store's arguments)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from app.dispatch.templates import ALL_FIELDS, MAX_SOURCE_CHARS, Kind
from app.dispatch.urls import MAX_URL_LENGTH
from app.dispatch.webhooks import RESERVED_HEADERS

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
Name = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="Lower-case letters, digits, '-' and '_'; what rules' `send` names.",
    ),
]
MAX_HEADERS = 20
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")  # an HTTP header name
_VALUE = re.compile(r"[\t\x20-\x7e]{0,2000}")  # printable ASCII


def _headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{name!r} is not an HTTP header name")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"{name!r} is set by Segflow itself")
        if not _VALUE.fullmatch(value):
            raise ValueError(
                f"the value of {name!r} must be printable ASCII, at most 2000 characters"
            )
    if len({name.lower() for name in headers}) != len(headers):
        raise ValueError("a header is named twice (header names ignore case)")
    return headers


Headers = Annotated[dict[str, str], Field(max_length=MAX_HEADERS), AfterValidator(_headers)]


class DestinationSettings(BaseModel):
    """A destination's settings, all but its name and secret."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind
    url: str = Field(
        max_length=MAX_URL_LENGTH,
        description="http(s); its host must resolve to public addresses only, unless "
        "SEGFLOW_ALLOW_PRIVATE_DESTINATIONS is on.",
    )
    headers: Headers = Field(default_factory=dict, description="Sent with every delivery.")
    timeout_s: float = Field(default=10.0, gt=0, le=60, description="Per attempt.")
    rate_limit_per_s: float = Field(default=10.0, gt=0, le=10_000)
    concurrency: int = Field(default=4, ge=1, le=100, description="Deliveries in flight.")
    disabled: bool = False


class DestinationUpdate(DestinationSettings):
    """PUT: every setting as given (left out: its default); the secret is kept unless a new
    one is given."""

    secret: SecretStr | None = Field(
        default=None, description="A new `whsec_` secret (base64 of 24 to 64 random bytes)."
    )


class DestinationIn(DestinationUpdate):
    """POST: a new destination; without a secret, one is generated and answered once."""

    name: Name


class TemplateSources(BaseModel):
    """A template's kind and its Jinja2 sources, by field (see ``app.dispatch.templates``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind
    description: str = Field(default="", max_length=2000)
    subject: str | None = Field(default=None, max_length=MAX_SOURCE_CHARS, description="email")
    text: str | None = Field(default=None, max_length=MAX_SOURCE_CHARS, description="email")
    html: str | None = Field(default=None, max_length=MAX_SOURCE_CHARS, description="email")
    title: str | None = Field(default=None, max_length=MAX_SOURCE_CHARS, description="push")
    body: str | None = Field(
        default=None,
        max_length=MAX_SOURCE_CHARS,
        description="push: the text; generic: a template of a JSON document",
    )
    deep_link: str | None = Field(default=None, max_length=MAX_SOURCE_CHARS, description="push")

    def sources(self) -> dict[str, str]:
        """The fields given, by name."""
        return {name: value for name in ALL_FIELDS if (value := getattr(self, name)) is not None}


class TemplateIn(TemplateSources):
    name: Name


class InlineTemplate(TemplateSources):
    """A template given in full, for a preview (not saved)."""

    name: Name = "inline"
