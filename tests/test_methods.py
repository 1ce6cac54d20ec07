"""The contract every registered method keeps, plus each method's own math."""

import dataclasses
import functools
import weakref

import pytest
import torch

from bench.budget import Budget
from bench.diagnostics import HARNESS_NAMES
from bench.meter import Meter
from bench.reward_spec import reward_class
from bench.runner import load_checkpoint
from bench.trainers import build_trainer
from methods import METHODS
from methods.best_of_n import candidates_for_budget
from methods.toolkit.policy_gradient import (
    FirstPass,
    PolicyGradientOptions,
    RatioClip,
    group_normalized_advantages,
    ppo_chain_backward,
    ppo_clipped_loss,
    ratio_moments,
    zero_std_groups,
)
from models.io import atomic_torch_save
from models.policy import NoiseTape, Trajectory
from models.sampler import Sampler
from rewards.feedback import Feedback
from rewards.ranking import top_k_per_group
from worlds import REWARDS, WORLDS, model_family
from worlds.digits.build import GENERATORS

# every (method, model) pairing the digits world offers (the scale world's: tests/test_scale_world.py)
MODELS, WORLD_REWARDS = tuple(WORLDS["digits"].models), WORLDS["digits"].rewards
PAIRS = [(name, model) for name in METHODS for model in MODELS if model_family(model) in METHODS[name].families]
TRAINING = [pair for pair in PAIRS if METHODS[pair[0]].trains]
INFERENCE = [pair for pair in PAIRS if not METHODS[pair[0]].trains]
CONTRACT_REWARDS = {
    name: [r for r in WORLD_REWARDS if METHODS[name].incompatibility(REWARDS[r], "nfe") is None] for name in METHODS
}


def make(world, name, model="diffusion", seed=0, reward="digit", **overrides):
    meter = Meter()
    method = METHODS[name]
    config = dataclasses.replace(method.Config(), **{**method.small_config, **overrides})
    raw_reward = reward_class(reward).from_world(world)
    policy = world.make_policy(model)
    annotator = functools.partial(Feedback.from_world, world, raw_reward, base_policy=policy)
    trainer = build_trainer(name, policy, raw_reward, world.prompts["train"], config, seed, meter, annotator)
    return trainer, meter


def flat_parameters(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.policy.trainable_parameters()])


def test_every_method_is_in_exactly_one_contract_on_every_model_it_supports():
    assert sorted({name for name, _ in TRAINING + INFERENCE}) == sorted(METHODS) and TRAINING and INFERENCE
    for name, method in METHODS.items():
        assert method.families and set(method.families) <= {model_family(m) for m in MODELS}, name


@pytest.mark.parametrize("name, model", TRAINING)
@pytest.mark.parametrize("reward", WORLD_REWARDS)
def test_step_is_finite_and_changes_parameters(tiny_world, name, model, reward):
    if reward not in CONTRACT_REWARDS[name]:
        pytest.skip(f"{name} refuses {reward}: {METHODS[name].incompatibility(REWARDS[reward], 'nfe')}")
    trainer, _ = make(tiny_world, name, model, reward=reward)
    before = flat_parameters(trainer)
    stats = trainer.step()
    assert stats and all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    # where every sample gets the same reward, a method that learns from reward differences must not move
    moved = not torch.equal(before, flat_parameters(trainer))
    assert moved != ((name, model, reward) in NO_REWARD_SPREAD)
    # the run's diagnostics: the harness's names stay its own, and a step that moved left its gradients' norms
    assert not set(stats) & set(HARNESS_NAMES) and (trainer.gradient_norms or not moved)


