"""The admin UI in a real browser, offline: log in with the admin token, see live figures,
a segment's size chart with its anomalies, failed events; nothing loads from outside."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect
from sqlmodel import Session

from app.db import make_engine
from app.dispatch import store
from app.dispatch.schema import DestinationIn
from app.dispatch.secret_box import secret_box
from app.main import create_app
from app.profiles.history import MINUTE_MS, history_key
from app.profiles.keys import members_key, profile_key
from app.settings import Settings
from app.streams import stats_key
from tests.factories import iso, track_at
from tests.helpers import (
    ServerThread,
    pipeline_env,
    replay_messages,
    run_dataflow,
    wait_for,
)
from tests.integration.test_dispatcher import (
    LoopbackOutbox,
    Receiver,
    delivery,
    dispatch_until,
    trigger,
)

LOCAL = re.compile(r"^http://127\.0\.0\.1:\d+/")


def in_own_thread(function: Any, *args: Any) -> None:
    """Run ``function`` (which calls asyncio.run) in a thread of its own, and wait for it."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            function(*args)
        except BaseException as error:
            failed.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def ready(page: Any) -> None:
    """The page's scripts have run (htmx wired its buttons): a click before would be lost.
    Its screenshot is saved (tests/browser/conftest.py says where)."""
    page.locator("body[data-ready]").wait_for(state="attached")
    folder, test = page.screenshots
    name = re.sub(r"[^a-z0-9]+", "-", page.url.split("/admin", 1)[-1].lower()).strip("-")[:80]
    path = folder / f"{test}--{name or 'overview'}.png"
    # an artifact, not a check: a screenshot Chromium is slow to take, or refuses ("Unable to
    # capture screenshot" while its compositor is busy on a loaded machine), is skipped; a page
    # that is really broken fails the test's next step
    with contextlib.suppress(PlaywrightError):
        page.screenshot(path=str(path), full_page=True, timeout=20_000)


def add_destination(settings: Settings, name: str, url: str) -> None:
    """A destination stored as the API would store it (loopback allowed)."""
    engine = make_engine(settings)
    try:
        with Session(engine) as db:
            spec = DestinationIn(name=name, kind="email", url=url)
            store.create_destination(
                session=db, box=secret_box(settings), spec=spec, allow_private=True
            )
            db.commit()
    finally:
        engine.dispose()


def log_in(page: Any, api: ServerThread, token: str, path: str = "/admin") -> None:
    page.goto(f"{api.url}{path}")
    page.wait_for_url(re.compile(r"/admin/login"))
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(path) + r"$"))
    ready(page)


