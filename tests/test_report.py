"""The per-suite results directory: files generated from the store alone, and a report a browser renders."""

import contextlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import ErrorbarContainer

from bench.curves import MAX_SERIES_PER_PANEL, figures, pareto_front
from bench.report import metric_tables, write_results
from bench.store import Store
from bench.store_schema import RunRecord
from methods import METHODS
from worlds import WORLDS

ROOT = Path(__file__).resolve().parents[1]

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
        for kind in ("samples", "compute", "overoptimization", "pareto", "diagnostics"):
            assert f"{kind}_{reward}.png" in names
    assert {"leaderboard.csv", "leaderboard.md", "aggregate.csv", "improvement.csv", "report.html"} <= names
    page = (results_dir / "report.html").read_text()
    assert 'src="http' not in page and "<script" not in page  # self-contained and static
    assert page.count("data:image/png;base64,") == 5 * len(REWARDS)
    # the world's headline reward first, whatever the alphabet says; the provenance after everything else
    assert page.index('id="task-digit"') < page.index('id="task-compress"')
    assert page.index('id="runs"') < page.index('id="provenance"') < page.index("Code at git")


def test_a_headline_broken_down_by_prompt_family_and_the_panel_of_judges_get_tables_of_their_own():
    metrics = ("judge_score", "judge_single", "judge_ocr", "reward", "reader_score", "fid", "kernel_score")
    directions = dict.fromkeys((*metrics, "judges_agree", "reader_only"), True)
    cells = pd.DataFrame({f"eval_unseen/{m}/mean": [0.5] for m in directions})
    shown, families, panel = metric_tables(cells, directions, "eval_unseen", "judge_score")
    assert set(families) == {"judge_single", "judge_ocr"} and shown[0] == "judge_score"
    assert set(shown) == {"judge_score", "reward", "reader_score", "fid"}
    assert panel == ["kernel_score", "judges_agree", "reader_only"]
    assert metric_tables(cells, {"judge_acc": True, "reward": True}, "eval_unseen", "judge_acc")[1:] == ([], [])


@pytest.mark.skipif(
    shutil.which("chromedriver") is None or shutil.which("chromium") is None,
    reason="needs Debian's chromium and chromium-driver packages (.ci/run installs them)",
)
@contextlib.contextmanager
def headless_chromium():
    """Debian's chromium through its driver, in a 1400 x 1000 window."""
    from selenium import webdriver

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
        yield driver
    finally:
        driver.quit()


WIDEST = "return Math.max(...Array.from(document.querySelectorAll('table')).map(t => t.getBoundingClientRect().width))"
OVERFLOW = "return document.documentElement.scrollWidth - document.documentElement.clientWidth"


def assert_fits_the_window(driver) -> None:
    """Nothing needs scrolling sideways, with every collapsed table closed or open."""
    assert 0 < driver.execute_script(WIDEST) <= 1400 and driver.execute_script(OVERFLOW) <= 0
    driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
    assert driver.execute_script(WIDEST) <= 1400 and driver.execute_script(OVERFLOW) <= 0


def test_every_committed_report_fits_a_1400_px_window():
    reports = sorted((ROOT / "results").glob("*/report.html"))
    assert reports
    with headless_chromium() as driver:
        for report in reports:
            driver.get(report.as_uri())
            assert_fits_the_window(driver)


def test_the_report_renders_in_a_headless_browser_and_shows_every_method(results_dir):
    from selenium.webdriver.common.by import By

    with headless_chromium() as driver:
        driver.get((results_dir / "report.html").as_uri())
        assert driver.title == "Leaderboard: smoke"
        for reward in REWARDS:
            section = driver.find_element(By.ID, f"task-{reward}")
            assert section.is_displayed()
            table = section.find_element(By.XPATH, "following-sibling::table[1]")
            rows = [
                [td.text for td in row.find_elements(By.TAG_NAME, "td")]
                for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
            ]
            # the full-budget ranking leads: base first, then the methods ranked
            assert [row[:2] for row in rows] == [["—", "base"], ["1", "ddpo"]] * 3, (reward, rows)  # on each model
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0 && i.width > 0])"
        )
        assert len(images) == 5 * len(REWARDS) and all(ok for _, ok in images), images
        text = driver.find_element(By.TAG_NAME, "body").text
        headings = ("Training diagnostics", "Across rewards", "Probability of improvement: judge_acc", "Runs")
        for heading in (*headings, "Failed runs"):
            assert heading in text
        failed = driver.find_element(By.ID, "failed").find_element(By.XPATH, "following-sibling::table[1]").text
        assert "ddpo-digit-s7-broken" in failed and "loss became NaN at step 3" in failed
        assert driver.execute_script("return document.body.scrollHeight") > 3000  # laid out, not blank
        assert_fits_the_window(driver)


