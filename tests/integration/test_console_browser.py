"""The console in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright):
sign in with each kind of key, read every page at 1280 and 390 px, download the CSV, create and
revoke a key, and check the numbers on the pages against the ledger's own sums.

A screenshot of each page lands in tests/artifacts/console/ (gitignored).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.accounting.reports import render_csv, run_report
from tests.harness import ROOT
from tests.integration.console_support import (
    ACME_KEY,
    ADMIN_KEY,
    Setup,
    console_setup,
    ledger_sums,
    traffic,
)

__all__ = ["console_setup"]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="needs Debian's chromium (apt-get install -y chromium)")

ADMIN_PAGES = {"spend": "/ui/spend", "tenant": "/ui/tenants/acme", "requests": "/ui/requests",
               "keys": "/ui/keys", "deployments": "/ui/deployments", "policy": "/ui/policy",
               "limits": "/ui/limits", "alerts": "/ui/alerts"}
TENANT_PAGES = {"tenant": "/ui/tenants/acme", "spend": "/ui/spend", "requests": "/ui/requests",
                "limits": "/ui/limits"}

# Every visible form field has a label (or an aria-label), every table a header row, and the
# page does not scroll sideways (wide tables scroll inside their own box).
_A11Y = """() => {
  const fields = [...document.querySelectorAll('input:not([type=hidden]), select, textarea')];
  const unlabelled = fields.filter(f => !(f.labels && f.labels.length) &&
                                        !f.getAttribute('aria-label')).map(f => f.name || f.id);
  const tables = [...document.querySelectorAll('table')];
  const headless = tables.filter(t => !t.querySelector('th')).length;
  return {title: document.title, unlabelled, headless, tables: tables.length,
          overflow: document.documentElement.scrollWidth - window.innerWidth};
}"""


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def setup(console_setup: Setup) -> Setup:
    traffic(console_setup)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return console_setup


def _sign_in(browser: Any, setup: Setup, key: str, width: int = 1280) -> Any:
    ctx = browser.new_context(viewport={"width": width, "height": 900}, accept_downloads=True)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors
    page.goto(setup.url + "/ui/")
    assert "/ui/login" in page.url
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/ui/(spend|tenants/.*)$"))
    return page


def _check_page(page: Any, name: str, width: int) -> dict[str, Any]:
    page.wait_for_load_state("networkidle")
    if page.locator("[data-figure]").count():
        # plotly.js drew each figure (its SVG root), from the bundle the gateway served.
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-figure]')]"
            ".every(el => el.querySelector('svg.main-svg'))", timeout=15000)
    page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
    info: dict[str, Any] = page.evaluate(_A11Y)
    assert info["title"].endswith("· Model Gateway") and len(info["title"]) > 16, info
    assert info["unlabelled"] == [], (name, info)
    assert info["headless"] == 0, (name, info)
    assert info["overflow"] <= 1, (name, width, info)
    assert page.errors == [], (name, page.errors)
    return info


def _testid(page: Any, tid: str) -> str:
    return str(page.get_by_test_id(tid).first.inner_text().strip())


def test_admin_reads_every_page_and_numbers_match_the_ledger(browser: Any, setup: Setup
                                                              ) -> None:
    page = _sign_in(browser, setup, ADMIN_KEY)
    ledger = ledger_sums(setup.ledger)
    for name, path in ADMIN_PAGES.items():
        page.goto(setup.url + path)
        _check_page(page, f"admin-{name}", 1280)
        if name == "spend":
            assert _testid(page, "total-requests") == str(ledger["requests"]) == "7"
            assert Decimal(_testid(page, "token-cost")) == ledger["cost_usd"]
            assert int(_testid(page, "total-tokens")) == sum(
                ledger[b] for b in ("input_uncached", "cache_read", "cache_write", "output",
                                    "reasoning"))
        if name == "tenant":
            acme = ledger_sums(setup.ledger, "acme")
            assert _testid(page, "total-requests") == str(acme["requests"]) == "5"
            assert Decimal(_testid(page, "token-cost")) == acme["cost_usd"]
            for b in ("input_uncached", "cache_read", "cache_write", "output", "reasoning"):
                assert int(_testid(page, f"bucket-{b}")) == acme[b], b
            assert acme["cache_read"] > 0 and acme["reasoning"] > 0  # the buckets are real
            assert Decimal(_testid(page, "budget-spent")) == acme["cost_usd"]
            assert page.locator("[data-testid=gpu] tbody td").first.inner_text() == "gpu/tiny"
        if name == "deployments":
            # The backend's scraped queue and KV use, refreshed in place by the page.
            cell = 'tr[data-deployment="gpu/tiny"] [data-field=queue_waiting]'
            page.wait_for_function(f"() => document.querySelector('{cell}').textContent === '3'",
                                   timeout=15000)
            kv = page.locator('tr[data-deployment="gpu/tiny"] [data-field=kv_cache_usage]')
            assert kv.inner_text() == "0.42"
            rps = page.locator('tr[data-deployment="up/m"] [data-field=requests_per_s]')
            assert float(rps.inner_text()) > 0
        if name == "policy":
            text = page.get_by_test_id("policy-text").inner_text()
            assert "sk-upstream-secret" not in text and "***" in text
        if name == "requests":
            page.get_by_label("Client request id").fill("acme-chat-1")
            page.get_by_role("button", name="Filter").click()
            page.wait_for_url(re.compile(r".*client_request_id=acme-chat-1.*"))
            assert page.locator("[data-testid=requests] > tbody > tr").count() == 1
            page.locator("[data-testid=requests] details summary").first.click()
            assert "up/m" in page.locator("table.attempts").first.inner_text()
            _check_page(page, "admin-requests-filtered", 1280)


def test_csv_download_is_the_usage_reports_rows(browser: Any, setup: Setup) -> None:
    page = _sign_in(browser, setup, ADMIN_KEY)
    with page.expect_download() as d:
        page.get_by_test_id("csv-link").click()
    rows = list(csv.DictReader(io.StringIO(Path(d.value.path()).read_text())))
    policy = setup.gw.policy
    start, end = page.locator("#from").input_value(), page.locator("#to").input_value()
    report = run_report(policy.ledger.url, date.fromisoformat(start), date.fromisoformat(end),
                        policy=policy)
    want = list(csv.DictReader(io.StringIO(render_csv(report))))
    usage = [r for r in rows if r["kind"] == "usage"]
    assert usage == [r for r in want if r["kind"] == "usage"] and len(usage) == 3
    # The GPU rows' hours grow with the clock: compare who is billed, not the amount.
    assert [(r["tenant"], r["deployment"]) for r in rows if r["kind"] == "gpu"] == \
        [(r["tenant"], r["deployment"]) for r in want if r["kind"] == "gpu"]
    # The page's table shows the same usage rows, cell for cell.
    cells = page.locator("[data-testid=report] tbody tr").all()
    shown = [[c.inner_text() for c in row.locator("td").all()] for row in cells]
    header = [h.inner_text() for h in page.locator("[data-testid=report] thead th").all()]
    for r in usage:
        assert [r[c] for c in header] in shown


def test_admin_creates_and_revokes_a_key(browser: Any, setup: Setup) -> None:
    page = _sign_in(browser, setup, ADMIN_KEY)
    page.goto(setup.url + "/ui/keys")
    page.get_by_label("Tenant").select_option("globex")
    page.get_by_label("Name").fill("browser-made")
    page.get_by_role("button", name="Create key").click()
    key = page.get_by_test_id("issued-key").inner_text()
    assert key.startswith("gw-")
    _check_page(page, "admin-keys-issued", 1280)
    row = page.locator("[data-testid=keys] tr", has_text="browser-made")
    key_id = row.get_attribute("data-key-id")
    # The key works, in the console too; then the admin revokes it.
    other = _sign_in(browser, setup, key)
    assert "/ui/tenants/globex" in other.url
    row.get_by_role("button", name=re.compile("Revoke")).click()
    page.wait_for_url(re.compile(r".*/ui/keys$"))
    revoked = page.locator(f'[data-testid=keys] tr[data-key-id="{key_id}"]')
    assert "revoked" in revoked.inner_text()
    # Reloading the revoked key's page within a second lands on the sign-in form.
    other.wait_for_timeout(1100)
    other.reload()
    assert "/ui/login" in other.url
    # The key is shown once: the keys page does not show it again.
    page.reload()
    assert key not in page.content()


def test_tenant_key_sees_only_its_own_tenant(browser: Any, setup: Setup) -> None:
    page = _sign_in(browser, setup, ACME_KEY)
    assert page.url.endswith("/ui/tenants/acme")
    acme = ledger_sums(setup.ledger, "acme")
    for name, path in TENANT_PAGES.items():
        page.goto(setup.url + path)
        _check_page(page, f"tenant-{name}", 1280)
        assert "globex" not in page.content(), name
        if name == "spend":
            assert _testid(page, "total-requests") == str(acme["requests"])
    for path in ("/ui/tenants/globex", "/ui/keys", "/ui/policy", "/ui/deployments"):
        r = page.goto(setup.url + path)
        assert r is not None and r.status == 403, path
    # Sign-out ends the session.
    page.goto(setup.url + "/ui/spend")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/ui/login$"))
    page.goto(setup.url + "/ui/spend")
    assert "/ui/login" in page.url


@pytest.mark.parametrize("key", ["admin", "tenant"])
def test_every_page_works_at_390_px(browser: Any, setup: Setup, key: str) -> None:
    page = _sign_in(browser, setup, ADMIN_KEY if key == "admin" else ACME_KEY, width=390)
    for name, path in (ADMIN_PAGES if key == "admin" else TENANT_PAGES).items():
        page.goto(setup.url + path)
        _check_page(page, f"{key}-{name}", 390)