def test_login_is_required_and_a_wrong_token_is_refused(page, api, credentials):
    page.goto(f"{api.url}/admin/segments")
    assert "/admin/login" in page.url
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").inner_text() == "That is not a valid admin token."
    page.fill("#token", credentials["admin_token"])
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/admin/segments$"))  # back where it was going
    cookie = next(c for c in page.context.cookies() if c["name"] == "segflow_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert credentials["admin_token"] not in cookie["value"]
    page.click("text=Log out")
    page.wait_for_url(re.compile(r"/admin/login"))
    page.goto(f"{api.url}/admin")
    assert "/admin/login" in page.url


@pytest.mark.backend_independent
def test_the_overview_refreshes_live_and_every_request_stays_local(
    page, api, credentials, redis_client: redis.Redis
):
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    log_in(page, api, credentials["admin_token"])
    lag = page.locator("[data-stat=lag]")
    lag.wait_for()
    assert lag.inner_text() == "0"
    redis_client.hset(stats_key(0), "accepted", 7)  # the collector counted 7 not yet processed
    expect(lag).to_have_text("7", timeout=60_000)  # the next refresh shows it
    assert requests, "the page loaded nothing"
    assert all(LOCAL.match(url) for url in requests), [u for u in requests if not LOCAL.match(u)]


def test_a_segments_page_charts_its_size_and_marks_the_anomaly(
    page, settings, credentials, redis_client: redis.Redis
):
    now = time.time_ns() // 1_000_000
    start = now - now % MINUTE_MS - 40 * MINUTE_MS
    sizes = [100 + (n % 3) for n in range(39)] + [400]  # steady, then a jump (the last minute)
    for n, size in enumerate(sizes):
        at = start + n * MINUTE_MS
        redis_client.zadd(history_key("cart-abandoners", "minute"), {f"{at}:{size}": at})
    # 400 members now, as the jump left it: the API's own sample of this minute, taken when it
    # starts, adds no anomaly
    redis_client.sadd(members_key("cart-abandoners"), *(f"c{n}" for n in range(400)))
    with ServerThread(create_app(settings)) as api:
        check_segment_page(page, api, credentials)


def check_segment_page(page: Any, api: ServerThread, credentials: dict[str, str]) -> None:
    log_in(page, api, credentials["admin_token"], "/admin/segments")
    row = page.locator("tr", has_text="cart-abandoners")
    assert row.locator("[data-size]").inner_text() == "400"
    row.locator("a").first.click()
    page.wait_for_url(re.compile(r"/admin/segments/cart-abandoners$"))
    ready(page)
    chart = page.locator("#size-chart[data-rendered]")
    chart.wait_for()
    assert chart.get_attribute("data-rendered") in ("40", "41")  # with this minute's, if taken
    assert page.locator("#size-chart canvas").count() == 1
    assert page.locator("[data-stat=anomalies]").inner_text() == "1"
    assert "id: cart-abandoners" in page.locator("pre.code").inner_text()
    shown = page.locator("ul.members code").all_inner_texts()
    assert 0 < len(shown) < 400  # a page (SSCAN's: about 50, not exactly)
    assert set(shown) <= {f"c{n}" for n in range(400)}
    page.click("text=More members")
    expect(page.locator("ul.members code").first).to_be_visible()
    assert not set(page.locator("ul.members code").all_inner_texts()) & set(shown)


def test_a_customer_is_looked_up_explained_and_erased_after_typing_their_id(
    page, api, credentials, settings, redis_client: redis.Redis, tmp_path
):
    now = time.time_ns() // 1_000_000
    replay_messages(
        redis_client,
        settings,
        tmp_path,
        [
            {
                "type": "identify",
                "userId": "ada",
                "traits": {"plan": "pro"},
                "timestamp": iso(now - 9_000),
            },
            track_at("ada", "Product Added", now - 8_000, product_id="p1", price=30.0),
            track_at("bob", "Product Viewed", now - 7_000),
        ],
    )
    run_dataflow(settings)
    log_in(page, api, credentials["admin_token"], "/admin/customers")
    page.fill("#customer-id", "nobody")
    page.click("text=Look up")
    expect(page.locator("[role=status]")).to_contain_text("No profile for nobody")
    page.fill("#customer-id", "ada")
    page.click("text=Look up")
    page.wait_for_url(re.compile(r"/admin/customers/ada$"))
    ready(page)
    assert "pro" in page.locator("table.kv").first.inner_text()
    assert "Product Added" in page.locator("section", has_text="Recent events").inner_text()
    cart = page.locator("details.explain[data-segment=cart-abandoners]")
    assert cart.locator("summary").inner_text().startswith("out")
    cart.locator("summary").click()  # why not: the cart holds 30, the add is seconds old
    leaves = cart.locator("li.cond li.cond")
    expect(leaves.nth(0)).to_contain_text("cart_value")
    assert leaves.nth(0).get_attribute("class") == "cond holds"
    expect(leaves.nth(1)).to_contain_text("Product Added")
    assert leaves.nth(1).get_attribute("class") == "cond fails"
    page.fill("#confirm", "ad")  # not the id: refused
    page.click("button.bad")
    expect(page.locator("#erase-result [role=alert]")).to_contain_text("exactly")
    assert redis_client.exists(profile_key("ada"))
    page.fill("#confirm", "ada")
    page.click("button.bad")
    expect(page.locator("#erase-result [role=status]")).to_contain_text("Erased")
    assert not redis_client.exists(profile_key("ada"))
    assert redis_client.exists(profile_key("bob"))


GOOD_RULE = """\
id: carts
name: Carts
when:
  all:
    - feature: cart_value
      gt: 0
examples:
  - name: an add puts them in
    given:
      - {at: 0m, event: Product Added, properties: {product_id: p1, price: 20}}
    expect:
      - {at: 0m, kind: enter}
"""


@pytest.mark.backend_independent
def test_a_rule_is_written_checked_previewed_saved_changed_and_rolled_back(
    page, api, credentials, settings, redis_client: redis.Redis, tmp_path
):
    now = time.time_ns() // 1_000_000
    replay_messages(
        redis_client,
        settings,
        tmp_path,
        [
            track_at("ada", "Product Added", now - 8_000, product_id="p1", price=30.0),
            track_at("bob", "Product Viewed", now - 7_000),
        ],
    )
    run_dataflow(settings)
    log_in(page, api, credentials["admin_token"], "/admin/rules")
    assert page.locator("tr", has_text="cart-abandoners").count() == 1
    page.click("text=New rule")
    page.wait_for_url(re.compile(r"/admin/rules/new"))
    ready(page)
    page.fill("#source", GOOD_RULE.replace("gt: 0", "gt: lots"))  # not a number: refused
    expect(page.locator("#check ul.problems li").first).to_contain_text(
        "line 6, column 7 when.all[0].gt: must be a number"
    )
    # the place's link selects the line from that column on: typing replaces what is there
    page.click("#check a.line")
    page.keyboard.type("gt: 0")
    assert page.locator("#source").input_value() == GOOD_RULE
    expect(page.locator("#check [role=status]")).to_contain_text("its 1 example passes")
    page.click("text=Preview who matches now")
    expect(page.locator("#preview [data-stat=matched]")).to_have_text("1")
    expect(page.locator("#preview")).to_contain_text("ada")
    page.click("text=Create the rule")
    page.wait_for_url(re.compile(r"/admin/rules/carts$"))
    ready(page)
    expect(page.locator("main")).to_contain_text("Version 1")
    page.fill("#source", GOOD_RULE.replace("gt: 0", "gt: 10"))
    expect(page.locator("#check [role=status]")).to_contain_text("Valid")
    page.click("text=Save as version 2")
    page.wait_for_url(re.compile(r"/admin/rules/carts$"))
    ready(page)
    expect(page.locator("main")).to_contain_text("Version 2")
    change = page.locator("details.change[data-version='2']")
    change.locator("summary").click()
    expect(change.locator(".add")).to_contain_text("gt: 10")
    expect(change.locator(".del")).to_contain_text("gt: 0")
    page.select_option("#version", "1")
    page.click("button:has-text('Roll back')")
    page.wait_for_url(re.compile(r"/admin/rules/carts$"))
    ready(page)
    expect(page.locator("main")).to_contain_text("Version 3")
    assert "gt: 0" in page.locator("#source").input_value()
    page.click("text=Disable the rule")
    expect(page.locator("main")).to_contain_text("disabled")


def test_a_destination_is_test_sent_and_a_dead_letter_replayed(
    page, services, credentials, redis_client: redis.Redis
):
    settings = services.settings(SEGFLOW_ALLOW_PRIVATE_DESTINATIONS=1)
    receiver = Receiver()
    try:
        with ServerThread(create_app(settings)) as api:
            # a trigger for a destination that does not exist: undeliverable, a dead letter
            nowhere = trigger(redis_client, 1, customer="ada", destination="sms")
            in_own_thread(  # Playwright's loop runs in this one
                dispatch_until,
                settings,
                LoopbackOutbox(receiver),
                lambda: (
                    (found := delivery(redis_client, nowhere)) is not None
                    and found.status == "undeliverable"
                ),
            )
            log_in(page, api, credentials["admin_token"], "/admin/destinations")
            page.fill("input[name=name]", "email")
            page.fill("input[name=url]", receiver.url)
            page.click("button:has-text('Add')")
            created = page.locator("#destination-result [role=status]")
            expect(created).to_contain_text("Destination email created")
            secret = created.locator("pre.secret").inner_text().strip()
            assert secret.startswith("whsec_")  # shown once, to verify signatures with
            page.reload()
            ready(page)
            row = page.locator("tr[data-destination=email]")
            row.locator("text=Send a test").click()
            expect(row.locator(".result [role=status]")).to_contain_text("Delivered: 200")
            assert len(receiver.requests) == 1
            assert receiver.unverified(secret) == []  # signed with the secret shown
            page.goto(f"{api.url}/admin")  # the overview's delivery health counts it
            expect(page.locator("[data-stat=gave-up]")).to_have_text("1")
            page.goto(f"{api.url}/admin/deliveries?dead=true")
            ready(page)
            dead = page.locator(f"tr[data-delivery='{nowhere}']")
            expect(dead).to_contain_text("undeliverable")
            dead.locator("text=Replay").click()
            expect(dead.locator("[role=status]")).to_contain_text("replayed: scheduled")
            page.goto(f"{api.url}/admin/deliveries?customer=ada")
            expect(page.locator(f"tr[data-delivery='{nowhere}']")).to_contain_text("scheduled")
    finally:
        receiver.close()


@pytest.mark.backend_independent
def test_events_sent_to_the_collector_show_the_customer_entering_live(
    page, api, credentials, settings, redis_client: redis.Redis, tmp_path
):
    """Five views through the collector, a running dataflow: the customer is on the segment's
    page and in the segment on their own page, with the explanation holding."""
    flow = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "pipeline", "--no-recovery"],
        env=pipeline_env(
            settings.redis_url or "", tmp_path, settings.partitions, settings.database_url
        ),
        start_new_session=True,
    )
    try:
        log_in(page, api, credentials["admin_token"])
        now = time.time_ns() // 1_000_000
        views = [
            {
                "type": "track",
                "userId": "eve",
                "event": "Product Viewed",
                "properties": {"product_id": f"p{n}"},
                "timestamp": iso(now - 5_000 + n * 1_000),
            }
            for n in range(5)
        ]
        sent = httpx.post(
            f"{api.url}/v1/batch", json={"batch": views}, auth=(credentials["write_key"], "")
        )
        assert sent.json()["accepted"] == 5
        members = members_key("browsing-enthusiasts")
        wait_for(lambda: redis_client.sismember(members, "eve"), timeout_s=120, what="entered")
        page.goto(f"{api.url}/admin/segments")
        ready(page)
        row = page.locator("tr", has_text="browsing-enthusiasts")
        assert row.locator("[data-moves=entered_1h]").inner_text() == "1"
        assert row.locator("[data-moves=exited_1h]").inner_text() == "0"
        row.locator("a").first.click()
        page.wait_for_url(re.compile(r"/admin/segments/browsing-enthusiasts$"))
        ready(page)
        expect(page.locator("ul.members")).to_contain_text("eve")
        # her enter, newest first among the segment's recent transitions, counted this hour
        (moved,) = page.locator("#transitions tbody tr").all()
        assert moved.get_attribute("data-kind") == "enter"
        expect(moved).to_contain_text("entered")
        assert moved.locator("a").get_attribute("href") == "/admin/customers/eve"
        assert page.locator("[data-stat=entered_1h]").inner_text() == "1"
        assert page.locator("[data-stat=exited_24h]").inner_text() == "0"
        page.click("ul.members >> text=eve")
        page.wait_for_url(re.compile(r"/admin/customers/eve$"))
        ready(page)
        why = page.locator("details.explain[data-segment=browsing-enthusiasts]")
        assert why.locator("summary").inner_text().startswith("in")
        expect(why.locator("li.cond").first).to_have_class("cond holds")  # open: it is in
        assert "Product Viewed" in page.locator("section", has_text="Recent events").inner_text()
        # the overview measured how long her views took from the collector to the segment
        page.goto(f"{api.url}/admin")
        delay = page.locator("[data-stat=delay-p50]")
        expect(delay).to_have_attribute("data-value", re.compile(r"^\d+$"))
        assert 0 <= int(delay.get_attribute("data-value") or "") < 120_000
        expect(page.locator("[data-stat=delay-samples]")).to_have_text(re.compile(r"^[1-9]"))
    finally:
        os.killpg(flow.pid, 9)
        flow.wait()


