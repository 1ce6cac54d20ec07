"""The per-suite results directory: files generated from the store alone, and a report a browser renders."""

import shutil

import numpy as np
import pytest

from bench.curves import pareto_front
from bench.report import write_results
from bench.store import RunRecord, Store
from methods import METHODS

SWEPT = ("base", "ddpo")
REWARDS = ("digit", "compress")


@pytest.fixture(scope="module")
def results_dir(reference_sweep, tmp_path_factory):
    """The reference sweep's results, regenerated from a copy of its store with one failed run added."""
    out = tmp_path_factory.mktemp("report")
    shutil.copy(reference_sweep, out / "store.sqlite")
    with Store(out / "store.sqlite") as store:
        # the method's current version: a failed run of an older one would not be ranked
        store.start_run(
            RunRecord(
                "ddpo-digit-s7-broken",
                "smoke",
                "ddpo",
                METHODS["ddpo"].version,
                "",
                "diffusion",
                "digits-tiny",
                "digit",
                7,
                "nfe",
                400.0,
                "{}",
                "c-broken",
                "abc123",
                "h0",
            )
        )
        store.finish_run("ddpo-digit-s7-broken", "failed", "FloatingPointError: loss became NaN at step 3")
        write_results(store, out)
    return out


def test_every_file_is_generated_from_the_store(results_dir):
    names = {p.name for p in results_dir.iterdir()}
    for reward in REWARDS:
        for kind in ("samples", "compute", "overoptimization", "pareto"):
            assert f"{kind}_{reward}.png" in names
    assert {"leaderboard.csv", "leaderboard.md", "aggregate.csv", "improvement.csv", "report.html"} <= names
    page = (results_dir / "report.html").read_text()
    assert 'src="http' not in page and "<script" not in page  # self-contained and static
    assert page.count("data:image/png;base64,") == 4 * len(REWARDS)


@pytest.mark.skipif(
    shutil.which("chromedriver") is None or shutil.which("chromium") is None,
    reason="needs Debian's chromium and chromium-driver packages (.ci/run installs them)",
)
def test_the_report_renders_in_a_headless_browser_and_shows_every_method(results_dir):
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        driver.get((results_dir / "report.html").as_uri())
        assert driver.title == "Leaderboard: smoke"
        for reward in REWARDS:
            section = driver.find_element(By.ID, f"task-{reward}")
            assert section.is_displayed()
            table = section.find_element(By.XPATH, "following-sibling::table[1]")
            shown = {
                row.find_elements(By.TAG_NAME, "td")[0].text for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
            }
            assert shown == set(SWEPT), (reward, shown)
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0 && i.width > 0])"
        )
        assert len(images) == 4 * len(REWARDS) and all(ok for _, ok in images), images
        text = driver.find_element(By.TAG_NAME, "body").text
        for heading in ("Across rewards", "Probability of improvement: judge_acc", "Runs", "Failed runs"):
            assert heading in text
        failed = driver.find_element(By.ID, "failed").find_element(By.XPATH, "following-sibling::table[1]").text
        assert "ddpo-digit-s7-broken" in failed and "loss became NaN at step 3" in failed
        assert driver.execute_script("return document.body.scrollHeight") > 3000  # laid out, not blank
    finally:
        driver.quit()


def test_pareto_front_keeps_the_cells_no_other_cell_beats_on_both_axes():
    x, y = np.array([0.0, 1.0, 2.0, 3.0]), np.array([3.0, 2.0, 2.5, 0.0])
    assert pareto_front(x, y, True, True).tolist() == [0, 2, 3]  # (1, 2) is beaten by (2, 2.5)
    assert pareto_front(x, y, True, False).tolist() == [3]  # lower y is better: (3, 0) beats all
    assert pareto_front(np.array([1.0, 1.0]), np.array([1.0, 1.0]), True, True).tolist() == [0, 1]  # ties stay
