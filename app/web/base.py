"""What every admin page shares: templates, the session check, the page response."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app.api.deps import AppState, StateDep, confirmed_admin, get_stored_rules
from app.dispatch.secret_box import secret_box
from app.rules.store import StoredRule
from app.web.session import (
    CSRF_HEADER,
    SESSION_COOKIE,
    Signer,
    WebSession,
    csrf_matches,
    read_session,
)

TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class LoginRequired(Exception):
    """No valid session: pages go to the login form, htmx calls are told to."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


def signer(state: AppState) -> Signer:
    return Signer(secret_box(state.settings).derive("segflow admin session"))


async def web_session(request: Request, state: StateDep) -> WebSession:
    """The request's session, its token still valid and, for a change, its CSRF token sent."""
    session = read_session(signer(state), request.cookies.get(SESSION_COOKIE))
    name = None if session is None else await confirmed_admin(state, session.token_hash)
    if session is None or name is None:
        raise LoginRequired(request.url.path)
    session = dataclasses.replace(session, name=name)
    if request.method not in SAFE_METHODS and not csrf_matches(session, await _sent_csrf(request)):
        raise HTTPException(
            403, detail="the page is stale (CSRF token missing or wrong): reload it"
        )
    return session


async def _sent_csrf(request: Request) -> str | None:
    """The CSRF token in the header (htmx) or, for a plain form, its ``csrf`` field."""
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        field = (await request.form()).get("csrf")  # parsed once: the view's Form reads it too
        sent = field if isinstance(field, str) else None
    return sent


WebSessionDep = Annotated[WebSession, Depends(web_session)]


# Only Segflow's own scripts, styles and images; no framing; nothing cached of a session's pages.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def html(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    response = TEMPLATES.TemplateResponse(request, name, context, status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def page(
    request: Request, name: str, session: WebSession, status_code: int = 200, **context: Any
) -> HTMLResponse:
    context = {"csrf": session.csrf, "path": request.url.path, **context}
    return html(request, name, context, status_code)


StoredRulesDep = Annotated[list[StoredRule], Depends(get_stored_rules)]
