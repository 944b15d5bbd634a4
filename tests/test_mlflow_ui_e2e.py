"""MLflow's own UI over the smoke sweep's store: a real ``mlflow server`` on 127.0.0.1, driven in headless Chromium.

What a new user sees (a fresh browser each test), with the clicks docs/mlflow.md documents. Screenshots go where
the dashboards' browser test puts its own (``test-artifacts/dashboards/``), named ``mlflow_*.png``.
"""

import os
import re
from types import SimpleNamespace

import mlflow
import pytest
from helpers import mlflow_server, require_module
from test_dashboards_e2e import PLAYWRIGHT, SCREENSHOTS, page  # noqa: F401 (page: the browser fixture)

from nsde_ray.front_table import table_columns
from nsde_ray.tracking import FRONT_FILTER, OBJECTIVES_SECTION, ROLE, front_url

pytestmark = pytest.mark.slow
expect = require_module("playwright.sync_api", PLAYWRIGHT).expect
WAIT = 90_000  # ms: MLflow's UI on a busy two-core machine


@pytest.fixture(scope="module")
def mlflow_ui(smoke_sweep, tmp_path_factory):
    """A real ``mlflow server`` over the smoke sweep's store and artifacts on a free port; yields its URL."""
    folder = tmp_path_factory.mktemp("mlflow_ui")
    with mlflow_server(smoke_sweep.store, smoke_sweep.artifacts, folder / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def sweep(smoke_sweep):
    """The smoke sweep as MLflow's API reads it: experiment id, the sweep's run, the front's runs."""
    client = mlflow.MlflowClient(smoke_sweep.uri)
    experiment = client.get_experiment_by_name(smoke_sweep.name).experiment_id
    (parent,) = client.search_runs([experiment], filter_string=f"tags.`{ROLE}` = 'sweep'")
    front = client.search_runs([experiment], filter_string=FRONT_FILTER)
    assert front, "the smoke sweep has no front"
    return SimpleNamespace(experiment=experiment, parent=parent, front=front)


def patient(page):
    """``page`` waiting up to :data:`WAIT` for each step, and wide enough to show MLflow's assistant panel beside the
    tables in the screenshots."""
    page.set_default_timeout(WAIT)
    page.set_viewport_size({"width": 1800, "height": 1500})
    return page


def switch_to_model_training(page, tries: int = 3) -> None:
    """Click the experiment page's **Model training** switch until the URL shows its runs, as a user clicks again
    when a first click, made while the page is still settling (its GenAI tip opening), does not switch."""
    for attempt in range(tries):
        page.get_by_text("Model training", exact=True).click()
        try:
            expect(page).to_have_url(re.compile(r"/runs\?.*workflowType=machine_learning"), timeout=WAIT // tries)
            return
        except AssertionError:
            if attempt == tries - 1:
                raise


def screenshot(page, name: str) -> None:
    page.screenshot(path=os.path.join(SCREENSHOTS, f"mlflow_{name}.png"), full_page=True)


def test_a_new_user_reaches_the_front_from_the_experiment_page(mlflow_ui, sweep, page):
    """The experiment opens on MLflow's GenAI overview whatever its kind tag; a click on "Model training" shows its
    runs, the sweep's run at the top; a click on that shows the front table (rendered Markdown) in its description,
    and a click on the link under it lists the front's runs at the top level, the sweep's run not among them."""
    page = patient(page)
    page.add_locator_handler(page.get_by_role("button", name="Got it"), lambda tip: tip.click())  # a GenAI tip
    page.goto(f"{mlflow_ui}/#/experiments/{sweep.experiment}")
    switch_to_model_training(page)
    sweep_run = page.locator(f"a[href$='/runs/{sweep.parent.info.run_id}']")
    sweep_run.wait_for()
    screenshot(page, "1_runs")

    sweep_run.click()
    table = page.locator("table").filter(has_text="pareto_probability")
    table.wait_for()
    assert table.locator("th").all_inner_texts() == list(table_columns())
    assert table.locator("tbody tr").count() == sweep.parent.data.metrics["finished_trials"]
    if page.get_by_text("Show more").count():  # the description is folded after a few lines
        page.get_by_text("Show more").click()
    screenshot(page, "2_sweep_run")

    with page.context.expect_page() as opened:
        page.get_by_role("link", name="The front's runs").click()
    front = opened.value
    front.get_by_text(re.compile(rf"^{len(sweep.front)} matching runs?$")).wait_for(timeout=WAIT)
    for run in sweep.front:
        front.locator(f"a[href$='/runs/{run.info.run_id}']").wait_for(timeout=WAIT)
    assert front.locator(f"a[href$='/runs/{sweep.parent.info.run_id}']").count() == 0
    front.get_by_role("button", name="Sort: val_accuracy").wait_for(timeout=WAIT)
    screenshot(front, "3_front")


def test_the_chart_view_shows_the_objectives_section_first(mlflow_ui, sweep, page):
    """Over the front's runs, the Chart view's first section is the objectives', above the unprefixed metrics."""
    page = patient(page)
    page.goto(f"{front_url(sweep.experiment, mlflow_ui)}&compareRunsMode=CHART")
    sections = [page.get_by_text(name, exact=True).first for name in (OBJECTIVES_SECTION.rstrip("/"), "Model metrics")]
    for section in sections:
        section.wait_for()
    objectives, flat = (section.bounding_box()["y"] for section in sections)
    assert objectives < flat
    page.get_by_text(f"{OBJECTIVES_SECTION}val_accuracy").first.wait_for()
    screenshot(page, "4_charts")
