"""The Dagster UI in headless Chromium (Debian's chromium and chromedriver, driven by Selenium):
open an asset's page, materialize a partition by clicking, wait for success, keep a screenshot."""

import shutil
import time

import pytest

from tests.conftest import ARTIFACTS, wait_for_materialization, wait_for_run

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