def test_a_run_another_sweep_is_still_training_is_listed_without_a_finish(reference_sweep, tmp_path):
    shutil.copy(reference_sweep, tmp_path / "store.sqlite")
    with Store(tmp_path / "store.sqlite") as store:
        # started, not finished: its finish time is empty in the store (NaN in the frame)
        store.start_run(
            RunRecord(
                "ddpo-digit-s8-running", "smoke", "ddpo", METHODS["ddpo"].version, "", "diffusion", "digits-tiny",
                "digit", 8, "nfe", 400.0, "{}", "c-running", "abc123", "h0",
            )
        )  # fmt: skip
        write_results(store, tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    row = page[page.index("ddpo-digit-s8-running") :].split("</tr>")[0]
    assert "<td>running</td>" in row and "nan" not in row


def test_pareto_front_keeps_the_cells_no_other_cell_beats_on_both_axes():
    x, y = np.array([0.0, 1.0, 2.0, 3.0]), np.array([3.0, 2.0, 2.5, 0.0])
    assert pareto_front(x, y, True, True).tolist() == [0, 2, 3]  # (1, 2) is beaten by (2, 2.5)
    assert pareto_front(x, y, True, False).tolist() == [3]  # lower y is better: (3, 0) beats all
    assert pareto_front(np.array([1.0, 1.0]), np.array([1.0, 1.0]), True, True).tolist() == [0, 1]  # ties stay


def _synthetic_table(entries: list[tuple[str, str]], budgets=(500.0, 1000.0)) -> pd.DataFrame:
    """A leaderboard table with every figure's columns, one done row per entry and budget."""
    rng = np.random.default_rng(0)
    rows = []
    for method, model in entries:
        for budget in budgets:
            row = {"method": method, "model": model, "reward": "digit", "budget_unit": "nfe", "budget": budget}
            row |= {"status": "done", "nfe": budget, "reward_queries": budget / 4, "wall_s": budget / 100}
            for metric in ("reward", "judge_acc", "diversity", "fid"):
                mean = rng.normal()
                row |= {f"eval_unseen/{metric}/mean": mean, f"eval_unseen/{metric}/lo": mean - 0.1}
                row[f"eval_unseen/{metric}/hi"] = mean + 0.1
            rows.append(row)
    return pd.DataFrame(rows)


def _drawn_panels(figure) -> list[list[tuple[str, tuple]]]:
    """For each panel of a figure, (label, (colour, marker, dash pattern)) of every series it draws."""
    panels = []
    for ax in figure.axes:
        series = []
        for handle, label in zip(*ax.get_legend_handles_labels()):
            line = handle[0] if isinstance(handle, ErrorbarContainer) else handle
            if label != "Pareto front":
                # a custom dash pattern reads back as "--"; the pattern itself tells the styles apart
                dashes = (line.get_linestyle(), line._unscaled_dash_pattern)  # noqa: SLF001
                series.append((label, (to_hex(line.get_color()), line.get_marker(), dashes)))
        panels.append(series)
    return panels


def _drawn_series(figure) -> list[tuple[str, tuple]]:
    """(label, look) of every series of every panel of a figure."""
    return [series for panel in _drawn_panels(figure) for series in panel]


@pytest.mark.parametrize("world", ["digits", "scenes", "scale"])
def test_no_two_series_of_a_figure_share_a_style_and_a_series_keeps_its_style_across_figures(world):
    models = list(WORLDS[world].models)  # a suite runs in one world: only its models share a figure
    entries = [(method, model) for method in METHODS for model in models]
    entries += [("rocm/alpha_0.1", models[0]), ("rocm/alpha_1", models[0]), ("rocm/alpha_1", models[-1])]
    table = _synthetic_table(entries)
    drawn = list(
        figures(
            table,
            {"reward": True, "judge_acc": True, "diversity": True, "fid": False},
            "eval_unseen",
            "judge_acc",
            "judge",
        )
    )
    assert {kind for kind, _, _ in drawn} == {"compute", "overoptimization", "pareto"}
    looks: dict[str, set] = {}
    for kind, _, figure in drawn:
        series = _drawn_series(figure)
        assert len({label for label, _ in series}) == len(entries), kind  # every series is drawn
        assert len(figure.legends) == 1 and len(figure.legends[0].get_texts()) == len(entries) + (kind == "pareto")
        for panel in _drawn_panels(figure):
            styles = [style for _, style in panel]
            assert len(set(styles)) == len(styles), f"{kind}: two series of a panel share a style"
            assert len(panel) <= MAX_SERIES_PER_PANEL or len({label.split("@")[1] for label, _ in panel}) == 1, kind
        for label, style in series:
            looks.setdefault(label, set()).add(style)
    assert all(len(styles) == 1 for styles in looks.values()), "a series changed its look between figures"
    if world != "digits":
        return
    # a method's colour and marker do not depend on what else a figure shows
    alone = _drawn_series(
        next(
            figures(
                _synthetic_table([("ddpo", "flow")]),
                {"reward": True, "judge_acc": True},
                "eval_unseen",
                "judge_acc",
                "judge",
            )
        )[2]
    )
    assert {style for _, style in alone} == looks["ddpo@flow"]
