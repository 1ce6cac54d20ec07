import math
import os
import shutil
import signal

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.cell import work_dir
from bench.formats import human
from bench.leaderboard import GRID_COLUMNS, grid_prompts, write_leaderboard
from bench.stats import bootstrap_ci, paired_difference_ci
from bench.store import Store
from bench.store_schema import RunRecord
from bench.sweep import results_dir
from models.io import STAGING, replaced_together
from worlds import world_entry
from worlds.scenes.rules import FAMILIES

# -- stats ------------------------------------------------------------------------------------


def test_bootstrap_ci_constant_values_are_a_point():
    assert bootstrap_ci([0.25]) == (0.25, 0.25, 0.25)
    assert bootstrap_ci([0.7, 0.7, 0.7]) == (0.7, 0.7, 0.7)


def test_bootstrap_ci_symmetric_sample():
    mean, lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    assert 1.0 <= lo < 3.0 < hi <= 5.0
    assert abs((mean - lo) - (hi - mean)) < 0.1  # symmetric data, symmetric interval


def test_bootstrap_ci_is_deterministic_given_the_seed():
    values = np.random.default_rng(0).normal(size=20)  # enough distinct resample means to differ by seed
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_bootstrap_ci_narrows_with_more_seeds():
    _, lo_few, hi_few = bootstrap_ci([0.0, 1.0] * 2)
    _, lo_many, hi_many = bootstrap_ci([0.0, 1.0] * 20)
    assert hi_many - lo_many < (hi_few - lo_few) / 2


def test_paired_difference_ci():
    base = [0.3, 0.9, 0.5]
    assert paired_difference_ci([0.5, 1.1, 0.7], base) == pytest.approx((0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])


# -- leaderboard ------------------------------------------------------------------------------

GAIN = {"base": 0.0, "ddpo": 0.1, "raft": 0.05}
BUDGETS = (25_000.0, 50_000.0)
N_SAMPLES = 30
SAMPLES_PER_PROMPT = 3


def judge_acc(method, milestone, seed):
    return 0.5 + GAIN[method] * (milestone + 1) + 0.01 * seed


def add_run(
    store,
    method,
    reward,
    seed,
    milestones,
    status="done",
    reason=None,
    version=None,
    model="diffusion",
    variant="",
    shift=0.0,
):
    run_id = f"{method}-{variant}-{model}-{reward}-{seed}"
    store.start_run(
        RunRecord(
            run_id=run_id,
            suite="tiny",
            method=method,
            method_version=version or f"{method}-v1",
            variant=variant,
            model=model,
            world="digits",
            reward=reward,
            seed=seed,
            budget_unit="nfe",
            budget=BUDGETS[-1],
            config_json="{}",
            config_hash=f"c-{method}",
            git_sha="abc123",
            base_model_hash="h0",
        )
    )
    channels = 1 if reward == "digit" else 3
    for m, budget in milestones:
        acc = judge_acc(method, m, seed) + shift
        rng = np.random.default_rng(seed)
        # never pure white, so the grid test can tell images from the white padding
        imgs = rng.integers(0, 200, size=(N_SAMPLES, channels, 8, 8), dtype=np.uint8)
        store.record_milestone(
            run_id,
            m,
            budget,
            used={
                "nfe": budget + seed,
                "reward_queries": budget / 100,
                "samples": 64.0 * (m + 1),
                "labels": 0.0,
                "wall_s": 2.0,
            },
            metrics=[
                ("eval_unseen", "judge_acc", acc, True),
                ("eval_unseen", "fid", 50 - 100 * (acc - 0.5), False),
                ("eval_seen", "judge_acc", acc + 0.05, True),
            ],
            samples={"eval_unseen": ([f"p{i // SAMPLES_PER_PROMPT}" for i in range(N_SAMPLES)], imgs)},
        )
    store.finish_run(run_id, status, reason)


