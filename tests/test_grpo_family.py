"""The GRPO family (flow_grpo, mix_grpo, dance_grpo) and Diffusion-DPO: each one's own math, exactly where it has an
answer. Their contract (finite steps, determinism, resume, exact metering) is tests/test_methods.py's."""

import dataclasses
import math

import pytest
import torch
from test_methods import flat_parameters, make

from bench.runner import config_identity
from methods import METHODS
from methods.dpo import dpo_loss
from methods.mix_grpo import Config as MixConfig
from methods.mix_grpo import flash_grid, window_start
from methods.toolkit.divergences import closed_form
from methods.toolkit.policy_gradient import guarded_log_ratio, ppo_clipped_loss, step_length
from models.diffusion import gaussian_log_prob
from models.sampler import Sampler
from worlds.digits.build import GENERATORS


def captured_samples(trainer) -> list:
    """Every trajectory the trainer samples from now on."""
    chains, sample = [], trainer.policy.sample

    def spy(*args, **kwargs):
        chains.append(sample(*args, **kwargs))
        return chains[-1]

    trainer.policy.sample = spy
    return chains


def test_flow_grpo_is_exactly_on_policy_at_its_first_pass_and_its_kl_to_itself_is_zero(tiny_world):
    trainer, _ = make(tiny_world, "flow_grpo", "flow")
    chain = trainer.policy.sample(
        ["a handwritten five"] * 4, 4, torch.Generator().manual_seed(0), Sampler("flow-sde", 0.7)
    )
    assert chain.stochastic_steps == [0, 1, 2]
    for s in chain.stochastic_steps:
        with torch.no_grad():
            _, ratio = ppo_clipped_loss(trainer.policy.log_prob(chain, s), chain.log_probs[:, s], torch.ones(4), 0.2)
            std = float(chain.stds[s])
            kl = closed_form("kl", trainer.policy.step_mean(chain, s), std, trainer.reference.step_mean(chain, s), std)
        assert torch.allclose(ratio, torch.ones(4), rtol=0, atol=1e-5) and torch.equal(kl, torch.zeros(4))


def test_flow_grpo_trains_with_fewer_steps_than_it_is_evaluated_with(tiny_world):
    trainer, _ = make(tiny_world, "flow_grpo", "flow", sample_steps=5)
    chains = captured_samples(trainer)
    trainer.step()
    assert len(chains[0].timesteps) == 5 and chains[0].dynamics == "flow-sde" and chains[0].noise == (0.7,) * 5
    assert trainer.policy.default_steps != 5  # evaluation (Trainer.generate) samples at the model's default


def test_flow_grpo_fast_noises_and_trains_a_random_window_among_the_first_steps(tiny_world):
    trainer, meter = make(tiny_world, "flow_grpo", "flow", sample_steps=5, sde_window=2, sde_window_steps=3)
    chains = captured_samples(trainer)
    starts = []
    for _ in range(6):
        starts.append(trainer.step()["window_start"])
        start = int(starts[-1])
        assert chains[-1].stochastic_steps == [start, start + 1]  # the window, and nothing else, is an SDE step
    assert set(starts) == {0.0, 1.0}  # w = 2 within the first 3 steps: l in {0, 1}, drawn each iteration
    per_step = METHODS["flow_grpo"].step_usage(trainer.config, GENERATORS["flow"][1])["nfe"]
    assert meter.accounts["train"].nfe == 6 * per_step  # only the window's steps are trained
    with pytest.raises(ValueError, match=r"flow_grpo.sde_window \(4\) must fit in flow_grpo.sde_window_steps \(3\)"):
        dataclasses.replace(trainer.config, sde_window=4)


@pytest.mark.parametrize("method", ["flow_grpo", "mix_grpo"])
def test_the_grpo_sde_methods_draw_and_train_their_chains_with_cps_when_asked(tiny_world, method):
    trainer, _ = make(tiny_world, method, "flow", sample_steps=4, dynamics="cps", noise_level=0.8)
    chains = captured_samples(trainer)
    stats = trainer.step()
    chain = chains[0]
    assert chain.dynamics == "cps" and math.isfinite(stats["reward"])
    for step in chain.stochastic_steps:  # coefficients-preserving sampling's std: the next time's s sin(eta pi/2)
        s = float(chain.timesteps[step + 1])
        assert math.isclose(float(chain.stds[step]), s * math.sin(0.8 * math.pi / 2), rel_tol=1e-6)
    with pytest.raises(ValueError, match=f"{method}.dynamics must be one of flow-sde, cps, got 'ode'"):
        dataclasses.replace(trainer.config, dynamics="ode")
    with pytest.raises(ValueError, match=f"{method}.noise_level must be <= 1 with dynamics cps"):
        dataclasses.replace(trainer.config, noise_level=1.5)


