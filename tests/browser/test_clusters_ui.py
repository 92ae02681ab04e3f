"""The clusters page in a real browser: the empty state says what a refit needs, "Refit now"
fits on generated customers of known personas (written as profiles by the dataflow's sink),
the picture is drawn, a renamed cluster keeps its name through another refit, a name another
cluster has is refused, and axe-core finds no serious violation on the pages."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from app.clustering.fitting import MIN_PROFILES
from app.main import create_app
from tests.browser.test_admin_ui import audit, log_in, ready
from tests.cluster_personas import population
from tests.helpers import ServerThread, write_profiles


def refit(page: Any) -> None:
    """Click "Refit now" and wait for the page it leads back to."""
    before = page.locator("tr[data-refit]").count()
    page.click("button:has-text('Refit now')")
    expect(page.locator("tr[data-refit]")).to_have_count(before + 1, timeout=180_000)
    ready(page)


@pytest.mark.backend_independent
def test_clusters_are_refitted_pictured_renamed_and_the_name_kept(
    page, browser, services, settings, credentials
):
    quiet = services.settings(SEGFLOW_CLUSTER_REFIT_INTERVAL_S=0)
    with ServerThread(create_app(quiet)) as api:
        log_in(page, api, credentials["admin_token"], "/admin/clusters")
        empty = page.locator(".empty")
        expect(empty).to_contain_text(f"a refit needs at least {MIN_PROFILES} profiles")
        page.click("button:has-text('Refit now')")  # none yet: refused, saying why
        expect(page.locator("#refit-result [role=alert]")).to_contain_text(
            f"Not refitted: 0 profiles: a cluster fit needs at least {MIN_PROFILES}"
        )

        write_profiles(str(settings.redis_url), population(800, seed=31))
        refit(page)
        rows = page.locator("tr[data-cluster]")
        expect(rows).to_have_count(4)
        assert page.locator("[data-stat=algorithm]").inner_text()
        assert 0.5 < float(page.locator("[data-stat=silhouette]").inner_text()) <= 1
        chart = page.locator("#cluster-chart[data-rendered]")
        chart.wait_for()
        assert chart.get_attribute("data-rendered") == "400"  # every sampled point drawn
        assert page.locator("#cluster-chart canvas").count() == 1
        assert page.locator("#cluster-chart .u-legend .u-series").count() >= 4
        swatch = rows.first.locator(".swatch")
        assert swatch.evaluate("node => getComputedStyle(node).backgroundColor") != (
            "rgba(0, 0, 0, 0)"
        )  # coloured as in the picture, under the page's CSP

        first, second = rows.nth(0), rows.nth(1)
        cluster_id = first.get_attribute("data-cluster")
        second_name = second.locator("[data-name]").inner_text()
        first.locator("input[name=name]").fill("VIP <shoppers>")
        first.locator("button:has-text('Rename')").click()
        renamed = page.locator(f"tr[data-cluster='{cluster_id}']")
        expect(renamed.locator("[data-name]")).to_have_text("VIP <shoppers>")  # escaped
        expect(renamed).to_contain_text("named by you")
        ready(page)
        other = page.locator(f"tr[data-cluster='{second.get_attribute('data-cluster')}']")
        other.locator("input[name=name]").fill("vip <SHOPPERS>")
        other.locator("button:has-text('Rename')").click()
        expect(other.locator(".result [role=alert]")).to_contain_text("already")
        expect(other.locator("[data-name]")).to_have_text(second_name)

        refit(page)  # the name survives a refit: the cluster keeps its id
        expect(page.locator("tr[data-refit]")).to_have_count(2)
        kept = page.locator(f"tr[data-cluster='{cluster_id}']")
        expect(kept.locator("[data-name]")).to_have_text("VIP <shoppers>")
        kept.locator("[data-name]").click()
        page.wait_for_url(re.compile(rf"/admin/clusters/{cluster_id}$"))
        ready(page)
        expect(page.locator("h1")).to_have_text("VIP <shoppers>")
        expect(page.locator("section", has_text="Its centre")).to_contain_text("monetary_90d")

        # a customer in that cluster, flagged an outlier (as the dataflow's sink writes them)
        (odd,) = population(1, seed=32)
        write_profiles(
            str(settings.redis_url),
            [odd],
            segments=frozenset({f"cluster:{cluster_id}"}),
            outlier=True,
        )
        page.goto(f"{api.url}/admin/customers/{odd.id}")
        ready(page)
        expect(page.locator("[data-stat=cluster]")).to_have_text("VIP <shoppers>")
        expect(page.locator("[data-stat=outlier]")).to_have_text("outlier")
        page.click("[data-stat=cluster] a")
        page.wait_for_url(re.compile(rf"/admin/clusters/{cluster_id}$"))

        context = browser.new_context(bypass_csp=True, viewport={"width": 1366, "height": 860})
        checked = context.new_page()
        checked.set_default_timeout(60_000)
        checked.screenshots = page.screenshots  # read by ready()
        try:
            log_in(checked, api, credentials["admin_token"], "/admin/clusters")
            checked.locator("#cluster-chart[data-rendered]").wait_for()
            found = {"/admin/clusters": audit(checked)}
            checked.goto(f"{api.url}/admin/clusters/{cluster_id}")
            checked.locator("body[data-ready]").wait_for(state="attached")
            found[f"/admin/clusters/{cluster_id}"] = audit(checked)
            checked.goto(f"{api.url}/admin/customers/{odd.id}")
            checked.locator("body[data-ready]").wait_for(state="attached")
            found[f"/admin/customers/{odd.id}"] = audit(checked)
        finally:
            context.close()
        problems = [f"{path}: {v}" for path, there in found.items() for v in there]
        assert not problems, "\n".join(problems)
