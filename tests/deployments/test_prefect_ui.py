"""The Prefect UI of the platform in a real browser (Debian's headless Chromium driven by Playwright): the deployments
page lists prefect.yaml's deployments, and the backfill run's page shows it Completed with its summary artifact.
Writes the screenshots docs/prefect-ui-{deployments,run,summary}.png that deployments/README.md shows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
# No GPU, no network beyond loopback, no first-run or update machinery: a browser that starts the same way each time.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def page():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no browser at {CHROMIUM}: `make install` installs Debian's chromium (apt-get install chromium); "
                    "never `playwright install`", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def shot(page, name: str, tmp_path: Path) -> None:
    """Screenshot into docs/ (written whole, then moved: a failed run never leaves half a PNG there)."""
    page.screenshot(path=tmp_path / name)
    (ROOT / "docs").mkdir(exist_ok=True)
    shutil.move(tmp_path / name, ROOT / "docs" / name)


def test_the_deployments_page_lists_every_deployment(platform, backfill, page, tmp_path):
    from playwright.sync_api import expect

    page.goto(f"{platform.ep.ui_url}/deployments")
    rows = page.locator("table tbody tr")
    for name in ("backfill", "sync", "drain"):
        expect(rows.filter(has_text=name).first).to_be_visible()
    expect(page.get_by_text(f"{len(platform.ep.deployments)} Deployments")).to_be_visible()
    page.wait_for_load_state("networkidle")
    shot(page, "prefect-ui-deployments.png", tmp_path)


def test_a_completed_run_shows_its_summary_artifact(platform, backfill, page, tmp_path):
    from playwright.sync_api import expect

    page.goto(f"{platform.ep.ui_url}/runs/flow-run/{backfill['id']}")
    expect(page.get_by_text(backfill["name"]).first).to_be_visible()
    expect(page.get_by_text("Completed").first).to_be_visible()
    page.locator("li.p-tab#artifacts").click()
    summary = page.get_by_text("ingest-backfill-docs").first
    expect(summary).to_be_visible()
    expect(page.get_by_text("quality-gates").first).to_be_visible()
    page.wait_for_load_state("networkidle")
    shot(page, "prefect-ui-run.png", tmp_path)
    # The artifact opens on its own page, its markdown rendered.
    summary.click()
    expect(page.get_by_role("heading", name="Ingest into")).to_be_visible()
    expect(page.get_by_text("Reconciliation:").first).to_be_visible()
    page.wait_for_load_state("networkidle")
    shot(page, "prefect-ui-summary.png", tmp_path)
