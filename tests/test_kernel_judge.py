"""The second judge of the embedded worlds (models/kernel_judge.py) and the panel it makes with the first: the kernel
machine against its closed form, both judges against held-out real digits and clean scenes, their disagreement on
a hacked cell's ambiguous slots in the direction the pixel-matching design predicts, and the tables' notes."""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.evaluate import stored_images
from bench.standings import PANEL_MARGIN, metric_order, panel_lines, panel_notes
from bench.store import Store
from models.kernel_judge import RIDGE, KernelClassifier, KernelSlotJudge
from models.shipped import weights_hash
from worlds import load_world, world_entry
from worlds.base import JUDGES_AGREE, READER_ONLY
from worlds.digits.data import load_splits
from worlds.metrics import panel_metrics
from worlds.scenes.data import compose
from worlds.scenes.rules import EMPTY

SCENES_STORE = Path(__file__).resolve().parents[1] / "results" / "scenes" / "store.sqlite"


@pytest.fixture(scope="module")
def splits():
    return load_splits()


@pytest.fixture(scope="module")
def digits():
    return load_world("digits", log=lambda *_: None)


@pytest.fixture(scope="module")
def scenes():
    return load_world("scenes", log=lambda *_: None)


def test_the_kernel_machine_is_its_closed_form(splits):
    images, labels = splits["judge"]
    model = KernelClassifier.fit(images[:60], labels[:60], 10)
    points = images[:60].flatten(1).double()
    squared = torch.cdist(points, points).square()
    assert model.gamma == pytest.approx(float(1 / squared.mean()), rel=1e-12)
    targets = torch.nn.functional.one_hot(labels[:60], 10).double() * 2 - 1
    # (K + ridge I) alpha = Y, so on its own data f = K alpha = Y - ridge alpha
    assert torch.allclose(model(images[:60]), targets - RIDGE * model.coefficients, atol=1e-9)
    one = images[60:61]
    by_hand = torch.exp(-model.gamma * (one.flatten().double() - points).square().sum(1)) @ model.coefficients
    assert torch.allclose(model(one)[0], by_hand, atol=1e-12)


def test_an_empty_kernel_machine_loads_a_fitted_one_of_any_size(splits):
    images, labels = splits["judge"]
    fitted = KernelClassifier.fit(images[:30], labels[:30], 10)
    loaded = KernelClassifier()
    loaded.load_state_dict(fitted.state_dict())
    assert weights_hash(loaded) == weights_hash(fitted) and torch.equal(loaded(images[30:40]), fitted(images[30:40]))


def test_the_shipped_second_judges_are_the_fit_of_the_judge_split_and_read_held_out_digits(splits, digits, scenes):
    images, labels = splits["judge"]
    test_images, test_labels = splits["test"]
    refit = KernelClassifier.fit(images, labels, 10)
    for shipped in (digits.kernel_judge, scenes.kernel_judge.digits):
        # the same reading (bits may differ across CPUs: the solve's rounding)
        assert torch.equal(shipped(test_images).argmax(1), refit(test_images).argmax(1))
    accuracy = float((refit(test_images).argmax(1) == test_labels).double().mean())
    assert accuracy >= 0.99  # 0.993 measured, against the CNN judge's 0.981
    # presence: half the least ink of a judge-split digit; every held-out digit holds more
    assert scenes.kernel_judge.ink_threshold == pytest.approx(float(images.double().sum((1, 2, 3)).min() / 2))


def test_the_kernel_slot_judge_reads_a_slot_by_ink_channel_and_pixels(splits):
    images, labels = splits["test"]
    judge = KernelSlotJudge.fit(*splits["judge"], patch=8, empty=EMPTY)
    scene = torch.zeros(1, 3, 16, 16)
    scene[0, 2, :8, 8:] = images[0, 0]  # top right, blue
    scene[0, 0, 8:, :8] = images[1, 0]  # bottom left, red
    scene[0, 1, :8, :8] = 0.01  # a faint haze is no digit
    read = judge.read(scene)[0]
    assert [slot[0] for slot in read] == [EMPTY, int(labels[0]), int(labels[1]), EMPTY]
    assert read[1][1] == 2 and read[2][1] == 0


def test_the_panel_metrics_of_hand_made_verdicts():
    judge = torch.tensor([True, True, False, False, False])
    second = torch.tensor([True, False, True, False, False])
    reader = torch.tensor([True, True, True, True, False])
    metrics = panel_metrics(judge, second, reader, lambda v: float(v.double().mean()))
    assert metrics == {JUDGES_AGREE: 3 / 5, READER_ONLY: 1 / 5}


def test_the_judges_agree_on_clean_scenes_to_within_their_errors(scenes):
    prompts = [p for p in scenes.prompts["eval_unseen"] for _ in range(2)]
    real = compose(prompts, *scenes.splits["test"], torch.Generator().manual_seed(3))
    metrics = scenes.sample_metrics(stored_images((real * 255).round().to(torch.uint8).numpy()), prompts)
    judge = scenes.score_images(real, prompts, 2, lambda images, prompts: torch.zeros(len(images)))["judge_score"]
    assert metrics["kernel_score"] >= 0.95 and judge >= 0.9  # 0.973 and 0.938 measured
    # each disagreement on a scene that satisfies its prompt is an error of one judge
    assert 1 - metrics[JUDGES_AGREE] <= (1 - judge) + (1 - metrics["kernel_score"]) + 1e-9
    assert metrics[JUDGES_AGREE] >= 0.95 and metrics[READER_ONLY] <= 0.04  # 0.964 and 0.018 measured


