"""The SecMLOps view in a real browser: log in to Airflow's UI, open the view from the nav.

Debian's chromium and its chromedriver, headless, driven by Selenium (Service points at the
system chromedriver, so Selenium Manager downloads nothing). They are installed with apt-get when
missing; if that fails the test fails with apt's output. It never skips. The screenshot of the
view goes to docs/images/airflow-secmlops-view.png when that file is missing or
SECMLOPS_UPDATE_SCREENSHOTS=1 (else into the test's temporary folder, so a test run leaves the
working tree as it found it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import REPO_ROOT
from ..plugins.seed import MODEL, STUDY, WINDOW, Seeded, seed_workdir
from .conftest import AirflowServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = REPO_ROOT / "docs" / "images" / "airflow-secmlops-view.png"
WAIT_S = 60

pytestmark = pytest.mark.slow


def ensure_chromium() -> None:
    """Install Debian's chromium and chromium-driver if either is missing (we run as root)."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if shutil.which("apt-get") is None:
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} missing and there is no apt-get to install them")
    steps = (
        ["apt-get", "update", "-q"],
        [
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "chromium",
            "chromium-driver",
        ],
    )
    for step in steps:
        done = subprocess.run(
            step,
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"{' '.join(step)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"apt-get installed chromium, but {CHROMIUM} or {CHROMEDRIVER} is missing")


@pytest.fixture(scope="module")
def seeded_server(start_airflow, tmp_path_factory) -> tuple[AirflowServer, Seeded]:
    """Airflow (api-server, scheduler, dag-processor) whose plugin reads a seeded work dir."""
    seeded = seed_workdir(tmp_path_factory.mktemp("secmlops-workdir"))
    return start_airflow(seeded.env), seeded


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless chromium through Selenium."""
    ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: chromium's own sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,1400",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def test_login_open_the_view_from_the_nav_and_read_it(seeded_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    server, _ = seeded_server
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(f"{server.base_url}/")
    # Not logged in: the UI sends the browser to SimpleAuthManager's login form.
    wait.until(ec.url_contains("/auth/login"))
    wait.until(ec.visibility_of_element_located((By.NAME, "username"))).send_keys(server.username)
    browser.find_element(By.NAME, "password").send_keys(server.password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    nav_entry = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "a[aria-label=SecMLOps]")))
    assert "/auth/login" not in browser.current_url
    assert browser.get_cookie("_token") is not None  # the session the framed view relies on
    nav_entry.click()
    wait.until(ec.url_contains("/plugin/secmlops"))
    frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
    assert frame.get_attribute("src").endswith("/secmlops/")
    browser.switch_to.frame(frame)
    try:
        registry = wait.until(ec.visibility_of_element_located((By.ID, "registry-table")))
        rows = {
            row.find_elements(By.TAG_NAME, "td")[1].text: row.text
            for row in registry.find_elements(By.CSS_SELECTOR, "tbody tr")
        }
        assert sorted(rows) == ["v1", "v2", "v3"]
        assert "production" in rows["v1"] and "verified" in rows["v1"] and "passed" in rows["v1"]
        assert "refused" in rows["v2"] and "failed the robustness gate" in rows["v2"]
        assert "refused" in rows["v3"] and "tampered" in rows["v3"]
        gates = browser.find_element(By.ID, "gates-table").text
        assert "robustness_gate" in gates and "pgd_linf_4 robust mAP@0.5 0.010 < 0.300" in gates
        assert f"{MODEL}@v1" in gates and "production: (none) -> v1" in gates
        assert WINDOW in browser.find_element(By.ID, "drift").text
        assert "fgsm-rs-4" in browser.find_element(By.ID, "tradeoffs-table").text
        # Scroll the framed page back to its top so the screenshot shows the registry.
        browser.execute_script("window.scrollTo(0, 0)")
    finally:
        browser.switch_to.default_content()
    shot = tmp_path / SCREENSHOT.name
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000  # a blank page compresses to far less
    if not SCREENSHOT.exists() or os.environ.get("SECMLOPS_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_the_drift_report_renders_in_its_sandbox(seeded_server, browser):
    """Evidently's report still renders with its scripts confined to an opaque origin."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, _ = seeded_server
    browser.get(f"{server.base_url}/secmlops/reports/drift/{WINDOW}/drift-report.html")
    body = WebDriverWait(browser, WAIT_S).until(
        lambda driver: (
            "brightness" in driver.find_element(By.TAG_NAME, "body").text
            and driver.find_element(By.TAG_NAME, "body")
        )
    )
    assert "Value Drift" in body.text or "drift" in body.text.lower()
    browser.get(f"{server.base_url}/secmlops/reports/tradeoffs/{STUDY}/report.html")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Trade-off study"


def test_the_server_runs_the_scheduler_and_parses_the_dags(seeded_server):
    """The fixture's Airflow is a whole one: scheduler and dag-processor healthy, DAGs parsed."""
    server, _ = seeded_server
    health = server.health()
    assert health["scheduler"]["status"] == health["dag_processor"]["status"] == "healthy"
    dag_files = {p.name for p in (REPO_ROOT / "dags").glob("*.py") if "@dag" in p.read_text()}
    with server.client() as client:

        def parsed_files() -> set[str]:
            response = client.get("/api/v2/dags")
            response.raise_for_status()
            return {Path(d["fileloc"]).name for d in response.json()["dags"]}

        server.wait_until(lambda: dag_files <= parsed_files())
        errors = client.get("/api/v2/importErrors").json()
    assert errors["total_entries"] == 0, errors