# The tiny world's 60-step flow model draws noise, whose PNGs all take the same 140 bytes; the methods that learn from
# reward differences alone are those on the policy-gradient options (advantages within a group), dpo (its pairs),
# awm, dgpo and elbo (group advantages on the flow-matching loss or the ELBO).
RELATIVE = {name for name, method in METHODS.items() if issubclass(method.Config, PolicyGradientOptions)} | {
    "dpo",
    "awm",
    "dgpo",
    "elbo",
}
NO_REWARD_SPREAD = {(name, "flow", "compress") for name in RELATIVE}


@pytest.mark.parametrize("name, model", TRAINING)
def test_same_seed_same_numbers_other_seed_other_numbers(tiny_world, name, model):
    runs = [make(tiny_world, name, model, seed=s)[0] for s in (0, 0, 1)]
    stats = [(t.step(), t.step()) for t in runs]
    assert stats[0] == stats[1] and stats[0] != stats[2]
    assert torch.equal(flat_parameters(runs[0]), flat_parameters(runs[1]))


@pytest.mark.parametrize("name, model", TRAINING)
def test_state_round_trip_continues_identically(tiny_world, name, model, tmp_path):
    original, _ = make(tiny_world, name, model)
    original.step()
    # through a file, as a resumed run reads it: tensors and plain containers only
    atomic_torch_save(original.state_dict(), tmp_path / "state.pt")
    state = load_checkpoint(tmp_path / "state.pt")
    restored, _ = make(tiny_world, name, model, seed=99)
    restored.load_state_dict(state)
    assert original.step() == restored.step()
    assert torch.equal(flat_parameters(original), flat_parameters(restored))


@pytest.mark.parametrize("name, model", TRAINING)
def test_meter_counts_exactly_the_work_done(tiny_world, name, model):
    trainer, meter = make(tiny_world, name, model)
    trainer.step()
    usage = meter.accounts["train"].as_dict()
    expected = {
        "reward_queries": 0,
        "samples": 0,
        "labels": 0,
        **METHODS[name].step_usage(trainer.config, GENERATORS[model][1]),
    }
    assert {k: usage[k] for k in ("nfe", "reward_queries", "samples", "labels")} == expected
    assert len(meter.take_scores()) == usage["reward_queries"]  # every query's scores reach the diagnostics


@pytest.mark.parametrize("name, model", TRAINING)
def test_meter_counts_a_later_step_as_its_iteration_usage(tiny_world, name, model):
    trainer, meter = make(tiny_world, name, model)
    trainer.step()
    first = meter.accounts["train"].as_dict()
    trainer.step()
    second = {k: v - first[k] for k, v in meter.accounts["train"].as_dict().items()}
    expected = {
        "nfe": 0,
        "reward_queries": 0,
        "samples": 0,
        "labels": 0,
        **METHODS[name].iteration_usage(trainer.config, GENERATORS[model][1]),
    }
    assert {k: second[k] for k in expected} == expected


def test_ddpo_kl_penalty_pays_for_its_reference_passes(tiny_world):
    trainer, meter = make(tiny_world, "ddpo", kl_coef=0.1)
    stats = trainer.step()
    assert (
        stats["kl"] >= 0
        and meter.accounts["train"].nfe == METHODS["ddpo"].step_usage(trainer.config, GENERATORS["diffusion"][1])["nfe"]
    )


@pytest.mark.parametrize("name, model", INFERENCE)
def test_generate_is_deterministic_images_in_range(tiny_world, name, model):
    trainer, _ = make(tiny_world, name, model)
    prompts = tiny_world.prompts["eval_unseen"][:6]
    images = [trainer.generate(prompts, 3, torch.Generator().manual_seed(5), Budget("nfe", 100)) for _ in range(2)]
    assert images[0].shape == (6, 1, 8, 8) and torch.equal(images[0], images[1])
    assert images[0].min() >= 0 and images[0].max() <= 1


