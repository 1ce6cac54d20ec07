"""The feedback pathway (annotator, demonstrations, labels as a budget unit), Bradley-Terry and AIHF's math."""

import math
import sqlite3

import pytest
import torch

from bench.meter import Meter
from bench.store import Store
from bench.store_schema import SCHEMA_VERSION, TABLES
from methods.aihf import reward_objective
from methods.toolkit.weightings import reward_weights
from rewards.feedback import AnnotatorConfig, Feedback
from rewards.learned import bradley_terry_loss
from worlds.digits import top_demonstrations
from worlds.digits.rewards import INK_WEIGHT, DigitRewardModel, GoldReward


def test_bradley_terry_likelihood_on_hand_made_pairs():
    a, b = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 0.0])
    labels = torch.tensor([1.0, 1.0, 0.0])
    expected = -(math.log(1 / (1 + math.exp(-1))) + math.log(0.5) + math.log(1 / (1 + math.exp(2)))) / 3
    assert bradley_terry_loss(a, b, labels).item() == pytest.approx(expected, rel=1e-6)


def test_gold_reward_is_judge_log_probability_plus_ink(tiny_world):
    gold = GoldReward.from_world(tiny_world)
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    prompts = ["a handwritten two", "a handwritten five", "the digit 9"]
    log_probs = torch.log_softmax(tiny_world.judge(images), dim=1)[torch.arange(3), torch.tensor([2, 5, 9])]
    torch.testing.assert_close(gold(images, prompts), log_probs + INK_WEIGHT * images.mean(dim=(1, 2, 3)))


class Ink:
    """A hidden reward that is the image's total ink, for exact label checks."""

    def __call__(self, images, prompts):
        return images.flatten(1).sum(dim=1)


def feedback(meter, **config):
    return Feedback(
        Ink(), (torch.zeros(1, 1, 8, 8), ["a handwritten one"]), meter, DigitRewardModel, AnnotatorConfig(**config)
    )


def test_a_decisive_annotator_prefers_the_higher_hidden_reward_and_every_label_is_counted():
    meter = Meter()
    a = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    b = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = feedback(meter, temperature=1e-6).prefer(
        a, b, ["a handwritten one"] * 50, torch.Generator().manual_seed(2)
    )
    assert torch.equal(labels, (Ink()(a, None) > Ink()(b, None)).float())
    assert meter.usage.labels == 50 and meter.usage.reward_queries == 0


def test_label_noise_flips_that_share_of_labels():
    a, b = torch.ones(4000, 1, 8, 8), torch.zeros(4000, 1, 8, 8)
    labels = feedback(Meter(), temperature=1e-6, label_noise=0.2).prefer(
        a, b, ["a handwritten one"] * 4000, torch.Generator().manual_seed(0)
    )
    assert abs((1 - labels.mean()).item() - 0.2) < 0.02


def test_bradley_terry_temperature_sets_the_label_rate():
    a, b = torch.full((4000, 1, 8, 8), 1 / 64), torch.zeros(4000, 1, 8, 8)  # hidden rewards 1 and 0
    labels = feedback(Meter(), temperature=2.0).prefer(
        a, b, ["a handwritten one"] * 4000, torch.Generator().manual_seed(0)
    )
    assert abs(labels.mean().item() - 1 / (1 + math.exp(-0.5))) < 0.02


def test_demonstrations_are_each_digits_best_images_with_prompts_naming_it():
    images = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 8, 8) / 8
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    prompts = ["a handwritten zero", "the digit 0", "a handwritten one"]
    demos, demo_prompts = top_demonstrations(images, labels, prompts, Ink(), fraction=0.5)
    assert torch.equal(demos[:, 0, 0, 0] * 8, torch.tensor([3.0, 2.0, 7.0, 6.0]))
    assert demo_prompts[2:] == ["a handwritten one"] * 2 and set(demo_prompts[:2]) <= set(prompts[:2])


def test_annotator_config_rejects_bad_values():
    for bad in ({"temperature": 0}, {"label_noise": 0.5}, {"demonstration_fraction": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AnnotatorConfig(**bad)


def test_aihf_reward_objective_known_values():
    demo, samples = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0])
    win, lose = torch.tensor([1.0]), torch.tensor([0.0])
    irl = (1.0 - 2.0) + 0.1 * (5.0 + 2.0)
    preference = -math.log(1 / (1 + math.exp(-1)))
    value = reward_objective(demo, samples, win, lose, demo_weight=0.25, l2=0.1).item()
    assert value == pytest.approx(0.25 * irl + 0.75 * preference, rel=1e-6)


def test_tilted_weights_are_a_softmax_of_standardized_scores():
    assert torch.equal(reward_weights(torch.full((4,), 3.0), "exp", tau=1.0), torch.full((4,), 0.25))
    weights = reward_weights(torch.tensor([0.0, 10.0]), "exp", tau=1.0)  # standardized: -1, 1
    torch.testing.assert_close(weights, torch.softmax(torch.tensor([-1.0, 1.0]), dim=0))


def test_a_schema_2_store_is_migrated_in_place_keeping_its_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    with Store(path):
        pass
    conn = sqlite3.connect(path)
    # rebuild the milestones table as schema 2 had it, with a row (metrics and samples, which reference it, were as now)
    conn.executescript("""
        DROP TABLE diagnostics; DROP TABLE leases; DROP TABLE samples; DROP TABLE metrics; DROP TABLE milestones;
        CREATE TABLE milestones (run_id TEXT NOT NULL, milestone INTEGER NOT NULL, budget REAL NOT NULL,
            nfe REAL NOT NULL, reward_queries REAL NOT NULL, samples REAL NOT NULL, wall_s REAL NOT NULL,
            PRIMARY KEY (run_id, milestone));
        INSERT INTO milestones VALUES ('r', 0, 1.0, 10.0, 2.0, 3.0, 4.0);
        PRAGMA user_version = 2;
    """)
    for statement in TABLES:
        if statement.split()[2] in ("metrics", "samples"):
            conn.execute(statement)
    conn.commit()
    conn.close()
    with Store(path):
        pass
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT nfe, labels FROM milestones").fetchall() == [(10.0, 0.0)]
    assert conn.execute("SELECT count(*) FROM leases").fetchone() == (0,)  # and 3 -> 4 added the leases
    assert conn.execute("SELECT count(*) FROM diagnostics").fetchone() == (0,)  # and 4 -> 5 the diagnostics
