"""The admin UI's session over real HTTP: what a forged, stale, cross-site or revoked request
gets. (The pages themselves are tested in a real browser, tests/browser.)"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import orjson
import redis
from fastapi.routing import APIRoute
from sqlmodel import Session, delete

from app.credentials import create_admin_token
from app.db import make_engine
from app.dispatch import store
from app.dispatch.schema import DestinationIn
from app.dispatch.secret_box import secret_box
from app.main import create_app
from app.models import AdminToken
from app.profiles.keys import profile_key
from app.settings import Settings
from app.web import activation_pages, pages, rule_pages
from tests.conftest import Services
from tests.helpers import ServerThread, wait_for


@contextlib.contextmanager
def logged_in(api: ServerThread, token: str, next_path: str = "/admin") -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=30) as client:
        form = client.get("/admin/login").text
        (nonce,) = re.findall(r'name="nonce" value="([^"]+)"', form)
        data = {"token": token, "nonce": nonce, "next": next_path}
        answer = client.post("/admin/login", data=data)
        assert answer.status_code == 303, answer.text
        yield client


def test_pages_need_a_session_and_a_forged_cookie_is_no_session(api, credentials):
    anonymous = httpx.get(f"{api.url}/admin/segments")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/admin/login?next=/admin/segments"
    partial = httpx.get(f"{api.url}/admin/overview/stats", headers={"HX-Request": "true"})
    assert partial.status_code == 401
    assert partial.headers["HX-Redirect"].startswith("/admin/login")
    with logged_in(api, credentials["admin_token"]) as client:
        assert client.get("/admin/segments").status_code == 200
        cookie = client.cookies["segflow_session"]
    body, _, signature = cookie.partition(".")
    forged = f"{body[:-2]}AA.{signature}"  # another session's hash, the old signature
    assert (
        httpx.get(f"{api.url}/admin/segments", cookies={"segflow_session": forged}).status_code
        == 303
    )


def test_a_wrong_token_of_any_length_gets_the_login_page_again(api):
    with httpx.Client(base_url=api.url, timeout=30) as client:
        for token in ("sfa_wrong", "x" * 600):
            form = client.get("/admin/login").text
            (nonce,) = re.findall(r'name="nonce" value="([^"]+)"', form)
            answer = client.post("/admin/login", data={"token": token, "nonce": nonce})
            assert answer.status_code == 401
            assert "That is not a valid admin token." in answer.text
            assert token not in answer.text  # not echoed


def test_a_change_without_the_sessions_csrf_token_is_refused(
    api, credentials, redis_client: redis.Redis
):
    redis_client.hset(profile_key("ada"), mapping={"features": "{}", "traits": "{}"})
    with logged_in(api, credentials["admin_token"]) as client:
        check_csrf(client, redis_client)


def page_csrf(client: httpx.Client) -> str:
    """The session's CSRF token, as a page gives it to htmx."""
    page = client.get("/admin").text
    (csrf,) = re.findall(r"X-CSRF-Token&#34;: &#34;([^&]+)&#34;", page) or re.findall(
        r'"X-CSRF-Token": "([^"]+)"', page
    )
    return str(csrf)


def check_csrf(client: httpx.Client, redis_client: redis.Redis) -> None:
    csrf = page_csrf(client)
    refused = client.post("/admin/customers/ada/erase", data={"confirm": "ada"})
    assert refused.status_code == 403  # as a page on another site would send it
    wrong = client.post(
        "/admin/customers/ada/erase", data={"confirm": "ada"}, headers={"X-CSRF-Token": "x"}
    )
    assert wrong.status_code == 403
    assert redis_client.exists(profile_key("ada"))
    done = client.post(
        "/admin/customers/ada/erase", data={"confirm": "ada"}, headers={"X-CSRF-Token": csrf}
    )
    assert done.status_code == 200
    assert "Erased" in done.text
    assert not redis_client.exists(profile_key("ada"))