AXE = Path(__file__).resolve().parents[1] / "vendor" / "axe-core" / "axe.min.js"


@pytest.mark.backend_independent
def test_no_page_has_a_serious_accessibility_violation(
    browser, api, credentials, settings, redis_client: redis.Redis, tmp_path
):
    """axe-core (tests/vendor, never served) on every page; the pages' CSP is bypassed for
    the check's own script only."""
    now = time.time_ns() // 1_000_000
    replay_messages(
        redis_client,
        settings,
        tmp_path,
        [
            track_at("ada", "Product Added", now - 5_000, price=3),
            # bea's cart waited 30 min: the segment page lists her enter
            track_at("bea", "Product Added", now - 40 * 60_000, product_id="p1", price=3),
        ],
    )
    run_dataflow(settings)
    redis_client.xadd(
        "failed-events", {"received_at": now, "reason": "invalid", "source": "s", "raw": "{}"}
    )
    add_destination(settings, "email", "http://127.0.0.1:9/hooks")
    context = browser.new_context(bypass_csp=True, viewport={"width": 1366, "height": 860})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(f"{api.url}/admin/login")
        found = {"/admin/login": audit(page)}
        page.fill("#token", credentials["admin_token"])
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/admin$"))
        for path in (
            "/admin",
            "/admin/segments",
            "/admin/segments/cart-abandoners",
            "/admin/clusters",  # before the first fit: what to do
            "/admin/rules",
            "/admin/rules/cart-abandoners",
            "/admin/rules/new",
            "/admin/customers",
            "/admin/customers/ada",
            "/admin/deliveries",
            "/admin/deliveries?dead=true",
            "/admin/destinations",
            "/admin/destinations/email",
            "/admin/templates/cart-reminder",
            "/admin/failed-events",
        ):
            page.goto(f"{api.url}{path}")
            page.locator("body[data-ready]").wait_for(state="attached")
            found[path] = audit(page)
        page.goto(f"{api.url}/admin/segments/cart-abandoners")
        assert page.locator("table.moves tbody tr").count() == 1  # audited with bea's enter
    finally:
        context.close()
    problems = [f"{path}: {v}" for path, found_there in found.items() for v in found_there]
    assert not problems, "\n".join(problems)


