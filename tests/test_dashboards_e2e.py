"""The dashboards in a real browser (Debian's Chromium, driven by Playwright) over a smoke sweep's MLflow server.

Screenshots go to ``test-artifacts/dashboards/`` in the repository (ignored by git).
"""

import os
import shutil
import sys

import mlflow
import pytest
from helpers import REPO, free_port, http_ok, require, require_module, start_in_group, stop_group, wait_until
from PIL import Image

pytestmark = pytest.mark.slow
SCREENSHOTS = str(REPO / "test-artifacts" / "dashboards")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PLAYWRIGHT = "pip install -e '.[dev]' installs Playwright"
# As the machine notes say: no background networking (this machine's network is closed), fresh profile.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def dashboard(smoke_sweep, tmp_path_factory):
    """The app serving the smoke sweep's store on 127.0.0.1; yields its URL."""
    uri = smoke_sweep.uri
    folder = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    app = start_in_group(
        [sys.executable, "-m", "dashboards", "--tracking-uri", uri, "--port", str(port), "--max-upload-mb", "1"],
        folder / "app.log",
        env=dict(os.environ, PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(url), app, folder / "app.log", 120, "the dashboards app")
        yield url
    finally:
        stop_group(app)


@pytest.fixture()
def page():
    playwright_api = require_module("playwright.sync_api", PLAYWRIGHT)
    require(os.path.exists(CHROMIUM), "Chromium is missing: apt-get install chromium (.ci/run does)")
    os.makedirs(SCREENSHOTS, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1300, "height": 1500})
        browser.close()


def _finished_trials(uri: str, experiment: str) -> list:
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs(
        [found.experiment_id], filter_string="tags.`nsde.status` = 'finished' and tags.`nsde.role` = 'trial'"
    )


def test_pareto_view_and_side_by_side_explanations_in_a_browser(smoke_sweep, dashboard, page, tmp_path):
    uri, experiment = smoke_sweep.uri, smoke_sweep.name
    finished = _finished_trials(uri, experiment)
    assert finished

    page.goto(dashboard)
    points = page.locator("#pareto-plot .scatterlayer path.point")
    points.first.wait_for(timeout=60_000)
    assert points.count() == 2 * len(finished)  # one point per finished configuration in each of the two panels
    assert f"{len(finished)} finished configurations" in page.locator("#front-summary").inner_text()
    page.screenshot(path=os.path.join(SCREENSHOTS, "1_pareto.png"), full_page=True)

    # select the last trial in the list: its params, metrics and attribution grid appear
    page.locator("#trial input").click()
    options = page.get_by_role("option")
    options.last.click()
    # the element comes before its picture: wait until one has loaded, at full size
    page.wait_for_function(
        "() => [...document.querySelectorAll('#trial-grid img')].some(img => img.complete && img.naturalWidth > 100)",
        timeout=60_000,
    )
    assert "MLflow UI" in page.locator("#trial-link").inner_text()
    page.screenshot(path=os.path.join(SCREENSHOTS, "2_trial.png"), full_page=True)

    # upload a real digit photo-like image: two overlays and two top-5 lists
    from sklearn.datasets import load_digits

    digit = Image.fromarray((load_digits().images[3] * 255 / 16).astype("uint8")).resize((120, 90))
    digit.convert("RGB").save(tmp_path / "digit.jpg", quality=95)
    page.get_by_role("tab", name="Explain").click()
    page.set_input_files("#upload input[type=file]", str(tmp_path / "digit.jpg"))
    for side in ("left", "right"):
        page.locator(f"#{side}-attribution img").wait_for(timeout=120_000)
        page.locator(f"#{side}-top5 .confidence-set").nth(4).wait_for(timeout=30_000)
        assert page.locator(f"#{side}-top5 .confidence-set").count() == 5
        assert "Max-sensitivity" in page.locator(f"#{side}-sensitivity").inner_text()
    assert "120x90" in page.locator("#explain-status").inner_text()
    page.screenshot(path=os.path.join(SCREENSHOTS, "3_explain.png"), full_page=True)

    # a corrupted file: a clear message in the page, and the app keeps serving
    digit.save(tmp_path / "digit.png")
    (tmp_path / "broken.png").write_bytes((tmp_path / "digit.png").read_bytes()[:200])
    page.locator("#upload button[aria-label='Clear']").click()
    page.set_input_files("#upload input[type=file]", str(tmp_path / "broken.png"))
    status = page.locator("#explain-status")
    status.filter(has_text="cannot be decoded").wait_for(timeout=60_000)
    page.screenshot(path=os.path.join(SCREENSHOTS, "4_corrupted.png"), full_page=True)
    assert http_ok(dashboard)