def test_a_login_form_not_ours_and_a_redirect_off_site_are_refused(api, credentials):
    with httpx.Client(base_url=api.url, timeout=30) as client:
        forged = client.post(
            "/admin/login", data={"token": credentials["admin_token"], "nonce": "made-up"}
        )
        assert forged.status_code == 403
        assert "segflow_session" not in forged.cookies
        for off_site in ("https://evil.example/x", "//evil.example", "/admin//evil.example"):
            form = client.get("/admin/login").text
            (nonce,) = re.findall(r'name="nonce" value="([^"]+)"', form)
            data = {"token": credentials["admin_token"], "nonce": nonce, "next": off_site}
            sent = client.post("/admin/login", data=data)
            assert sent.headers["location"] == "/admin", off_site


def test_a_token_that_stops_being_valid_ends_its_sessions(api, settings: Settings):
    engine = make_engine(settings)
    with Session(engine) as session:
        token = create_admin_token(session=session, name="leaving")
        session.commit()
    with logged_in(api, token) as client:
        assert client.get("/admin/segments").status_code == 200
        assert token not in str(client.cookies.jar)
        with Session(engine) as session:
            session.execute(delete(AdminToken).where(AdminToken.name == "leaving"))  # type: ignore[arg-type]
            session.commit()
        engine.dispose()

        def ended() -> bool:
            return client.get("/admin/segments").status_code == 303

        wait_for(ended, timeout_s=30, what="the session ended")  # after a few seconds' cache


def test_every_admin_route_without_a_session_leads_to_the_login(api):
    """Every page and call under /admin but the login itself, whatever its method."""
    routes = [
        (method, route.path)
        for router in (pages.router, rule_pages.router, activation_pages.router)
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
        if not route.path.startswith("/admin/login")
    ]
    assert len(routes) >= 15
    with httpx.Client(base_url=api.url, timeout=30) as client:
        for method, path in routes:
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            answer = client.request(method, concrete)
            assert answer.status_code == 303, (method, path, answer.status_code)
            assert answer.headers["location"].startswith("/admin/login"), (method, path)


def test_marketer_and_customer_text_is_shown_as_text(api, credentials, redis_client):
    script = "<script>alert(1)</script>"
    redis_client.hset(
        profile_key("x<b>"),
        mapping={"features": "{}", "traits": orjson.dumps({"name": script}).decode()},
    )
    with logged_in(api, credentials["admin_token"]) as client:
        page = client.get(f"/admin/customers/{quote('x<b>', safe='')}").text
    assert script not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "x&lt;b&gt;" in page


