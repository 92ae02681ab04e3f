"""What activation refuses, and why. Every message names the destination or template, the field
and, for templates, the line.

DispatchError
 +-- DestinationNotFound, TemplateNotFound   (LookupError too) no such name -> 404
 +-- NameTaken                               a destination / template of that name exists -> 409
 +-- DestinationRefused                      a destination's settings cannot be saved -> 422
 +-- DestinationURLError                     (ValueError too) a URL Segflow will not call
 |    +-- UnsafeDestinationURL               not http(s), or an address that is not public
 |    +-- UnresolvableDestinationURL         the host name does not resolve (now)
 +-- MessageTemplateError                    (ValueError too) a template that does not parse,
 |                                           reaches Python internals, or fails to render
 +-- SecretUnreadable                        a sealed secret this key cannot open
"""

from __future__ import annotations

from dataclasses import dataclass


class DispatchError(Exception):
    pass


class DestinationNotFound(DispatchError, LookupError):
    pass


class TemplateNotFound(DispatchError, LookupError):
    pass


class NameTaken(DispatchError):
    pass


@dataclass(frozen=True)
class DestinationProblem:
    destination: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = [f"destination {self.destination!r}"] if self.destination else []
        where += [f"field {self.field!r}"] if self.field else []
        return f"{', '.join(where)}: {self.message}" if where else self.message


class DestinationRefused(DispatchError):
    def __init__(self, problems: list[DestinationProblem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


class DestinationURLError(DispatchError, ValueError):
    """The message says what is wrong with the URL; it never holds credentials (URLs with a
    user or password are refused before anything else)."""


class UnsafeDestinationURL(DestinationURLError):
    pass


class UnresolvableDestinationURL(DestinationURLError):
    pass


@dataclass(frozen=True)
class TemplateProblem:
    template: str | None
    field: str | None
    line: int | None
    message: str

    def __str__(self) -> str:
        where = [f"template {self.template!r}"] if self.template else []
        if self.field:
            where.append(f"field {self.field!r}" + (f" (line {self.line})" if self.line else ""))
        return f"{', '.join(where)}: {self.message}" if where else self.message


class MessageTemplateError(DispatchError, ValueError):
    """One or more problems of one template; ``str()`` names each (template, field, line)."""

    def __init__(self, problems: list[TemplateProblem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


class SecretUnreadable(DispatchError):
    pass