# raft's cell on compress, which it cannot run
RAFT_ON_COMPRESS = RunRecord(
    "raft-compress", "tiny", "raft", "raft-v1", "", "diffusion", "digits", "compress", 0, "nfe", BUDGETS[-1], "{}",
    "c-raft", "abc123", "h0",
)  # fmt: skip


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store.sqlite") as store:
        both = list(enumerate(BUDGETS))
        for seed in range(3):
            add_run(store, "base", "digit", seed, both)
            add_run(store, "raft", "digit", seed, both)
            add_run(store, "ddpo", "compress", seed, both)
        for seed in range(2):
            add_run(store, "ddpo", "digit", seed, both)
        add_run(store, "ddpo", "digit", 2, both[:1], status="failed", reason="loss became NaN at step 17")
        # base does not train: on compress it was evaluated once, one seed, at budget 0
        add_run(store, "base", "compress", 0, [(0, 0.0)])
        store.record_not_applicable(RAFT_ON_COMPRESS, "needs a differentiable reward")
        yield store


def test_writes_all_files_atomically(store, tmp_path):
    out = tmp_path / "board"
    paths = write_leaderboard(store, out)
    assert sorted(p.name for p in paths) == [
        "leaderboard.csv",
        "leaderboard.md",
        "samples_compress.png",
        "samples_digit.png",
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no temp files left


def test_csv_numbers(store, tmp_path):
    write_leaderboard(store, tmp_path)
    table = pd.read_csv(tmp_path / "leaderboard.csv", keep_default_na=False, na_values=[""])
    cell = table.set_index(["method", "reward", "budget"])

    ddpo = cell.loc[("ddpo", "digit", 50_000.0)]
    assert ddpo["n_seeds"] == 2 and ddpo["failed"] == 1 and ddpo["method_version"] == "ddpo-v1"
    assert ddpo["eval_unseen/judge_acc/mean"] == pytest.approx((judge_acc("ddpo", 1, 0) + judge_acc("ddpo", 1, 1)) / 2)
    assert ddpo["eval_seen/judge_acc/mean"] == pytest.approx(0.705 + 0.05)
    assert ddpo["nfe"] == pytest.approx(50_000.5) and ddpo["reward_queries"] == pytest.approx(500)
    # paired by seed with base: every pair differs by exactly 0.2, so the interval is a point
    for stat in ("mean", "lo", "hi"):
        assert ddpo[f"eval_unseen/judge_acc/delta_vs_base/{stat}"] == pytest.approx(0.2)
    assert ddpo["eval_unseen/judge_acc/delta_vs_base/n"] == 2
    assert ddpo["eval_unseen/fid/delta_vs_base/mean"] == pytest.approx(-20.0)

    raft = cell.loc[("raft", "digit", 25_000.0)]
    assert raft["n_seeds"] == 3 and raft["failed"] == 0
    mean, lo, hi = (raft[f"eval_unseen/judge_acc/{s}"] for s in ("mean", "lo", "hi"))
    assert mean == pytest.approx(0.56) and lo < mean < hi
    # three seeds are too few to cut a quarter from each end: the IQM is the mean, with the same interval
    assert [raft[f"eval_unseen/judge_acc/iqm{s}"] for s in ("", "_lo", "_hi")] == pytest.approx([mean, lo, hi])
    assert raft["eval_unseen/judge_acc/delta_vs_base/mean"] == pytest.approx(0.05)

    # base on compress: one seed at one budget, so every ddpo seed pairs with that value
    ddpo_c = cell.loc[("ddpo", "compress", 50_000.0)]
    assert ddpo_c["eval_unseen/judge_acc/delta_vs_base/mean"] == pytest.approx(0.21)
    assert ddpo_c["eval_unseen/judge_acc/delta_vs_base/lo"] >= 0.2 - 1e-9
    assert ddpo_c["eval_unseen/judge_acc/delta_vs_base/hi"] <= 0.22 + 1e-9
    assert ddpo_c["eval_unseen/judge_acc/delta_vs_base/n"] == 3
    assert math.isnan(cell.loc[("base", "digit", 25_000.0), "eval_unseen/judge_acc/delta_vs_base/mean"])

    na = table[(table["method"] == "raft") & (table["reward"] == "compress")]
    assert len(na) == 1 and na["n_seeds"].item() == 0 and math.isnan(na["budget"].item())
    assert "needs a differentiable reward" in na["note"].item()
    assert len(table) == 2 * 3 + 2 * 1 + 1 + 1  # digit: 3 methods x 2 budgets; compress: ddpo x 2, base x 1, n/a


def test_markdown(store, tmp_path):
    write_leaderboard(store, tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    assert md.startswith("# Leaderboard: tiny")
    assert "## Reward: digit" in md and "## Reward: compress" in md
    for text in (
        "judge_acc ↑",
        "fid ↓",
        "Δ judge_acc vs base",
        "judge_acc (eval_seen) ↑",
        "| ddpo | diffusion | ddpo-v1 | nfe 50k | 2 | 0.705 [",
        "| +0.200 |",  # every seed differs by 0.2: a point, no interval
        "needs a differentiable reward",
        "## Failed runs",
        "loss became NaN at step 17",
    ):
        assert text in md, text
    for method in GAIN:
        assert f"| {method} |" in md
    na_row = next(line for line in md.splitlines() if line.startswith("| raft | diffusion | raft-v1 | —"))
    assert na_row.count("| n/a ") == 4  # judge_acc, fid, delta, eval_seen judge_acc
    ranking, every_budget = md.split("## Reward: digit")[1].split("## Failed runs")[0].split("### digit: every budget")
    # at the full budget (50k): base, then ddpo (judge_acc 0.705) before raft (0.66)
    rows = [line.split(" | ") for line in ranking.splitlines() if line.startswith("| ") and "---" not in line]
    assert [(row[0].strip("| "), row[1]) for row in rows[1:]] == [("—", "base"), ("1", "ddpo"), ("2", "raft")]
    assert rows[2][4:6] == ["0.705 [0.700, 0.710]", "+0.200"] and "| nfe" not in ranking  # no budget column
    order = [line.split(" | ")[0:4] for line in every_budget.splitlines() if line.startswith("| ") and "nfe" in line]
    assert [(row[0].strip("| "), row[3]) for row in order] == [
        (method, budget) for budget in ("nfe 25k", "nfe 50k") for method in ("base", "ddpo", "raft")
    ]  # budget, then base first, then the methods by name


def test_sample_grids_have_a_row_per_method_and_a_column_per_prompt(store, tmp_path):
    write_leaderboard(store, tmp_path)
    for reward, n_methods in (("digit", 3), ("compress", 2)):
        with Image.open(tmp_path / f"samples_{reward}.png") as image:
            pixels = np.asarray(image.convert("RGB"))
        height, width, _ = pixels.shape
        # the rightmost column of cells holds only images and white padding: find the rows' bands of images
        inked = (pixels[:, width - 8] != 255).any(axis=1)
        starts = np.flatnonzero(inked[1:] & ~inked[:-1]) + 1
        assert len(starts) == n_methods and inked.sum() == n_methods * 32  # 8 px images upscaled to 32
        # along the first row: one cell per distinct prompt (N_SAMPLES / SAMPLES_PER_PROMPT of them), in prompt order,
        # each the prompt's first sample, under a header that names it
        band = pixels[starts[0] : starts[0] + 32]
        cell_columns = (band != 255).any(axis=(0, 2))
        lefts = np.flatnonzero(cell_columns[1:] & ~cell_columns[:-1]) + 1
        lefts = lefts[-N_SAMPLES // SAMPLES_PER_PROMPT :]  # the label's text comes first
        shape = (N_SAMPLES, 1 if reward == "digit" else 3, 8, 8)
        seed0 = np.random.default_rng(0).integers(0, 200, size=shape, dtype=np.uint8)  # as add_run draws them
        for k, left in enumerate(lefts):
            cell = band[:, left : left + 32, 0]  # seed 0 (every first row is), red channel
            expected = seed0[k * SAMPLES_PER_PROMPT, 0].repeat(4, axis=0).repeat(4, axis=1)
            assert np.array_equal(cell, expected), f"column {k} is not the first sample of prompt p{k}"
            assert (pixels[: starts[0], left : left + 32] != 255).any(), f"column {k} has no header"


def test_a_sample_grid_shows_every_family_of_the_split_and_a_world_without_families_its_first_prompts():
    scenes = world_entry("scenes")
    prompts = [f"{n} {'red' if n % 2 else 'blue'} things" for n in range(40)]  # two families of 20, interleaved
    halves = grid_prompts(prompts, lambda prompt: "red" if "red" in prompt else "blue")
    assert len(halves) == GRID_COLUMNS and sum("red" in p for p in halves) == GRID_COLUMNS // 2
    assert grid_prompts(prompts, world_entry("digits").prompt_group) == prompts[:GRID_COLUMNS]
    # as the scenes splits list them, family by family: here 20 single digits before one prompt of each other family
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    blocks = [*(f"a {d}" for d in range(10)), *(f"a {word}" for word in words)]
    blocks += ["a 3 and a 5", "three 7s", "a red 4", "a 2 above a 9", "a red 3 and a blue 8", "the number 4071"]
    assert {scenes.prompt_group(p) for p in blocks[:GRID_COLUMNS]} == {"single"}
    chosen = grid_prompts(blocks, scenes.prompt_group)
    assert len(chosen) == GRID_COLUMNS and {scenes.prompt_group(p) for p in chosen} == set(FAMILIES)
    assert chosen == [p for p in blocks if p in chosen]  # in the split's order


def test_only_the_newest_version_of_a_method_is_ranked(store, tmp_path):
    for seed in range(3):
        add_run(store, "raft", "digit", seed + 10, list(enumerate(BUDGETS)), version="raft-v2")
    table = pd.read_csv(write_leaderboard(store, tmp_path / "board")[0], keep_default_na=False)
    raft = table[(table["method"] == "raft") & (table["reward"] == "digit")]
    assert set(raft["method_version"]) == {"raft-v2"} and set(raft["n_seeds"]) == {3}


def test_the_newest_version_is_the_one_run_last_whatever_order_a_copy_stored_runs_in(store, tmp_path):
    for seed in range(3):
        add_run(store, "raft", "digit", seed + 10, list(enumerate(BUDGETS)), version="raft-v2")
    with store._write() as conn:  # as a layer or a publish may copy them: the new version's rows first
        conn.execute("UPDATE runs SET started = '2000-01-01T00:00:00+00:00' WHERE method_version = 'raft-v1'")
        conn.execute("UPDATE runs SET started = '2000-01-02T00:00:00+00:00' WHERE method_version = 'raft-v2'")
        conn.execute("UPDATE runs SET rowid = -rowid WHERE method_version = 'raft-v2'")
    assert store.runs_frame().query("method == 'raft'")["method_version"].iloc[-1] == "raft-v2"
    table = pd.read_csv(write_leaderboard(store, tmp_path / "board")[0], keep_default_na=False)
    assert set(table.loc[table["method"] == "raft", "method_version"]) == {"raft-v2"}


def test_a_store_without_results_still_lists_its_cells(tmp_path):
    with Store(tmp_path / "store.sqlite") as store:
        add_run(store, "ddpo", "digit", 0, [], status="failed", reason="out of memory")
        add_run(store, "ddpo", "digit", 1, [], status="failed")
        store.record_not_applicable(RAFT_ON_COMPRESS, "needs a differentiable reward")
        paths = write_leaderboard(store, tmp_path / "board")
    assert sorted(p.name for p in paths) == ["leaderboard.csv", "leaderboard.md"]  # no samples, no grid
    table = pd.read_csv(tmp_path / "board" / "leaderboard.csv", keep_default_na=False)  # keep "n/a"
    assert table[["method", "status", "failed"]].values.tolist() == [["raft", "n/a", 0], ["ddpo", "failed", 2]]
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "out of memory" in md and "no reason given" in md and "2 failed, none done" in md


def test_refuses_an_unknown_primary_split(store, tmp_path):
    with pytest.raises(ValueError, match="eval_seen, eval_unseen"):
        write_leaderboard(store, tmp_path, primary_split="test")


def test_human_numbers():
    assert [human(x) for x in (50_000, 1_234_567, 35_000, 999_999, 12.345, 0.5)] == [
        "50k",
        "1.23M",
        "35k",
        "1M",
        "12.3",
        "0.5",
    ]


def test_models_and_variants_are_rows_of_their_own_paired_with_the_base_of_their_model(tmp_path):
    with Store(tmp_path / "store.sqlite") as store:
        both = list(enumerate(BUDGETS))
        for seed in range(2):
            add_run(store, "base", "digit", seed, both)
            add_run(store, "base", "digit", seed, both, model="consistency", shift=0.2)
            add_run(store, "ddpo", "digit", seed, both, model="consistency", shift=0.2)
            add_run(store, "ddpo", "digit", seed, both, model="consistency", variant="fast", shift=0.3)
        write_leaderboard(store, tmp_path)
    table = pd.read_csv(tmp_path / "leaderboard.csv")
    final = table[table["budget"] == BUDGETS[-1]].set_index(["method", "model"])
    delta = "eval_unseen/judge_acc/delta_vs_base/mean"
    # against the consistency base (+0.2 as well), not the diffusion one
    assert final.loc[("ddpo", "consistency"), delta] == pytest.approx(0.2)
    assert final.loc[("ddpo/fast", "consistency"), delta] == pytest.approx(0.3)
    assert math.isnan(final.loc[("base", "consistency"), delta])


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _killed_inside(folder, moment):
    """Forks a writer of `folder` (replaced_together) that SIGKILLs itself at `moment`: 'writing' (one new file
    staged) or 'moving' (staging complete, one file moved into place)."""
    child = os.fork()
    if child == 0:  # pragma: no cover - dies by its own hand
        if moment == "moving":
            real = os.replace

            def replace_then_die(source, target):
                real(source, target)
                os.kill(os.getpid(), signal.SIGKILL)

            os.replace = replace_then_die
        with replaced_together(folder) as staging:
            (staging / "a.csv").write_text("new a")
            (staging / "b.csv").write_text("new b")
            if moment == "writing":
                os.kill(os.getpid(), signal.SIGKILL)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.parametrize("moment, settled", [("writing", {"a.csv": b"old a", "b.csv": b"old b"}), ("moving", None)])
def test_a_results_folder_is_rewritten_all_or_nothing_even_when_its_writer_is_killed(tmp_path, moment, settled):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "a.csv").write_text("old a")
    (folder / "b.csv").write_text("old b")
    _killed_inside(folder, moment)
    # the next writer first settles what the killed one left: discarded while writing, finished while moving
    new = {"a.csv": b"new a", "b.csv": b"new b"}
    with replaced_together(folder) as staging:
        assert {p.name for p in folder.iterdir()} == {"a.csv", "b.csv", STAGING}
        assert {n: (folder / n).read_bytes() for n in ("a.csv", "b.csv")} == (settled or new)
        assert not list(staging.iterdir())
        (staging / "c.csv").write_text("c")
    assert {p.name for p in folder.iterdir()} == {"a.csv", "b.csv", "c.csv"}  # nothing temporary left


def test_a_failed_rewrite_leaves_the_folder_as_it_was(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "a.csv").write_text("old a")
    with pytest.raises(RuntimeError), replaced_together(folder) as staging:
        (staging / "a.csv").write_text("new a")
        raise RuntimeError("a plot failed")
    assert _files(folder) == {"a.csv": b"old a"}


def test_two_stores_in_one_folder_write_their_tables_to_folders_of_their_own(store, tmp_path, capsys):
    from bench.cli import main

    store.close()
    shutil.copy(tmp_path / "store.sqlite", tmp_path / "other.sqlite")
    assert results_dir(tmp_path / "store.sqlite") == tmp_path
    assert results_dir(tmp_path / "other.sqlite") == tmp_path / "other"
    assert results_dir(tmp_path / "other") == tmp_path / "other-results"  # never the store itself
    # two stores of one name and two suffixes never share their tables, nor their checkpoints
    assert results_dir(tmp_path / "other.db") == tmp_path / "other.db-results"
    assert len({work_dir(tmp_path / name) for name in ("other.sqlite", "other.db", "other")}) == 3
    assert main(["leaderboard", "--store", str(tmp_path / "other.sqlite")]) == 0
    assert (tmp_path / "other" / "leaderboard.md").exists() and not (tmp_path / "leaderboard.md").exists()
    assert main(["leaderboard", "--store", str(tmp_path / "other.sqlite"), "--out", str(tmp_path / "mine")]) == 0
    assert _files(tmp_path / "mine") == _files(tmp_path / "other")
