"""The Dagster UI in headless Chromium (Debian's chromium and chromedriver, driven by Selenium):
open an asset's page, materialize a partition by clicking, wait for success, keep a screenshot; open a
partition of the quick start's ICM trace and find that partition's own metadata."""

import re
import shutil
import time
from pathlib import Path

import duckdb
import pytest

from tests.conftest import (
    ARTIFACTS,
    SAMPLE_RUN_ENV,
    graphql,
    running_ui,
    wait_for_materialization,
    wait_for_run,
)

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail(
            "Debian's chromium and chromium-driver are missing: scripts/test.sh installs them "
            "(scripts/system-deps.sh)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # no driver download: Debian's
    yield driver
    driver.quit()


def click_button(driver, label: str, wait: float = 60, required: bool = True) -> bool:
    """Click the first button whose text starts with ``label`` once it is rendered."""
    script = (
        "const b = Array.from(document.querySelectorAll('button'))"
        ".find(b => b.innerText.trim().startsWith(arguments[0]) && !b.disabled);"
        "if (b) { b.click(); return true; } return false;"
    )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if driver.execute_script(script, label):
            return True
        time.sleep(0.5)
    if required:
        raise AssertionError(
            f"no button {label!r}: {driver.execute_script('return document.body.innerText')[:2000]}"
        )
    return False


def test_materialize_a_partition_by_clicking_in_chromium(ui, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"http://127.0.0.1:{ui}/assets/opinions/goqa_survey")
    click_button(browser, "Materialize")
    if click_button(browser, "Skip", wait=3, required=False):  # the first visit's community invitation
        click_button(browser, "Materialize")
    WebDriverWait(browser, 30).until(
        expected_conditions.element_to_be_clickable((By.XPATH, "//*[contains(text(), 'Select a partition')]"))
    ).click()
    WebDriverWait(browser, 30).until(
        expected_conditions.element_to_be_clickable((By.XPATH, "//input[@placeholder='Filter partitions']"))
    ).send_keys("Dunmere")
    WebDriverWait(browser, 30).until(
        expected_conditions.element_to_be_clickable(
            (By.XPATH, "//*[@role='dialog']//span[normalize-space(text())='Dunmere']")
        )
    ).click()
    click_button(browser, "Launch 1 run", wait=30)

    materialization = wait_for_materialization(ui, ["opinions", "goqa_survey"], "Dunmere")
    assert wait_for_run(ui, materialization["runId"]) == "SUCCESS"
    browser.get(f"http://127.0.0.1:{ui}/assets/opinions/goqa_survey?view=partitions")
    WebDriverWait(browser, 60).until(
        lambda d: "Materialized (1)" in d.execute_script("return document.body.innerText")
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "ui-partition-materialized.png"))


TRACE = ["primary", "elicitation", "icm_search_trace"]
PARTITION_METADATA = """
query($key: AssetKeyInput!, $partition: String!) { assetOrError(assetKey: $key) { ... on Asset {
  assetMaterializations(partitions: [$partition], limit: 1) {
    partition metadataEntries {
      label ... on IntMetadataEntry { intValue } ... on PathMetadataEntry { path }
    }
  }
} } }"""


