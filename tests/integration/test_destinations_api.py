"""Destinations and templates through the admin API, on both backends: secrets generated, shown
once and sealed in SQL; URLs checked after DNS; a test delivery signed per Standard Webhooks and
verified by a real receiver on loopback, with the library and by hand; templates checked when
saved and previewed against a profile the real dataflow wrote."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import text
from standardwebhooks import Webhook

from app.db import make_engine
from app.dispatch.secret_box import KEY_FILE, generate_signing_secret
from app.dispatch.store import SendableDestination, seed_shipped_templates
from app.dispatch.webhooks import send_webhook, webhook_body, webhook_client
from app.main import create_app
from app.settings import Settings
from tests.conftest import Services
from tests.factories import track_at as track
from tests.helpers import ServerThread, free_port, run_dataflow
from tests.helpers import replay_messages as replay

MINUTE = 60_000


# --- a real webhook receiver --------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server on loopback that keeps every request and answers ``status``."""

    status: int = 200
    answer: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                receiver.received.append(
                    Received(
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        self.rfile.read(length),
                    )
                )
                time.sleep(receiver.delay_s)
                self.send_response(receiver.status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(receiver.answer)))
                self.end_headers()
                self.wfile.write(receiver.answer)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/segflow"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify_by_hand(secret: str, delivery: Received) -> None:
    """The spec's signature computed independently of the library: HMAC-SHA256 keyed by the
    base64-decoded part after 'whsec_', over '{id}.{timestamp}.{body}'."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    headers = delivery.headers
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + delivery.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    versions = dict(part.split(",", 1) for part in headers["webhook-signature"].split(" "))
    assert hmac.compare_digest(versions["v1"], expected)
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60


def verify_with_library(secret: str, delivery: Received) -> Any:
    return Webhook(secret).verify(delivery.body.decode(), delivery.headers)


# --- fixtures -----------------------------------------------------------------------------------


class Admin:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, *, status: int = 200, **kw: Any) -> Any:
        answer = httpx.request(method, f"{self.url}{path}", headers=self.headers, timeout=30, **kw)
        assert answer.status_code == status, answer.text
        return answer.json() if answer.content else None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def admin(api: ServerThread, credentials: dict[str, str]) -> Admin:
    """The API as deployed: private destinations refused."""
    return Admin(api.url, credentials["admin_token"])


@pytest.fixture
def private_admin(
    settings: Settings, services: Services, credentials: dict[str, str]
) -> Iterator[Admin]:
    """The API with SEGFLOW_ALLOW_PRIVATE_DESTINATIONS on (as tests with loopback receivers
    run it), on the same, freshly reset backend."""
    allowing = services.settings(SEGFLOW_ALLOW_PRIVATE_DESTINATIONS="1")
    with ServerThread(create_app(allowing)) as server:
        yield Admin(server.url, credentials["admin_token"])


def stored_secrets(settings: Settings) -> list[str]:
    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            return [
                row[0] for row in connection.execute(text("SELECT sealed_secret FROM destinations"))
            ]
    finally:
        engine.dispose()


# --- destinations -------------------------------------------------------------------------------


def test_a_generated_secret_is_shown_once_signs_the_test_delivery_and_is_never_shown_again(
    private_admin: Admin, receiver: Receiver, settings: Settings, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    created = private_admin.call(
        "POST",
        "/api/destinations",
        json={
            "name": "email",
            "kind": "email",
            "url": receiver.url,
            "headers": {"X-Tenant": "shop-1"},
            "rate_limit_per_s": 5,
        },
        status=201,
    )
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:])) == 32
    assert {k: created[k] for k in ("name", "kind", "url", "headers", "disabled")} == {
        "name": "email",
        "kind": "email",
        "url": receiver.url,
        "headers": {"X-Tenant": "shop-1"},
        "disabled": False,
    }
    assert (created["timeout_s"], created["rate_limit_per_s"], created["concurrency"]) == (10, 5, 4)

    result = private_admin.call("POST", "/api/destinations/email/test")
    assert (result["ok"], result["outcome"], result["status_code"], result["error"]) == (
        True,
        "delivered",
        200,
        None,
    )
    assert 0 < result["latency_ms"] < 5000

    (delivery,) = receiver.received
    assert delivery.path == "/hooks/segflow"
    assert delivery.headers["webhook-id"] == result["webhook_id"]
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["x-tenant"] == "shop-1"
    payload = verify_with_library(secret, delivery)
    verify_by_hand(secret, delivery)
    assert payload["type"] == "segflow.test"
    assert payload["data"]["destination"] == "email"

    # never again: not in the listing, a read, an update's answer, SQL, or any log line
    shown = [
        private_admin.call("GET", "/api/destinations"),
        private_admin.call("GET", "/api/destinations/email"),
        private_admin.call(
            "PUT", "/api/destinations/email", json={"kind": "email", "url": receiver.url}
        ),
    ]
    for answer in shown:
        assert secret not in json.dumps(answer)
        assert "secret" not in json.dumps(answer)
    (sealed,) = stored_secrets(settings)
    assert secret not in sealed
    assert secret[6:] not in sealed
    assert secret not in caplog.text
    assert secret[6:] not in caplog.text


def test_a_given_secret_signs_and_is_not_answered_back(private_admin: Admin, receiver: Receiver):
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    created = private_admin.call(
        "POST",
        "/api/destinations",
        json={"name": "push", "kind": "push", "url": receiver.url, "secret": secret},
        status=201,
    )
    assert created["secret"] is None
    assert private_admin.call("POST", "/api/destinations/push/test")["ok"]
    verify_with_library(secret, receiver.received[-1])
    verify_by_hand(secret, receiver.received[-1])


def test_put_replaces_the_settings_and_keeps_the_secret_unless_given_a_new_one(
    private_admin: Admin, receiver: Receiver
):
    other = Receiver()
    try:
        first = private_admin.call(
            "POST",
            "/api/destinations",
            json={"name": "hooks", "kind": "generic", "url": other.url, "headers": {"X-A": "1"}},
            status=201,
        )["secret"]
        updated = private_admin.call(
            "PUT",
            "/api/destinations/hooks",
            json={"kind": "generic", "url": receiver.url, "timeout_s": 2.5, "disabled": True},
        )
        assert (updated["url"], updated["headers"], updated["timeout_s"]) == (receiver.url, {}, 2.5)
        assert updated["disabled"] is True
        assert updated["updated_at"] >= updated["created_at"]
        assert private_admin.call("POST", "/api/destinations/hooks/test")["ok"]  # disabled too
        verify_with_library(first, receiver.received[-1])
        assert "x-a" not in receiver.received[-1].headers
        assert other.received == []

        second = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        private_admin.call(
            "PUT",
            "/api/destinations/hooks",
            json={"kind": "generic", "url": receiver.url, "secret": second},
        )
        private_admin.call("POST", "/api/destinations/hooks/test")
        verify_by_hand(second, receiver.received[-1])
        with pytest.raises(Exception, match="No matching signature"):
            verify_with_library(first, receiver.received[-1])
    finally:
        other.close()


def test_a_failing_or_absent_receiver_is_reported_not_raised(
    private_admin: Admin, receiver: Receiver
):
    receiver.status, receiver.answer = 503, b"down for maintenance"
    private_admin.call(
        "POST",
        "/api/destinations",
        json={"name": "flaky", "kind": "generic", "url": receiver.url},
        status=201,
    )
    result = private_admin.call("POST", "/api/destinations/flaky/test")
    assert (result["ok"], result["outcome"], result["status_code"]) == (False, "http_error", 503)
    assert result["error"] == "HTTP 503: down for maintenance"

    closed = f"http://127.0.0.1:{free_port()}/nobody-listens"
    private_admin.call(
        "POST",
        "/api/destinations",
        json={"name": "gone", "kind": "generic", "url": closed},
        status=201,
    )
    result = private_admin.call("POST", "/api/destinations/gone/test")
    assert (result["ok"], result["outcome"], result["status_code"]) == (False, "network", None)
    assert "ConnectError" in result["error"]


def test_private_addresses_are_refused_at_save_time_and_again_at_send_time(
    admin: Admin, private_admin: Admin, receiver: Receiver
):
    for url in (receiver.url, "http://localhost:9/x", "http://169.254.169.254/latest/meta-data"):
        (problem,) = admin.call(
            "POST",
            "/api/destinations",
            json={"name": "email", "kind": "email", "url": url},
            status=422,
        )["detail"]
        assert (problem["destination"], problem["field"]) == ("email", "url")
        assert "SEGFLOW_ALLOW_PRIVATE_DESTINATIONS" in problem["message"]
    (problem,) = admin.call(
        "POST",
        "/api/destinations",
        json={"name": "email", "kind": "email", "url": "ftp://hooks.example.com/"},
        status=422,
    )["detail"]
    assert problem["message"] == "only http and https URLs are called, not 'ftp'"

    # saved while allowed, sent from a process that does not allow it: refused, nothing sent
    private_admin.call(
        "POST",
        "/api/destinations",
        json={"name": "email", "kind": "email", "url": receiver.url},
        status=201,
    )
    result = admin.call("POST", "/api/destinations/email/test")
    assert (result["ok"], result["outcome"], result["status_code"]) == (False, "refused", None)
    assert "127.0.0.1 is a loopback address" in result["error"]
    assert receiver.received == []
    admin.call(
        "PUT",
        "/api/destinations/email",
        json={"kind": "email", "url": receiver.url},
        status=422,
    )


def test_a_name_that_does_not_resolve_is_kept_and_its_sends_fail_as_network(admin: Admin):
    # what a name resolves to is checked before every send: one that resolves to nothing
    # when saved (a DNS outage, a name not published yet) is not refused, its sends fail
    url = "https://hooks.segflow.invalid/segflow"  # .invalid never resolves (RFC 2606)
    created = admin.call(
        "POST",
        "/api/destinations",
        json={"name": "email", "kind": "email", "url": url},
        status=201,
    )
    assert created["url"] == url
    result = admin.call("POST", "/api/destinations/email/test")
    assert (result["ok"], result["outcome"], result["status_code"]) == (False, "network", None)
    assert "'hooks.segflow.invalid' does not resolve" in result["error"]


def test_bad_settings_are_refused_naming_the_field(private_admin: Admin, receiver: Receiver):
    def refused(body: dict[str, Any]) -> Any:
        return private_admin.call("POST", "/api/destinations", json=body, status=422)["detail"]

    base = {"name": "email", "kind": "email", "url": receiver.url}
    (problem,) = refused({**base, "secret": "hunter2-is-not-a-webhook-secret"})
    assert problem["field"] == "secret"
    assert "hunter2" not in problem["message"]
    assert refused({**base, "kind": "sms"})[0]["loc"] == ["body", "kind"]
    assert refused({**base, "name": "Bad Name"})[0]["loc"] == ["body", "name"]
    assert refused({**base, "timeout_s": 0})[0]["loc"] == ["body", "timeout_s"]
    for number in ("NaN", "Infinity"):  # Python's JSON reader takes them: the answer was a 500
        text = json.dumps(base)[:-1] + f', "timeout_s": {number}}}'
        answer = httpx.post(
            f"{private_admin.url}/api/destinations",
            content=text.encode(),
            headers={**private_admin.headers, "Content-Type": "application/json"},
            timeout=30,
        )
        assert answer.status_code == 422, answer.text
        (problem,) = answer.json()["detail"]
        assert problem["loc"] == ["body", "timeout_s"]
        assert problem["input"] in ("nan", "inf")
    # an integer past 64 bits, anywhere in what the answer shows, made it fail the same way
    huge = -4487058121557032749236224
    (problem,) = refused({**base, "timeout_s": {"x": [huge]}})
    assert problem["loc"] == ["body", "timeout_s"]
    assert problem["input"] == {"x": [str(huge)]}
    assert refused({**base, "headers": {"webhook-signature": "v1,x"}})[0]["loc"][:2] == [
        "body",
        "headers",
    ]
    assert refused({**base, "headers": {"X-A": "line\r\nbreak"}})[0]["loc"][:2] == [
        "body",
        "headers",
    ]
    assert refused({**base, "secrt": "typo"})[0]["loc"] == ["body", "secrt"]


def test_destinations_are_listed_by_name_in_pages_and_deleted(
    private_admin: Admin, receiver: Receiver
):
    for name in ("c-push", "a-email", "b-hooks"):
        private_admin.call(
            "POST",
            "/api/destinations",
            json={"name": name, "kind": "generic", "url": receiver.url},
            status=201,
        )
    private_admin.call(
        "POST",
        "/api/destinations",
        json={"name": "a-email", "kind": "email", "url": receiver.url},
        status=409,
    )
    first = private_admin.call("GET", "/api/destinations?limit=2")
    assert [d["name"] for d in first["items"]] == ["a-email", "b-hooks"]
    assert first["next_cursor"] == "b-hooks"
    rest = private_admin.call("GET", f"/api/destinations?limit=2&cursor={first['next_cursor']}")
    assert [d["name"] for d in rest["items"]] == ["c-push"]
    assert rest["next_cursor"] is None

    private_admin.call("DELETE", "/api/destinations/b-hooks", status=204)
    for method, path in (
        ("GET", "/api/destinations/b-hooks"),
        ("DELETE", "/api/destinations/b-hooks"),
        ("POST", "/api/destinations/b-hooks/test"),
    ):
        detail = private_admin.call(method, path, status=404)["detail"]
        assert detail == "destination 'b-hooks': no such destination"
    private_admin.call(
        "PUT",
        "/api/destinations/b-hooks",
        json={"kind": "generic", "url": receiver.url},
        status=404,
    )


def test_no_destination_is_created_on_first_start(admin: Admin):
    assert admin.call("GET", "/api/destinations") == {"items": [], "next_cursor": None}


def test_without_the_token_nothing_is_answered(api: ServerThread):
    for method, path in (("GET", "/api/destinations"), ("POST", "/api/templates/preview")):
        assert httpx.request(method, f"{api.url}{path}").status_code == 401


def test_the_sealing_key_is_generated_once_in_the_data_dir_readable_by_its_owner_only(
    private_admin: Admin, receiver: Receiver, settings: Settings
):
    key = settings.data_dir / KEY_FILE
    private_admin.call(
        "POST",
        "/api/destinations",
        json={"name": "email", "kind": "email", "url": receiver.url},
        status=201,
    )
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    private_admin.call("POST", "/api/destinations/email/test")
    assert key.read_bytes() == before


def test_a_secret_sealed_under_another_key_is_reported_as_such(
    private_admin: Admin, receiver: Receiver, services: Services, credentials: dict[str, str]
):
    private_admin.call(
        "POST",
        "/api/destinations",
        json={"name": "email", "kind": "email", "url": receiver.url},
        status=201,
    )
    other_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    elsewhere = services.settings(
        SEGFLOW_ALLOW_PRIVATE_DESTINATIONS="1", SEGFLOW_SECRET_KEY=other_key
    )
    with ServerThread(create_app(elsewhere)) as server:
        other = Admin(server.url, credentials["admin_token"])
        detail = other.call("POST", "/api/destinations/email/test", status=409)["detail"]
    assert "SEGFLOW_SECRET_KEY" in detail
    assert receiver.received == []


def test_send_webhook_reports_each_outcome_the_dispatcher_acts_on(receiver: Receiver):
    secret = generate_signing_secret()
    destination = SendableDestination(
        name="hooks", url=receiver.url, secret=SecretStr(secret), timeout_s=0.5
    )
    body = webhook_body("segment.entered", {"customer_id": "ada"})

    async def send(webhook_id: str, *, allow_private: bool = True):
        async with webhook_client() as client:
            return await send_webhook(
                client=client,
                destination=destination,
                webhook_id=webhook_id,
                body=body,
                allow_private=allow_private,
            )

    delivered = asyncio.run(send("msg_a"))
    assert (delivered.ok, delivered.outcome, delivered.status_code) == (True, "delivered", 200)
    assert verify_with_library(secret, receiver.received[-1])["data"] == {"customer_id": "ada"}
    verify_by_hand(secret, receiver.received[-1])

    receiver.status, receiver.headers = 429, {"Retry-After": "7"}
    limited = asyncio.run(send("msg_a"))  # the same message again: the same webhook-id
    assert (limited.outcome, limited.status_code, limited.retry_after_s) == ("http_error", 429, 7)
    assert [r.headers["webhook-id"] for r in receiver.received] == ["msg_a", "msg_a"]

    receiver.status, receiver.headers, receiver.delay_s = 200, {}, 2.0
    slow = asyncio.run(send("msg_b"))
    assert (slow.outcome, slow.status_code, slow.error) == (
        "timeout",
        None,
        "no answer within 0.5 s",
    )
    assert slow.latency_ms < 1500

    refused = asyncio.run(send("msg_c", allow_private=False))
    assert (refused.outcome, refused.status_code) == ("refused", None)
    assert "loopback" in (refused.error or "")


# --- templates ----------------------------------------------------------------------------------

PUSH = {
    "name": "browse-nudge",
    "kind": "push",
    "description": "Still looking?",
    "title": "{{ traits.first_name | default('Hi') }}, still looking?",
    "body": "You viewed {{ features['count(Product Viewed, 10m)'] | default(0) }} products",
    "deep_link": "shop://browse?c={{ customer_id | urlencode }}",
}


def test_the_shipped_cart_reminder_is_stored_and_a_deleted_one_stays_deleted(
    admin: Admin, settings: Settings
):
    listed = admin.call("GET", "/api/templates")["items"]
    assert [(t["name"], t["kind"]) for t in listed] == [("cart-reminder", "email")]
    stored = admin.call("GET", "/api/templates/cart-reminder")
    assert "{{" in stored["subject"]
    assert stored["text"]
    assert stored["html"]
    assert stored["title"] is None

    admin.call("DELETE", "/api/templates/cart-reminder", status=204)
    engine = make_engine(settings)
    try:
        from app.db import session_scope

        with session_scope(engine) as session:
            assert seed_shipped_templates(session=session) == 0
    finally:
        engine.dispose()
    admin.call("GET", "/api/templates/cart-reminder", status=404)


def test_a_template_is_created_read_listed_replaced_and_deleted(admin: Admin):
    created = admin.call("POST", "/api/templates", json=PUSH, status=201)
    assert {k: created[k] for k in PUSH} == PUSH
    assert created["subject"] is None
    admin.call("POST", "/api/templates", json=PUSH, status=409)
    names = [t["name"] for t in admin.call("GET", "/api/templates?limit=1")["items"]]
    assert names == ["browse-nudge"]

    generic = {"kind": "generic", "body": '{"customer": {{ customer_id | tojson }}}'}
    replaced = admin.call("PUT", "/api/templates/browse-nudge", json=generic)
    assert (replaced["kind"], replaced["body"], replaced["title"]) == (
        "generic",
        generic["body"],
        None,
    )
    admin.call("DELETE", "/api/templates/browse-nudge", status=204)
    admin.call("GET", "/api/templates/browse-nudge", status=404)
    admin.call("PUT", "/api/templates/browse-nudge", json=generic, status=404)


def test_a_template_that_does_not_parse_or_reaches_internals_is_refused_with_field_and_line(
    admin: Admin,
):
    broken = {**PUSH, "body": "Hello\n{{ cart.value + }}\n"}
    (problem,) = admin.call("POST", "/api/templates", json=broken, status=422)["detail"]
    assert (problem["template"], problem["field"], problem["line"]) == ("browse-nudge", "body", 2)
    assert problem["message"].startswith("does not parse")

    escaping = {**PUSH, "title": "{{ cycler.__init__.__globals__.os }}"}
    (problem,) = admin.call("POST", "/api/templates", json=escaping, status=422)["detail"]
    assert (problem["field"], problem["line"]) == ("title", 1)
    assert "Python internals" in problem["message"]

    wrong_kind = {**PUSH, "kind": "email"}
    fields = [
        p["field"]
        for p in admin.call("POST", "/api/templates", json=wrong_kind, status=422)["detail"]
    ]
    assert fields == ["title", "body", "deep_link", "subject", "text"]
    admin.call("GET", "/api/templates/browse-nudge", status=404)


def test_preview_renders_a_real_profile_the_dataflow_wrote(
    admin: Admin, settings: Settings, redis_client: redis.Redis, tmp_path: Path
):
    now = time.time_ns() // 1_000_000
    replay(
        redis_client,
        settings,
        tmp_path,
        [
            {
                "type": "identify",
                "userId": "ada",
                "traits": {"first_name": "Ada <3"},
                "timestamp": track("ada", "x", now - 50 * MINUTE)["timestamp"],
                "messageId": "ada-identify",
            },
            track(
                "ada", "Product Added", now - 45 * MINUTE, product_id="p1", price=30.0, quantity=2
            ),
            track(
                "ada", "Product Added", now - 40 * MINUTE, product_id="p2", price=9.5, name="Socks"
            ),
        ],
    )
    run_dataflow(settings)

    at = now - 10 * MINUTE
    preview = admin.call(
        "POST",
        "/api/templates/preview",
        json={
            "template": "cart-reminder",
            "customer_id": "ada",
            "trigger": {"segment": "cart-abandoners", "at": at, "rule_version": 1},
        },
    )
    assert (preview["template"], preview["kind"]) == ("cart-reminder", "email")
    message = preview["message"]
    assert message["subject"] == "Ada <3, your cart is waiting (69.50)"
    assert "You left 3 items in your cart, worth 69.50." in message["text"]
    assert "- Socks x 1 at 9.50" in message["text"]
    assert "<p>Hi Ada &lt;3,</p>" in message["html"]
    context = preview["context"]
    assert context["trigger"] == {
        "id": "",
        "segment": "cart-abandoners",
        "kind": "enter",
        "at": at,
        "rule_version": 1,
    }
    assert context["cart"]["value"] == 69.5
    assert [i["product_id"] for i in context["cart"]["items"]] == ["p1", "p2"]
    assert "cart-abandoners" in context["segments"]

    inline = {"kind": "push", "title": "{{ cart.count }} in cart", "body": "{{ traits.plan }}"}
    (problem,) = admin.call(
        "POST",
        "/api/templates/preview",
        json={"template": inline, "customer_id": "ada"},
        status=422,
    )["detail"]
    assert (problem["template"], problem["field"], problem["line"]) == ("inline", "body", 1)
    assert "'plan'" in problem["message"]

    inline["body"] = "{{ traits.plan | default('free') }}"
    rendered = admin.call(
        "POST", "/api/templates/preview", json={"template": inline, "customer_id": "ada"}
    )
    assert rendered["message"] == {"title": "3 in cart", "body": "free"}

    detail = admin.call(
        "POST",
        "/api/templates/preview",
        json={"template": "cart-reminder", "customer_id": "nobody"},
        status=404,
    )["detail"]
    assert detail == "customer 'nobody': no profile"
    admin.call(
        "POST",
        "/api/templates/preview",
        json={"template": "no-such-template", "customer_id": "ada"},
        status=404,
    )


def test_a_body_past_a_megabyte_is_refused_and_a_long_input_is_not_echoed(admin: Admin):
    huge = {"name": "big", "kind": "email", "url": "https://example.org/" + "x" * (2 << 20)}
    refused = admin.call("POST", "/api/destinations", json=huge, status=413)
    assert refused == {"detail": "the request body is larger than 1,024 KB"}

    def trickled() -> Iterator[bytes]:  # no Content-Length: counted as it comes
        yield b'{"name": "big", "kind": "email", "url": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    answer = httpx.post(
        f"{admin.url}/api/destinations",
        content=trickled(),
        headers={**admin.headers, "Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 413, answer.text
    assert answer.json() == {"detail": "the request body is larger than 1,024 KB"}
    # refused for its shape, not its size: named, and not echoed back
    long_name = {"name": "n" * 600_000, "kind": "email", "url": "https://example.org/x"}
    answer = httpx.post(
        f"{admin.url}/api/destinations", json=long_name, headers=admin.headers, timeout=30
    )
    assert answer.status_code == 422
    assert len(answer.content) < 2_000
    (problem,) = answer.json()["detail"]
    assert (problem["loc"], problem["input"]) == (
        ["body", "name"],
        "(not shown: 600,002 bytes of JSON)",
    )