def test_best_of_n_with_one_candidate_is_base_and_more_candidates_never_lower_the_reward(tiny_world):
    prompts = tiny_world.prompts["eval_unseen"][:8]
    base, _ = make(tiny_world, "base")
    best, meter = make(tiny_world, "best_of_n")
    reward = REWARDS["digit"].from_world(tiny_world)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    base_images = base.generate(prompts, 3, g(), Budget("nfe", 1))
    assert torch.equal(best.generate(prompts, 3, g(), Budget("nfe", 8 * 3)), base_images)
    best_images = best.generate(prompts, 3, g(), Budget("nfe", 5 * 8 * 3))
    assert (reward(best_images, prompts) >= reward(base_images, prompts)).all()
    assert meter.accounts["train"].reward_queries == 8 + 5 * 8
    other_seed, _ = make(tiny_world, "best_of_n", seed=1)
    assert not torch.equal(other_seed.generate(prompts, 3, g(), Budget("nfe", 5 * 8 * 3)), best_images)


@pytest.mark.parametrize(
    "unit, amount, n", [("nfe", 100 * 20 * 7.5, 7), ("reward_queries", 350, 3), ("samples", 50, 1), ("nfe", 10**9, 64)]
)
def test_best_of_n_candidates_for_budget(unit, amount, n):
    assert candidates_for_budget(unit, amount, prompts=100, steps=20, cap=64) == n


def test_best_of_n_refuses_a_wall_clock_budget():
    assert "countable budget unit" in METHODS["best_of_n"].incompatibility(REWARDS["digit"], "wall_s")


def test_ddpo_ratio_is_exactly_one_on_the_first_on_policy_pass(tiny_world):
    trainer, _ = make(tiny_world, "ddpo")
    traj = trainer.policy.sample(["a handwritten five"] * 4, 3, torch.Generator().manual_seed(0), Sampler(noise=1.0))
    for s in range(3):
        with torch.no_grad():
            _, ratio = ppo_clipped_loss(trainer.policy.log_prob(traj, s), traj.log_probs[:, s], torch.ones(4), 0.2)
        assert torch.allclose(ratio, torch.ones(4), rtol=0, atol=1e-5)


def test_ddpo_on_a_consistency_model_trains_its_stochastic_steps_at_the_model_learning_rate(tiny_world):
    trainer, _ = make(tiny_world, "ddpo", "consistency")
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-5
    assert make(tiny_world, "ddpo")[0].optimizer.param_groups[0]["lr"] == 3e-5
    assert make(tiny_world, "ddpo", "consistency", learning_rate=2e-4)[0].optimizer.param_groups[0]["lr"] == 2e-4
    traj = trainer.policy.sample(["a handwritten five"] * 2, 3, torch.Generator().manual_seed(0), Sampler(noise=1.0))
    assert traj.stochastic_steps == [0, 1] and torch.isnan(traj.log_probs[:, 2]).all()
    with pytest.raises(ValueError, match="step 2 of this chain is deterministic"):
        trainer.policy.log_prob(traj, 2)
    one_step, _ = make(tiny_world, "ddpo", "consistency", sample_steps=1)
    with pytest.raises(ValueError, match="a chain of 1 step\\(s\\) here has none"):
        one_step.step()


def network_calls(policy) -> list[int]:
    """The batch size of every call of the policy's network from now on."""
    calls: list[int] = []
    policy.network.register_forward_hook(lambda _module, inputs, _output: calls.append(len(inputs[0])))
    return calls


# the chains policy gradients train on: DDIM, the flow's own stochastic sampler and both GRPO SDEs, consistency's
CHAINS = [
    ("diffusion", "ddim"),
    ("flow", "ddim"),
    ("flow", "flow-sde"),
    ("flow", "dance-sde"),
    ("consistency", "consistency"),
]
SDES = ("flow-sde", "dance-sde")