def test_a_partition_page_shows_that_partitions_own_row_count_and_plots(sample_run, browser, tmp_path):
    """The quick start materializes ICM for every country in one run; each country's page (and its
    materialization over GraphQL) shows that country's row count, as the warehouse holds it, and its own
    trace plots only."""
    assert sample_run.returncode == 0, sample_run.stderr
    with duckdb.connect(str(sample_run.home / "warehouse.duckdb"), read_only=True) as con:
        rows = dict(
            con.execute(
                "select country, count(*) from primary__elicitation.icm_search_trace group by 1"
            ).fetchall()
        )
    assert len(rows) >= 2
    with running_ui(sample_run.home, tmp_path / "ui.log", SAMPLE_RUN_ENV) as port:
        for country, count in sorted(rows.items()):
            variables = {"key": {"path": TRACE}, "partition": country}
            (found,) = graphql(port, PARTITION_METADATA, variables)["assetOrError"]["assetMaterializations"]
            entries = {e["label"]: e.get("intValue", e.get("path")) for e in found["metadataEntries"]}
            assert entries["dagster/row_count"] == count
            plots = [Path(v).name for k, v in entries.items() if k.startswith("plot/")]
            assert plots and all(name.startswith(f"{country}-") for name in plots), plots

        country = sorted(rows)[0]
        browser.get(f"http://127.0.0.1:{port}/assets/{'/'.join(TRACE)}?view=partitions&partition={country}")
        text = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and f"{country}-binary.png" not in text:
            time.sleep(1)
            text = browser.execute_script("return document.body.innerText")
        assert f"{country}-binary.png" in text, text[:3000]
        shown_plots = set(re.findall(r"([A-Za-z]+)-(?:binary|all)\.png", text))
        assert shown_plots == {country}, shown_plots
        assert re.search(rf"dagster/row_count\s+{rows[country]}\b", text), text[:3000]
        click_button(browser, "Skip", wait=3, required=False)  # the first visit's community invitation
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "ui-partition-metadata.png"))


ASSET_GROUPS = "{ assetNodes { assetKey { path } groupName } }"


def test_the_experiments_are_side_by_side_in_the_ui(sample_run, browser, tmp_path):
    """The quick start materializes both shipped experiments and their comparison: each experiment is its own
    group in the UI, and the comparison's page shows them side by side with its verdict."""
    from selenium.webdriver.common.by import By

    assert sample_run.returncode == 0, sample_run.stderr
    with running_ui(sample_run.home, tmp_path / "ui.log", SAMPLE_RUN_ENV) as port:
        nodes = graphql(port, ASSET_GROUPS)["assetNodes"]
        groups = {n["groupName"] for n in nodes if len(n["assetKey"]["path"]) == 3}
        assert groups == {"primary", "tiny_b"}
        by_group = {
            g: {tuple(n["assetKey"]["path"][1:]) for n in nodes if n["groupName"] == g} for g in groups
        }
        assert by_group["primary"] == by_group["tiny_b"] and len(by_group["primary"]) >= 20

        browser.get(f"http://127.0.0.1:{port}/assets/reports/experiment_comparison")
        text = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "judge_win_rates" not in text:
            time.sleep(1)
            text = browser.execute_script("return document.body.innerText")
        assert "judge_win_rates" in text and "verdict" in text, text[:3000]
        assert "primary" in text and "tiny_b" in text
        click_button(browser, "Skip", wait=3, required=False)
        verdict = browser.find_element(By.XPATH, "//*[normalize-space(text())='verdict']")
        browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", verdict)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "ui-experiment-comparison.png"))

        browser.get(f"http://127.0.0.1:{port}/asset-groups")  # the global lineage: a box per group
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "tiny_b" not in text:
            time.sleep(1)
            text = browser.execute_script("return document.body.innerText")
        assert "primary" in text and "tiny_b" in text and "reports" in text
        assert browser.save_screenshot(str(ARTIFACTS / "ui-experiments-lineage.png"))

        # The country personas' matrix: its diagonal test as a table, its verdict and its heatmaps.
        browser.get(f"http://127.0.0.1:{port}/assets/primary/finetune/country_alignment")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "own_first" not in text:
            time.sleep(1)
            text = browser.execute_script("return document.body.innerText")
        assert "own_first" in text and "verdict" in text and "plot/all-icm" in text, text[:3000]
        click_button(browser, "Skip", wait=3, required=False)
        verdict = browser.find_element(By.XPATH, "//*[normalize-space(text())='verdict']")
        browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", verdict)
        assert browser.save_screenshot(str(ARTIFACTS / "ui-country-alignment.png"))
