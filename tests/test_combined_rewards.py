"""A run's reward made of several (rewards/combined.py): the spec's one spelling, the weighted sum and its terms, their
metering, and a run that records each term beside the sum. The command line's one-line refusals are
tests/test_harness.py's."""

import dataclasses

import pytest
import torch

from bench.cli import main
from bench.experiments import SUITES
from bench.experiments.suite import validate
from bench.meter import Meter, MeteredReward
from bench.names import canonical_reward
from bench.reward_spec import reward_class
from bench.store import Store
from rewards.combined import Combination, CombinedReward, reward_components, reward_weights
from worlds import REWARDS


@pytest.mark.parametrize(
    "spec, spelt",
    [
        ("digit", "digit"),
        ("1*digit", "digit"),
        (" digit + 0.50*compress", "digit+0.5*compress"),
        ("2e-1*compress+gold", "0.2*compress+gold"),
    ],
)
def test_a_spec_has_one_spelling(spec, spelt):
    assert canonical_reward(spec, REWARDS) == spelt


def test_one_reward_is_its_class_and_several_a_combination_differentiable_only_if_every_term_is():
    assert reward_class("1*digit") is REWARDS["digit"]
    both = reward_class("digit+0.5*gold")
    assert isinstance(both, Combination) and both.differentiable
    assert [(w, name) for w, name, _ in both.terms] == [(1.0, "digit"), (0.5, "gold")]
    assert not reward_class("digit+compress").differentiable  # compress has no gradient


def test_the_combined_reward_is_the_weighted_sum_of_its_terms_each_queried_once(tiny_world):
    combined = reward_class("digit+0.5*compress").from_world(tiny_world)
    assert isinstance(combined, CombinedReward) and combined.name == "digit+0.5*compress"
    images, prompts = torch.rand(6, 1, 8, 8), tiny_world.prompts["train"][:6]
    digit = REWARDS["digit"].from_world(tiny_world)(images, prompts)
    compress = REWARDS["compress"].from_world(tiny_world)(images, prompts)
    assert torch.equal(combined(images, prompts), torch.stack([1.0 * digit, 0.5 * compress]).sum(dim=0))
    versions = [REWARDS[name].from_world(tiny_world).version for name in ("digit", "compress")]
    assert combined.version == f"digit:{versions[0]}+compress:{versions[1]}"
    meter = Meter()
    terms = MeteredReward(combined, meter).components(images, prompts)
    assert torch.equal(terms["digit"], digit) and torch.equal(terms["compress"], compress)
    assert meter.usage.reward_queries == 6  # one query per image scored by the whole spec
    assert reward_weights(MeteredReward(combined, meter)) == {"digit": 1.0, "compress": 0.5}
    # one reward is a combination of one term, under its name
    plain = MeteredReward(REWARDS["digit"].from_world(tiny_world), meter)
    assert reward_weights(plain) == {"digit": 1.0}
    assert torch.equal(reward_components(plain, images, prompts)["digit"], digit)
    assert meter.usage.reward_queries == 12


def test_a_suite_written_in_code_must_spell_its_specs_as_run_ids_name_them():
    suite = dataclasses.replace(SUITES["default"](), methods=("ddpo",), rewards=("digit+0.50*compress",))
    with pytest.raises(ValueError, match=r"reward spec 'digit\+0.50\*compress' is spelt 'digit\+0.5\*compress'"):
        validate(suite)
    with pytest.raises(ValueError, match="a suite needs at least one reward; world 'digits' offers: digit"):
        validate(dataclasses.replace(suite, rewards=()))


def test_a_run_on_a_combined_reward_records_each_term_beside_the_sum(tmp_path, capsys):
    store = tmp_path / "smoke" / "store.sqlite"
    argv = ["run", "--suite", "smoke", "--method", "gdpo", "--reward", "digit+0.5*compress"]
    assert main([*argv, "--seeds", "1", "--store", str(store)]) == 0
    assert "1 runs, 1 done, 0 n/a, 0 failed" in capsys.readouterr().out
    with Store(store, read_only=True) as read:
        metrics = read.results_frame()
    (run_id,) = set(metrics["run_id"])
    assert "-digit+0.5xcompress-s0-" in run_id  # no * in the file names a run id gives
    final = metrics[metrics["budget"] == metrics["budget"].max()].set_index(["split", "metric"])["value"]
    for split in ("eval_seen", "eval_unseen"):
        weighted = final[(split, "reward_digit")] + 0.5 * final[(split, "reward_compress")]
        assert final[(split, "reward")] == pytest.approx(weighted, rel=1e-6)
    board = (tmp_path / "smoke" / "leaderboard.md").read_text()
    assert "## Reward: digit+0.5*compress" in board and "reward_digit ↑" in board and "reward_compress ↑" in board