@pytest.mark.parametrize("model, dynamics", CHAINS)
def test_several_steps_re_evaluated_in_one_network_call_are_each_steps_own_mean(tiny_world, model, dynamics):
    policy = tiny_world.make_policy(model)
    with torch.no_grad():
        chain = policy.sample(
            ["a handwritten five", "a handwritten two"] * 2, 4, torch.Generator().manual_seed(0), Sampler(dynamics, 0.8)
        )
        steps = [2, 0, 1]  # any order
        calls = network_calls(policy)
        batched = policy.step_means(chain, steps)
        assert calls == [len(steps) * 4]  # one call on the three steps' states
        for s, mean in zip(steps, batched, strict=True):
            assert torch.allclose(mean, policy.step_mean(chain, s), rtol=0, atol=1e-5)
            assert torch.allclose(mean, chain.means[:, s], rtol=0, atol=1e-5)  # what the sampler drew the step from


@pytest.mark.parametrize("model, dynamics", [("diffusion", "ddim"), ("flow", "flow-sde")])
def test_ppo_gradients_and_diagnostics_do_not_depend_on_how_many_steps_share_a_network_call(
    tiny_world, model, dynamics
):
    """The batched re-evaluation reorders float sums and nothing else: one step per call, an uneven split and all
    steps in one call give the same gradient (with the KL's reference passes, and GRPO-Guard's ratio on the flow)."""
    policy, reference = tiny_world.make_policy(model), tiny_world.make_policy(model)
    with torch.no_grad():
        for p in policy.trainable_parameters():  # off the sampling policy, so ratios and the KL are not trivial
            p.add_(1e-3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        chain = reference.sample(
            ["a handwritten five"] * 4, 5, torch.Generator().manual_seed(1), Sampler(dynamics, 0.8)
        )
    advantages = torch.tensor([1.0, -0.5, 2.0, -1.5])
    steps = chain.stochastic_steps[::-1]  # any order
    results = []
    for chunk in (1, 3, len(steps)):
        policy.network.zero_grad()
        stats = ppo_chain_backward(
            policy,
            reference,
            chain,
            steps,
            advantages,
            RatioClip(0.2),
            0.1,
            average=True,
            chunk=chunk,
            guard=dynamics in SDES,
        )
        results.append((stats, torch.cat([p.grad.flatten() for p in policy.trainable_parameters()])))
    (stats, gradient), rest = results[0], results[1:]
    assert gradient.abs().sum() > 0 and min(stats["kl"]) > 0
    for other_stats, other_gradient in rest:
        assert (other_gradient - gradient).norm() < 1e-4 * gradient.norm()  # float32 sums, in another order
        for name, values in stats.items():
            # a log-density sums ~1e3 pixel terms: its rounding moves the ratio by ~1e-4 of itself
            assert other_stats[name] == pytest.approx(values, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("model, dynamics", CHAINS)
def test_the_sampling_pass_is_the_on_policy_evaluation_of_its_steps(tiny_world, model, dynamics):
    """score_graph leaves the chain as it was and keeps each step's mean differentiable through that step alone, so
    the PPO gradient taken on it equals the re-evaluated one at the sampling parameters (rho = 1), with the KL's
    reference passes and GRPO-Guard's ratio on the flow, and calls the policy's network no more."""
    policy, reference = tiny_world.make_policy(model), tiny_world.make_policy(model)
    with torch.no_grad():
        for p in reference.network.parameters():  # off the policy, so the KL is not trivial
            p.add_(1e-3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        prompts = ["a handwritten five", "a handwritten two"] * 2
        plain = policy.sample(prompts, 4, torch.Generator().manual_seed(1), Sampler(dynamics, 0.8))
        graphed = policy.sample(prompts, 4, torch.Generator().manual_seed(1), Sampler(dynamics, 0.8), score_graph=True)
    for field in ("latents", "means", "log_probs", "images"):
        torch.testing.assert_close(getattr(graphed, field), getattr(plain, field), rtol=0, atol=0, equal_nan=True)
    stochastic = graphed.stochastic_steps
    assert not plain.mean_graphs and [m.requires_grad for m in graphed.mean_graphs] == [
        s in stochastic for s in range(len(graphed.stds))
    ]
    assert not graphed.latents.requires_grad and not graphed.images.requires_grad  # the actions are constants
    advantages = torch.tensor([1.0, -0.5, 2.0, -1.5])
    steps = graphed.stochastic_steps[::-1]
    gradients, calls = [], network_calls(policy)
    for on_policy in (False, True):
        policy.network.zero_grad()
        stats = ppo_chain_backward(
            policy,
            reference,
            graphed,
            steps,
            advantages,
            RatioClip(0.2),
            0.1,
            True,
            1,
            dynamics in SDES,
            on_policy=on_policy,
        )
        gradients.append(torch.cat([p.grad.flatten() for p in policy.trainable_parameters()]))
        assert max(stats["ratio_dev"]) < 1e-3 and min(stats["kl"]) > 0
        assert max(stats["ratio_max_dev"]) == 0 if on_policy else max(stats["ratio_max_dev"]) < 1e-3
    re_evaluated, reused = gradients
    assert calls == [4] * len(steps)  # the re-evaluation's only: the on-policy pass took the sampling's means
    assert re_evaluated.abs().sum() > 0 and (reused - re_evaluated).norm() < 1e-4 * re_evaluated.norm()


# every pairing of a method on the shared policy-gradient options, which hold reuse_sampling_pass
REUSING = [pair for pair in TRAINING if issubclass(METHODS[pair[0]].Config, PolicyGradientOptions)]


@pytest.mark.parametrize("name, model", REUSING)
def test_reusing_the_sampling_pass_takes_the_re_evaluated_step_for_fewer_network_evaluations(tiny_world, name, model):
    """One pass over every chain, and (for the methods whose groups stand apart) a group at a time: the same update
    as the re-evaluating one, for fewer network evaluations; the parts' update is the one pass's to float error."""
    one_minibatch = {"minibatch": 6, "inner_epochs": 2}  # small_config's 2 x 3 chains; the second epoch re-evaluates
    ways = {"re-evaluated": {}, "reused": {"reuse_sampling_pass": True}}
    if METHODS[name].Config.groups_apart:
        ways["a group at a time"] = {"reuse_sampling_pass": True, "reuse_groups": 1}
    steps = {}
    for way, options in ways.items():
        trainer, meter = make(tiny_world, name, model, **one_minibatch, **options)
        before = flat_parameters(trainer)
        stats = trainer.step()
        assert meter.accounts["train"].nfe == METHODS[name].step_usage(trainer.config, GENERATORS[model][1])["nfe"]
        steps[way] = (flat_parameters(trainer) - before, meter.accounts["train"].nfe)
        # the first pass's ratio: exactly 1 on the sampling pass's own means, 1 to float error re-evaluated; the
        # second epoch's has moved
        assert stats["ratio_first_max_dev"] == 0 if options else stats["ratio_first_max_dev"] < 1e-3
        assert stats["ratio_later_std"] > stats["ratio_first_std"]
    (re_evaluated, nfe), (reused, fewer) = steps["re-evaluated"], steps["reused"]
    # AdamW's first steps move a parameter by ~lr whatever its gradient's size, so float noise in a near-zero
    # gradient moves single entries: the updates agree as vectors
    assert fewer < nfe and (reused - re_evaluated).norm() < 1e-2 * re_evaluated.norm()
    if "a group at a time" in steps:
        parted, same = steps["a group at a time"]
        assert same == fewer and (parted - reused).norm() < 1e-4 * reused.norm()  # measured: 1e-8 to 5e-8


def test_a_batch_sampled_a_part_at_a_time_from_a_noise_tape_draws_the_whole_batchs_noise(tiny_world):
    """The tape's parts read rows of the draws the whole batch makes, in its order: the same chains, and the
    generator left where the whole batch leaves it."""
    policy, prompts = tiny_world.make_policy("flow"), ["a handwritten five", "a handwritten two"] * 3
    sampler = Sampler("flow-sde", 0.8)
    whole_generator, parted_generator = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    with torch.no_grad():
        whole = policy.sample(prompts, 4, whole_generator, sampler)
        tape = NoiseTape(parted_generator, len(prompts))
        parts = [policy.sample(prompts[i : i + 2], 4, tape.rows(i, i + 2), sampler) for i in (0, 2, 4)]
    parted = Trajectory.concatenate(parts)
    assert len(tape.draws) == 1 + len(whole.stochastic_steps)  # x_T, then a draw per stochastic step
    assert torch.equal(whole_generator.get_state(), parted_generator.get_state())
    for field in ("latents", "means", "log_probs", "images"):
        torch.testing.assert_close(getattr(parted, field), getattr(whole, field), equal_nan=True)
    assert parted.prompts == prompts
    with pytest.raises(ValueError, match="the parts of a batch must draw alike"):
        tape.rows(0, 3).randn((2, *policy.latent_shape))  # three rows asked, two drawn


def test_the_first_pass_pools_its_parts_diagnostics_as_one_call_over_every_chain_would():
    ratios = torch.tensor([1.0, 1.5, 0.5, 2.0, 1.25]).double()
    loss = torch.tensor([0.3, -0.1, 0.2, 0.4, -0.6]).double()

    def stats(rows):  # ppo_chain_backward's per-step diagnostics over some chains, one step
        r = ratios[rows]
        return {
            "loss": [loss[rows].mean().item()],
            "ratio_mean": [r.mean().item()],
            "ratio_var": [r.var(unbiased=False).item()],
            "ratio_max_dev": [(r - 1).abs().max().item()],
        }

    first = FirstPass(torch.arange(5), [0])
    first.add(stats([0, 1]), 2)
    first.add(stats([2, 3, 4]), 3)
    for name, values in stats([0, 1, 2, 3, 4]).items():
        assert first.stats[name] == pytest.approx(values, rel=1e-12), name


def test_reuse_groups_needs_the_reuse_and_groups_that_stand_apart():
    with pytest.raises(ValueError, match=r"ddpo.reuse_groups parts the reused sampling pass: set ddpo.reuse_sampling"):
        METHODS["ddpo"].Config(reuse_groups=2)
    with pytest.raises(ValueError, match=r"gdpo.reuse_groups needs each group's advantages from its own rewards"):
        METHODS["gdpo"].Config(reuse_sampling_pass=True, minibatch=64, reuse_groups=2)
    assert METHODS["flow_grpo"].Config(reuse_sampling_pass=True, minibatch=64, reuse_groups=2).reuse_groups == 2


class Saved:
    """A tensor the autograd graph saved, boxed so that its release can be watched."""

    def __init__(self, tensor):
        self.tensor = tensor


def test_a_group_at_a_time_holds_a_groups_graph_not_every_chains(tiny_world):
    """The memory reuse_groups buys: the storage of the activations the autograd graph saves for the backward (each
    storage once, the network's own weights left out), at its most over one step of four groups: a quarter of the
    one pass's (measured: 69 kB against 268 kB)."""

    def saved_peak(options):
        trainer, _ = make(tiny_world, "flow_grpo", "flow", prompts_per_iter=4, minibatch=12, **options)
        network = trainer.policy.network
        weights = {t.untyped_storage().data_ptr() for t in (*network.parameters(), *network.buffers())}
        holders: dict[int, int] = {}  # storage -> boxes holding it
        sizes: dict[int, int] = {}
        peak = [0]

        def release(storage):
            holders[storage] -= 1
            if not holders[storage]:
                del holders[storage], sizes[storage]

        def pack(tensor):
            storage = tensor.untyped_storage().data_ptr()
            if storage in weights:
                return tensor
            holders[storage] = holders.get(storage, 0) + 1
            sizes[storage] = tensor.untyped_storage().nbytes()
            peak[0] = max(peak[0], sum(sizes.values()))
            box = Saved(tensor)
            weakref.finalize(box, release, storage)  # called once the graph lets the box go
            return box

        def unpack(saved):
            return saved.tensor if isinstance(saved, Saved) else saved

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            trainer.step()
        return peak[0]

    one_pass = saved_peak({"reuse_sampling_pass": True})
    by_group = saved_peak({"reuse_sampling_pass": True, "reuse_groups": 1})
    assert by_group < 0.3 * one_pass


def test_reusing_the_sampling_pass_needs_one_minibatch_of_every_chain():
    with pytest.raises(
        ValueError, match=r"ddpo.minibatch \(16\) must be at least prompts_per_iter x samples_per_prompt \(64\)"
    ):
        METHODS["ddpo"].Config(reuse_sampling_pass=True)
    assert METHODS["flow_grpo"].Config(reuse_sampling_pass=True, minibatch=64).reuse_sampling_pass


def test_ppo_clipped_loss_known_values():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, ratio = ppo_clipped_loss(new, old, adv, 0.2)
    # per sample: max(-A r, -A clip(r)) = [-1.2, 1.5, -0.5, 0.8]
    assert torch.allclose(ratio, torch.tensor([1.5, 1.5, 0.5, 0.5]))
    assert torch.isclose(loss, torch.tensor((-1.2 + 1.5 - 0.5 + 0.8) / 4))


def test_group_normalized_advantages():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    adv = group_normalized_advantages(rewards, groups=2, clip=5.0)
    std = torch.tensor([1.0, 2.0, 3.0]).std(unbiased=False)
    assert torch.allclose(adv[:3], torch.tensor([-1.0, 0.0, 1.0]) / (std + 1e-6))
    assert torch.equal(adv[3:], torch.zeros(3))
    assert group_normalized_advantages(torch.tensor([0.0, 100.0]), 1, clip=0.5).abs().max() == 0.5


def test_zero_std_groups_counts_the_groups_whose_every_reward_is_equal():
    assert zero_std_groups(torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, 3.0]), groups=2) == 0.5
    assert zero_std_groups(torch.tensor([0.0, 0.0, 1.0, 1.0]), groups=2) == 1.0
    # two terms: a group counts only where each term is constant in it
    terms = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 5.0], [2.0, 5.0]])
    assert zero_std_groups(terms, groups=2) == 0.5