def test_options_added_to_a_method_keep_its_earlier_runs_ids_at_their_default():
    plain = config_identity(METHODS["flow_grpo"].Config())
    assert "sde_window" not in plain and "sde_window_steps" not in plain and plain["kl_coef"] == 0.04
    fast = config_identity(METHODS["flow_grpo"].Config(sde_window=2))
    assert fast == {**plain, "sde_window": 2}  # an added option at its default stays out, whatever the others


def test_grpo_guard_centres_the_log_ratio_of_every_step_at_zero_and_scales_it_by_the_steps_std():
    generator = torch.Generator().manual_seed(0)
    old_mean, eps = torch.randn(4096, 8, generator=generator), torch.randn(4096, 8, generator=generator)
    d = 0.01 * torch.randn(1, 8, generator=generator)  # the policy's drift since the samples were drawn
    for std in (0.05, 0.3):
        x = old_mean + std * eps
        plain = gaussian_log_prob(x, old_mean + d, std) - gaussian_log_prob(x, old_mean, std)
        guarded = guarded_log_ratio(
            gaussian_log_prob(x, old_mean + d, std), gaussian_log_prob(x, old_mean, std), old_mean + d, old_mean, std
        )
        # log rho = eps . d / std - ||d||^2 / (2 std^2): left-shifted, the more so the smaller the step's std
        assert torch.allclose(plain, (eps * d).sum(1) / std - d.pow(2).sum() / (2 * std**2), atol=1e-3)
        assert torch.allclose(guarded, (eps * d).sum(1), atol=1e-4)  # RatioNorm: eps . d, whatever the std
    on_policy = guarded_log_ratio(torch.ones(3), torch.ones(3), old_mean[:3], old_mean[:3], 0.3)
    assert torch.equal(on_policy, torch.zeros(3))  # exactly on-policy: ratio 1


def test_flow_grpo_guard_weights_each_step_by_its_length_and_trains(tiny_world):
    trainer, _ = make(tiny_world, "flow_grpo", "flow", sample_steps=4, guard=True, kl_coef=0.0)
    chains = captured_samples(trainer)
    before = flat_parameters(trainer)
    stats = trainer.step()
    assert [step_length(chains[0], s) for s in range(4)] == [0.25] * 4  # flow time 1 -> 0 in 4 equal steps
    assert math.isfinite(stats["loss"]) and not torch.equal(before, flat_parameters(trainer))
    assert config_identity(trainer.config)["guard"] is True
    plain, _ = make(tiny_world, "flow_grpo", "flow", sample_steps=4, kl_coef=0.0)
    plain.step()
    assert not torch.equal(flat_parameters(plain), flat_parameters(trainer))  # the same samples, another update


def test_the_mix_grpo_window_slides_from_high_noise_to_low_and_stops_at_the_last_stochastic_step():
    config = MixConfig(window=4, shift_interval=10, stride=2)
    starts = [window_start(k, 20, config) for k in (0, 9, 10, 25, 69, 70, 80, 1000)]
    assert starts == [0, 0, 2, 4, 12, 14, 15, 15]  # 20 steps: the last stochastic step is 18, so l <= 15


def test_mix_grpo_noises_and_trains_its_window_only(tiny_world):
    trainer, meter = make(tiny_world, "mix_grpo", "flow", shift_interval=1)
    chains = captured_samples(trainer)
    windows = [trainer.step()["window_start"] for _ in range(3)]
    assert windows == [0.0, 1.0, 1.0]  # 4 steps, window 2: l in {0, 1}
    assert [chain.stochastic_steps for chain in chains] == [[0, 1], [1, 2], [1, 2]]
    assert chains[1].noise == (0.0, 0.7, 0.7, 0.0)
    whole, _ = make(tiny_world, "mix_grpo", "flow", window=9)  # longer than the chain: all its stochastic steps
    chains = captured_samples(whole)
    assert whole.step()["window_start"] == 0.0 and chains[0].stochastic_steps == [0, 1, 2]


def test_the_mix_grpo_flash_grid_keeps_the_grid_to_the_windows_end_then_evenly_spaced_points_of_the_rest():
    grid = 1 - torch.arange(20, dtype=torch.float64) / 20
    assert torch.equal(flash_grid(grid, 4, 4), grid[[0, 1, 2, 3, 4, 8, 12, 16]])
    assert torch.equal(flash_grid(grid, 17, 2), grid[[*range(17), 17, 18]])  # 3 left: floor(i * 3 / 2)
    assert flash_grid(grid, 18, 4) is grid and flash_grid(grid, 4, 0) is grid  # as many left as asked, or no Flash