def test_on_a_hacked_cells_ambiguous_slots_the_pixel_matcher_sides_with_the_pixel_reader(scenes):
    """refl@scene-flow on ocr hacks the rewards' reader (an MLP on pixels): where the reader and the CNN judge read a
    slot's digit differently, the kernel judge (a pixel matcher too) reads it as the reader does far more often than
    as the CNN does; the issue that asked for a panel saw the same of a pixel SVM, and of the reward's MLP."""
    with Store(SCENES_STORE, read_only=True) as store:
        runs = store.runs_frame()
        run_id = runs.query("method == 'refl' and model == 'scene-flow' and reward == 'ocr' and seed == 0")["run_id"]
        last = max(m for m, split, _ in store.sample_sets(run_id.iloc[0]) if split == "eval_unseen")
        _, stored = store.samples(run_id.iloc[0], last, "eval_unseen")
    images = stored_images(stored)
    with torch.no_grad():
        cnn = scenes.judge(images)[0].argmax(2).flatten()
        reader = scenes.reader(images)[0].argmax(2).flatten()
    kernel = torch.tensor(scenes.kernel_judge.read(images))[:, :, 0].flatten()
    ambiguous = (cnn != reader) & (cnn != EMPTY) & (reader != EMPTY) & (kernel != EMPTY)
    with_reader, with_cnn = (
        int((kernel[ambiguous] == reader[ambiguous]).sum()),
        int((kernel[ambiguous] == cnn[ambiguous]).sum()),
    )
    assert ambiguous.sum() >= 100 and with_reader >= 2 * with_cnn  # 104 against 43 of 197 measured


def test_the_tables_order_the_panel_after_the_headline():
    shown = ["fid", "reward", READER_ONLY, "diversity", JUDGES_AGREE, "kernel_acc", "judge_acc"]
    assert sorted(shown, key=lambda m: metric_order(m, "judge_acc")) == [
        "judge_acc",
        "kernel_acc",
        JUDGES_AGREE,
        READER_ONLY,
        "reward",
        "diversity",
        "fid",
    ]


def _primary(headline: list[float], second: list[float]) -> pd.DataFrame:
    rows = [(seed, "judge_acc", v) for seed, v in enumerate(headline)] + [
        (seed, "kernel_acc", v) for seed, v in enumerate(second)
    ]
    return pd.DataFrame(rows, columns=["seed", "metric", "value"])


@pytest.mark.parametrize(
    "second, reader_only_low, expected",
    [
        ([0.80, 0.81, 0.80], None, []),  # within the margin
        ([0.90, 0.92, 0.95], None, ["judges differ (+0.123)"]),
        ([0.90, 0.80, 0.95], None, []),  # one seed disagrees with the others: the interval holds the margin
        ([0.80, 0.81, 0.80], PANEL_MARGIN + 0.01, ["hacking (+0.050)"]),
        ([0.80, 0.81, 0.80], PANEL_MARGIN - 0.01, []),
    ],
)
def test_the_panel_notes_name_what_lies_beyond_the_margin(second, reader_only_low, expected):
    row = {"method": "ddpo"}
    if reader_only_low is not None:
        row |= {
            "eval_unseen/reader_only/delta_vs_base/lo": reader_only_low,
            "eval_unseen/reader_only/delta_vs_base/mean": 0.05,
        }
    notes = panel_notes(row, _primary([0.80, 0.80, 0.80], second), "eval_unseen", world_entry("digits"))
    assert notes == expected


def test_the_panel_line_says_how_alike_the_judges_order_a_model_and_what_its_notes_name():
    ranked = pd.DataFrame(
        {
            "status": ["done"] * 4 + ["n/a"],
            "reward": ["digit"] * 5,
            "model": ["flow"] * 5,
            "method": ["base", "a", "b", "c", "d"],
            "note": ["", "judges differ (+0.100)", "", "hacking (+0.050)", "why"],
            "eval_unseen/judge_acc/mean": [0.5, 0.6, 0.7, 0.8, math.nan],
            "eval_unseen/kernel_acc/mean": [0.5, 0.7, 0.6, 0.8, math.nan],
        }
    )
    # of six pairs, one (a, b) is ordered otherwise: tau = (5 - 1) / 6
    assert panel_lines(ranked, "eval_unseen", "judge_acc", "kernel_acc") == [
        "digit @ flow: the two judges order its 4 cells with Kendall's tau +0.67 (judge_acc's best c, kernel_acc's c); "
        "judges differ on a (+0.100); hacking named in c (+0.050)"
    ]
    assert panel_lines(ranked, "eval_unseen", "judge_acc", "") == []