def test_a_pass_pools_its_steps_ratio_moments_into_those_of_every_term():
    generator = torch.Generator().manual_seed(0)
    ratios = [0.5 + torch.rand(6, generator=generator, dtype=torch.float64) for _ in range(4)]
    steps = {
        "ratio_mean": [r.mean().item() for r in ratios],
        "ratio_var": [r.var(unbiased=False).item() for r in ratios],
        "ratio_max_dev": [(r - 1).abs().max().item() for r in ratios],
    }
    pooled, every = ratio_moments(steps, "ratio_first"), torch.cat(ratios)
    assert pooled["ratio_first_mean"] == pytest.approx(every.mean().item(), rel=1e-12)
    assert pooled["ratio_first_std"] == pytest.approx(every.std(unbiased=False).item(), rel=1e-12)
    assert pooled["ratio_first_max_dev"] == (every - 1).abs().max().item()
    assert ratio_moments({"ratio_mean": [], "ratio_var": [], "ratio_max_dev": []}, "ratio_later") == {}


def test_top_k_per_group():
    rewards = torch.tensor([0.1, 0.9, 0.5, 3.0, 1.0, 2.0])
    assert top_k_per_group(rewards, groups=2, k=2).tolist() == [1, 2, 3, 5]
    with pytest.raises(ValueError, match="the group size"):
        top_k_per_group(rewards, groups=2, k=4)