def test_mix_grpo_flash_samples_the_window_then_crosses_the_rest_in_fewer_ode_steps(tiny_world):
    trainer, meter = make(tiny_world, "mix_grpo", "flow", sample_steps=8, window=2, flash_steps=2)
    chains = captured_samples(trainer)
    trainer.step()
    chain = chains[0]
    assert chain.timesteps.tolist() == [1.0, 0.875, 0.75, 0.375] and chain.stochastic_steps == [0, 1]
    per_step = METHODS["mix_grpo"].step_usage(trainer.config, GENERATORS["flow"][1])["nfe"]
    assert meter.accounts["train"].nfe == per_step == 6 * 4 + 6 * 2 * 3  # 4 sampler calls a chain, 2 steps trained


@pytest.mark.parametrize("model", ["flow", "diffusion"])
def test_dance_grpo_starts_each_group_from_one_noise(tiny_world, model):
    trainer, _ = make(tiny_world, "dance_grpo", model)
    chains = captured_samples(trainer)
    trainer.step()
    start = chains[0].latents[:, 0]  # 2 prompts x 3 samples
    assert torch.equal(start[0], start[1]) and torch.equal(start[0], start[2]) and not torch.equal(start[0], start[3])
    assert not torch.equal(chains[0].images[0], chains[0].images[1])  # the sampler's noise sets them apart
    assert chains[0].dynamics == ("dance-sde" if model == "flow" else "ddim")
    assert chains[0].noise[0] == (0.3 if model == "flow" else 1.0)


def test_the_dpo_loss_on_hand_made_errors_and_the_direction_it_pushes():
    policy_w = torch.tensor([1.0, 1.0], requires_grad=True)
    policy_l = torch.tensor([1.0, 1.0], requires_grad=True)
    reference_w, reference_l = torch.tensor([1.2, 0.8]), torch.tensor([0.9, 0.9])
    loss, ranked = dpo_loss(policy_w, reference_w, policy_l, reference_l, beta=10.0)
    # margins (1 - 1.2) - (1 - 0.9) = -0.3 and (1 - 0.8) - (1 - 0.9) = 0.1; loss = -log sigmoid(-beta / 2 * margin)
    expected = (math.log1p(math.exp(-1.5)) + math.log1p(math.exp(0.5))) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-6) and ranked.tolist() == [True, False]
    loss.backward()
    # lowering the preferred image's error lowers the loss; lowering the rejected one's raises it
    assert (policy_w.grad > 0).all() and (policy_l.grad < 0).all()


def test_the_four_dpo_errors_share_one_noise_draw(tiny_world):
    for model in ("diffusion", "flow"):
        policy = tiny_world.make_policy(model)
        images = torch.rand(3, *policy.image_shape)
        generator = torch.Generator().manual_seed(0)
        state = generator.get_state()
        first = policy.training_errors(images, ["a five"] * 3, generator)
        generator.set_state(state)
        again = policy.training_errors(images, ["a five"] * 3, generator)
        assert torch.equal(first, again) and first.shape == (3,)
        generator.set_state(state)
        assert torch.allclose(policy.loss(images, ["a five"] * 3, generator), first.mean())


def test_offline_dpo_draws_its_pairs_once_from_the_base_model_and_online_dpo_every_step(tiny_world):
    offline, meter = make(tiny_world, "dpo", pairing="offline")
    offline.step()
    pool, spent = offline.pairs, meter.accounts["train"].reward_queries
    offline.step()
    assert offline.pairs is pool and meter.accounts["train"].reward_queries == spent == 9  # 3 prompts x 3 images
    assert len(pool["prompts"]) == len(pool["preferred"]) == len(pool["rejected"]) <= 3
    online, meter = make(tiny_world, "dpo")
    online.step()
    online.step()
    assert online.pairs is None and meter.accounts["train"].reward_queries == 2 * 6


def test_dpo_drops_pairs_the_reward_ties_and_then_does_not_move(tiny_world, monkeypatch):
    trainer, _ = make(tiny_world, "dpo")
    monkeypatch.setattr(type(trainer.reward._reward), "__call__", lambda self, images, prompts: torch.ones(len(images)))
    before = flat_parameters(trainer)
    assert trainer.step() == {"pairs": 0.0}
    assert torch.equal(before, flat_parameters(trainer))