def test_destination_and_template_changes_need_the_csrf_token_and_name_the_wrong_field(
    settings: Settings, services: Services, credentials: dict[str, str]
):
    """The edit and delete forms of destinations and templates: a request without the session's
    CSRF token changes nothing; with it, refusals name the field, a deletion needs the name
    typed, and the changes are made."""
    engine = make_engine(settings)
    with Session(engine) as db:
        store.create_destination(
            session=db,
            box=secret_box(settings),
            spec=DestinationIn(name="email", kind="email", url="http://127.0.0.1:9/hooks"),
            allow_private=True,
        )
        db.commit()
    settings_form = {
        "kind": "email",
        "url": "http://127.0.0.1:9/moved",
        "timeout_s": "5",
        "rate_limit_per_s": "2.5",
        "concurrency": "3",
        "headers": "X-Shop: one\nX-Env: test\n",
    }
    reminder = {"kind": "email", "subject": "Hi", "text": "Your cart: {{ cart.value }}"}
    forms = [
        ("/admin/destinations/email", settings_form),
        ("/admin/destinations/email/delete", {"confirm": "email"}),
        ("/admin/templates/cart-reminder", reminder),
        ("/admin/templates/cart-reminder/delete", {"confirm": "cart-reminder"}),
        ("/admin/templates/cart-reminder/draft", {**reminder, "customer_id": "ada"}),
    ]
    with Session(engine) as db:
        shipped = store.get_template(session=db, name="cart-reminder").sources
    allowing = services.settings(SEGFLOW_ALLOW_PRIVATE_DESTINATIONS="1")
    try:
        with (
            ServerThread(create_app(allowing)) as api,
            logged_in(api, credentials["admin_token"]) as client,
        ):
            csrf = {"X-CSRF-Token": page_csrf(client)}
            for path, data in forms:
                assert client.post(path, data=data).status_code == 403, path
                forged = client.post(path, data=data, headers={"X-CSRF-Token": "x"})
                assert forged.status_code == 403, path
            with Session(engine) as db:
                kept = store.get_destination(session=db, name="email")
                assert (kept.url, kept.headers) == ("http://127.0.0.1:9/hooks", {})
                assert store.get_template(session=db, name="cart-reminder").sources == shipped

            def refusal(path: str, data: dict[str, str]) -> str:
                answer = client.post(path, data=data, headers=csrf)
                assert answer.status_code == 200, answer.text  # htmx swaps in a 2xx only
                (alert,) = re.findall(r'role="alert">(.*?)</div>', answer.text, re.S)
                return str(alert)

            for field, wrong in (
                ("rate_limit_per_s", "0"),
                ("concurrency", "many"),
                ("timeout_s", "61"),
                ("kind", "sms"),
            ):
                said = refusal(forms[0][0], {**settings_form, field: wrong})
                assert f"{field}: " in said, said
            reserved = {**settings_form, "headers": "Webhook-Id: 2"}  # Segflow sets it
            assert "headers: " in refusal(forms[0][0], reserved)
            assert "headers, line 2" in refusal(
                forms[0][0], {**settings_form, "headers": "X-A: 1\nbroken"}
            )
            broken = {**reminder, "text": "Your cart:\n{% if cart.value %}{{ cart.value }"}
            assert "field &#39;text&#39; (line 2)" in refusal(forms[2][0], broken)
            assert "exactly" in refusal(forms[1][0], {"confirm": "e-mail"})
            assert "exactly" in refusal(forms[3][0], {"confirm": "cart"})

            saved = client.post(forms[0][0], data=settings_form, headers=csrf)
            assert "Destination <code>email</code> saved." in saved.text
            assert "whsec_" not in saved.text  # the secret stays, and is not shown
            edited = client.post(forms[2][0], data=reminder, headers=csrf)
            assert "Template <code>cart-reminder</code> saved" in edited.text
            with Session(engine) as db:
                row = store.get_destination(session=db, name="email")
                assert (row.url, row.timeout_s, row.rate_limit_per_s, row.concurrency) == (
                    "http://127.0.0.1:9/moved",
                    5.0,
                    2.5,
                    3,
                )
                assert row.headers == {"X-Shop": "one", "X-Env": "test"}
                assert store.get_template(session=db, name="cart-reminder").sources == {
                    "subject": "Hi",
                    "text": "Your cart: {{ cart.value }}",
                }
            rotated = client.post(
                forms[0][0], data={**settings_form, "new_secret": "true"}, headers=csrf
            )
            (secret,) = re.findall(r"whsec_[A-Za-z0-9+/=]+", rotated.text)  # shown this once
            with Session(engine) as db:
                opened = store.sendable_destination(
                    session=db, box=secret_box(settings), name="email"
                )
                assert opened.secret.get_secret_value() == secret
            for path, data in (forms[1], forms[3]):
                done = client.post(path, data=data, headers=csrf)
                assert (done.status_code, done.headers.get("HX-Redirect")) == (
                    204,
                    "/admin/destinations",
                )
            with Session(engine) as db:
                assert store.list_destinations(session=db) == ([], None)
                assert "cart-reminder" not in store.template_names(session=db)
    finally:
        engine.dispose()