def audit(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page: rule id and where."""
    page.add_script_tag(path=str(AXE))
    results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']}: {v['help']} ({', '.join(n['target'][0] for n in v['nodes'][:3])})"
        for v in results["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_a_template_is_written_refused_with_its_line_then_previewed_for_a_customer(
    page, api, credentials, redis_client: redis.Redis
):
    redis_client.hset(
        profile_key("ada"),
        mapping={"features": '{"cart_value": 30}', "traits": '{"first_name": "Ada"}'},
    )
    log_in(page, api, credentials["admin_token"], "/admin/destinations")
    page.click("text=Write a template")
    form = page.locator("form[hx-post='/admin/templates']")
    form.locator("input[name=name]").fill("hello")
    form.locator("select[name=kind]").select_option("push")
    form.locator("textarea[name=title]").fill("Hi {{ traits.first_name }}")
    form.locator("textarea[name=body]").fill("Your cart:\n{% if cart.value %}{{ cart.value }")
    form.locator("button[type=submit]").click()
    refused = page.locator("#template-result [role=alert]")
    expect(refused).to_contain_text("field 'body' (line 2)")
    form.locator("textarea[name=body]").fill("Your cart holds {{ cart.value }}")
    form.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r"/admin/destinations$"))
    row = page.locator("tr[data-template=hello]")
    expect(row).to_contain_text("push")
    ready(page)
    row.locator("input[name=customer_id]").fill("ada")
    row.locator("button:has-text('Preview')").click()
    shown = row.locator(".result [role=status]")
    expect(shown).to_contain_text("Hi Ada")
    expect(shown).to_contain_text("Your cart holds 30")


def test_a_destinations_url_is_edited_and_it_is_deleted_once_its_name_is_typed(
    page, services, settings, credentials
):
    allowing = services.settings(SEGFLOW_ALLOW_PRIVATE_DESTINATIONS=1)
    old, new = Receiver(), Receiver()
    try:
        add_destination(settings, "email", old.url.replace("/hooks", "/old"))
        with ServerThread(create_app(allowing)) as api:
            log_in(page, api, credentials["admin_token"], "/admin/destinations")
            page.locator("tr[data-destination=email] >> text=Edit or delete").click()
            page.wait_for_url(re.compile(r"/admin/destinations/email$"))
            ready(page)
            url = page.locator("input[name=url]")
            assert url.input_value().endswith("/old")
            url.fill(new.url)
            page.click("button:has-text('Save the settings')")
            expect(page.locator("#destination-result [role=status]")).to_contain_text(
                "Destination email saved."
            )
            page.click("text=All destinations and templates")
            page.wait_for_url(re.compile(r"/admin/destinations$"))
            ready(page)
            row = page.locator("tr[data-destination=email]")
            expect(row.locator("td code")).to_have_text(new.url)
            row.locator("text=Send a test").click()
            expect(row.locator(".result [role=status]")).to_contain_text("Delivered: 200")
            assert (len(old.requests), len(new.requests)) == (0, 1)  # to the new URL only

            row.locator("text=Edit or delete").click()
            page.wait_for_url(re.compile(r"/admin/destinations/email$"))
            ready(page)
            danger = page.locator("section.danger")
            expect(danger).to_contain_text("Rules that send to it: cart-abandoners")
            page.fill("#confirm", "e-mail")  # not its name: refused
            page.click("button.bad")
            expect(page.locator("#delete-result [role=alert]")).to_contain_text("exactly")
            page.fill("#confirm", "email")
            page.click("button.bad")
            page.wait_for_url(re.compile(r"/admin/destinations$"))
            ready(page)
            expect(page.locator("main")).to_contain_text("No destinations yet")
            assert page.locator("tr[data-destination=email]").count() == 0
    finally:
        old.close()
        new.close()


def test_a_template_is_edited_with_a_preview_of_the_draft_then_deleted(
    page, api, credentials, settings, redis_client: redis.Redis
):
    redis_client.hset(
        profile_key("ada"),
        mapping={"features": '{"cart_value": 30}', "traits": '{"first_name": "Ada"}'},
    )

    def stored_text() -> str | None:
        engine = make_engine(settings)
        try:
            with Session(engine) as db:
                names = store.template_names(session=db)
                if "cart-reminder" not in names:
                    return None
                return store.get_template(session=db, name="cart-reminder").sources["text"]
        finally:
            engine.dispose()

    shipped = stored_text()
    log_in(page, api, credentials["admin_token"], "/admin/destinations")
    page.locator("tr[data-template=cart-reminder] >> text=Edit or delete").click()
    page.wait_for_url(re.compile(r"/admin/templates/cart-reminder$"))
    ready(page)
    text = page.locator("textarea[name=text]")
    assert text.input_value() == shipped  # the stored sources, to change
    text.fill("Hi {{ traits.first_name }},\n{% if cart.value %}{{ cart.value }}")
    page.click("button:has-text('Save the template')")
    refused = page.locator("#template-result [role=alert]")
    expect(refused).to_contain_text("field 'text' (line 2)")

    text.fill("Hi {{ traits.first_name }}, your cart holds {{ cart.value }}")
    page.fill("input[name=customer_id]", "ada")
    page.click("button:has-text('Preview')")
    expect(page.locator("#draft-preview [role=status]")).to_contain_text(
        "Hi Ada, your cart holds 30"
    )
    assert stored_text() == shipped  # a preview saves nothing
    page.click("button:has-text('Save the template')")
    expect(page.locator("#template-result [role=status]")).to_contain_text(
        "Template cart-reminder saved"
    )
    assert stored_text() == "Hi {{ traits.first_name }}, your cart holds {{ cart.value }}"

    danger = page.locator("section.danger")
    expect(danger).to_contain_text("Rules that send with it: cart-abandoners")
    page.fill("#confirm", "cart-reminder")
    page.click("button.bad")
    page.wait_for_url(re.compile(r"/admin/destinations$"))
    ready(page)
    assert page.locator("tr[data-template=cart-reminder]").count() == 0
    assert stored_text() is None
