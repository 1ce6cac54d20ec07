"""The direct-gradient and likelihood-free families (draft, alignprop, refl, adjoint_matching, diffusion_nft): each
one's own math, exactly where it has an answer, often on Gaussian data whose velocity field is known in closed form.
Their contract (finite steps, determinism, resume, exact metering) is tests/test_methods.py's."""

import math

import pytest
import torch
from test_flow import ConstantText, GaussianVelocity
from test_methods import flat_parameters, make

from methods.adjoint_matching import lean_adjoint, regression_target
from methods.alignprop import truncation_range
from methods.diffusion_nft import implicit_policies, nft_loss, optimality_probability
from models.diffusion import add_noise
from models.flow import TIMESTEP_SCALE, FlowPolicy
from models.sampler import Sampler


def reward_gradient(trainer, meter, grad_steps, steps=4):
    """One batch of 3 chains from seed 0 and its noise x_T, with the graph kept through their last `grad_steps`
    steps: the parameters' gradient of the mean reward, the noise's gradient, and the network evaluations spent
    (forwards and backwards, as the meter counts them)."""
    trainer.policy.network.zero_grad()
    prompts, before = ["a handwritten three"] * 3, meter.accounts["train"].nfe
    noise = torch.randn(3, *trainer.policy.latent_shape, generator=torch.Generator().manual_seed(1))
    noise.requires_grad_(True)
    chain = trainer.policy.sample(
        prompts, steps, torch.Generator().manual_seed(0), initial=noise, grad=True, grad_steps=grad_steps
    )
    trainer.reward(chain.images, prompts).mean().backward()
    gradient = torch.cat([p.grad.flatten() for p in trainer.policy.trainable_parameters()])
    return gradient, noise.grad, meter.accounts["train"].nfe - before


@pytest.mark.parametrize("model", ["diffusion", "flow", "consistency"])
def test_draft_k_backpropagates_through_exactly_the_last_k_steps_and_k_equal_t_is_full_backprop(tiny_world, model):
    trainer, meter = make(tiny_world, "draft", model)
    gradients = {}
    for k in (1, 2, 4, None):
        gradients[k], noise_gradient, evaluations = reward_gradient(trainer, meter, k)
        trained = 4 if k is None else k
        assert evaluations == 3 * (4 + 2 * trained)  # 4 forwards, and a backward (2) through exactly K steps
        assert (noise_gradient is not None) == (trained == 4)  # only the whole chain reaches x_T
    assert torch.equal(gradients[4], gradients[None])  # K = T: full backpropagation, AlignProp without truncation
    if model != "consistency":  # the tiny consistency model's pixels reach +-500: clamped, its reward gradient is 0
        assert gradients[1].abs().sum() > 0
        assert not torch.allclose(gradients[1], gradients[2]) and not torch.allclose(gradients[2], gradients[4])


def test_a_chain_stopped_early_is_the_start_of_the_whole_chain(tiny_world):
    trainer, _ = make(tiny_world, "refl", "diffusion")
    with torch.no_grad():
        whole = trainer.policy.sample(
            ["a handwritten one"] * 2, 6, torch.Generator().manual_seed(3), Sampler(noise=0.5)
        )
        start = trainer.policy.sample(
            ["a handwritten one"] * 2, 6, torch.Generator().manual_seed(3), Sampler(noise=0.5), until=4
        )
    assert start.latents.shape[1] == 5 and torch.equal(start.latents, whole.latents[:, :5])
    assert start.stochastic_steps == [0, 1, 2, 3] and torch.equal(start.log_probs, whole.log_probs[:, :4])
    with pytest.raises(ValueError, match="takes 1 to 6"):
        trainer.policy.sample(["x"], 6, torch.Generator(), until=7)


@pytest.mark.parametrize("model", ["diffusion", "flow"])
def test_refl_rewards_the_models_one_step_prediction_at_its_step(tiny_world, model):
    trainer, meter = make(tiny_world, "refl", model)
    policy, prompts, steps, k = trainer.policy, ["a handwritten seven"] * 2, 5, 3
    chain = policy.sample(prompts, steps, torch.Generator().manual_seed(1), grad=True, grad_steps=1, until=k + 1)
    assert meter.accounts["train"].nfe == 2 * (k + 1)  # the chain to x_k, then the prediction's own step
    x, t = chain.latents[:, k], chain.timesteps[k]
    with torch.no_grad():
        if model == "diffusion":  # Tweedie: (x - sqrt(1 - a) eps) / sqrt(a)
            a = float(policy.alphas_cumprod[int(t)])
            eps = policy.network(x, torch.full((2,), int(t)), policy._text(prompts))
            expected = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        else:  # x - t v
            v = policy.network(x, torch.full((2,), float(t) * TIMESTEP_SCALE), policy._text(prompts))
            expected = x - float(t) * v
    assert torch.allclose(chain.predictions[:, k], expected, atol=1e-5)
    before = meter.accounts["train"].nfe
    chain.predictions[:, k].sum().backward()
    assert meter.accounts["train"].nfe - before == 2 * 2  # its gradient goes through that one step only


def test_refl_draws_its_step_from_the_late_window_and_its_regularizer_pool_once(tiny_world):
    trainer, meter = make(tiny_world, "refl", "flow", sample_steps=8, window=0.25, pretrain_pool=4)
    steps = {trainer.step()["stop_step"] for _ in range(8)}
    assert steps <= {6.0, 7.0} and len(steps) == 2  # the last 2 of 8 steps
    assert meter.accounts["train"].samples == 4 + 8 * 6  # the pool once, then 6 chains an iteration


@pytest.mark.parametrize("model", ["diffusion", "flow", "consistency"])
def test_the_forward_process_of_each_family(tiny_world, model):
    trainer, _ = make(tiny_world, "draft", model)
    policy, generator = trainer.policy, torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 1, 8, 8, generator=generator), torch.randn(3, 1, 8, 8, generator=generator)
    timestep = policy.sampling_timesteps(4)[-1]
    if model == "flow":
        expected = (1 - float(timestep)) * x0 + float(timestep) * noise
    else:
        expected = add_noise(x0, noise, policy.alphas_cumprod[int(timestep)].expand(3))
    assert torch.equal(policy.noised(x0, timestep, noise), expected)


def test_draft_lv_denoises_its_noised_image_several_times_through_the_last_step(tiny_world):
    trainer, meter = make(tiny_world, "draft", "diffusion", lv_samples=3)
    before = flat_parameters(trainer)
    stats = trainer.step()
    assert meter.accounts["train"].reward_queries == 3 * 6 and math.isfinite(stats["loss"])
    assert not torch.equal(before, flat_parameters(trainer))
    with pytest.raises(ValueError, match="draft.lv_samples needs draft.grad_steps 1"):
        make(tiny_world, "draft", "diffusion", lv_samples=2, grad_steps=2)


def test_alignprop_draws_its_truncation_each_iteration_within_its_range(tiny_world):
    trainer, _ = make(tiny_world, "alignprop", "flow", sample_steps=4, min_grad_steps=2)
    drawn = {trainer.step()["grad_steps"] for _ in range(12)}
    assert drawn == {2.0, 3.0, 4.0}
    assert truncation_range(trainer.config, 3) == (2, 3) and truncation_range(trainer.config, 1) == (1, 1)


# -- Adjoint Matching, on N(0, 1) data and the linear reward r(x) = w . x, whose tilted distribution
# p_base exp(lambda r) is N(lambda w, 1): its lean adjoint is a(tau) = -lambda w tau / (tau^2 + (1 - tau)^2) ---------


def test_the_lean_adjoint_of_a_linear_reward_on_gaussian_data_is_its_closed_form():
    steps, scale, w = 1000, 2.0, torch.tensor([1.0, -0.5])
    times = 1 - torch.arange(steps, dtype=torch.float64) / steps

    def transpose_jacobian(k, a):  # grad_x v = (2t - 1) / ((1 - t)^2 + t^2) I for N(0, 1) data
        t = float(times[k]) if k < steps else 0.0
        return (2 * t - 1) / ((1 - t) ** 2 + t**2) * a

    adjoint = lean_adjoint(-scale * w.double(), times, transpose_jacobian)
    assert sorted(adjoint) == list(range(1, steps))
    for k in (10, 250, 500, 900, 999):
        tau = 1 - float(times[k])
        exact = -scale * w.double() * tau / (tau**2 + (1 - tau) ** 2)
        assert torch.allclose(adjoint[k], exact, rtol=2e-2, atol=2e-3), (k, adjoint[k], exact)


def test_the_adjoint_matching_target_is_the_velocity_of_the_reward_tilted_distribution():
    steps, scale, w = 1000, 0.4, 0.5
    times = 1 - torch.arange(steps, dtype=torch.float64) / steps
    base, tilted = GaussianVelocity(0.0, 1.0), GaussianVelocity(scale * w, 1.0)  # N(0, 1) and N(lambda w, 1)

    def transpose_jacobian(k, a):
        t = float(times[k]) if k < steps else 0.0
        return (2 * t - 1) / ((1 - t) ** 2 + t**2) * a

    adjoint = lean_adjoint(torch.full((1, 1, 4, 4), -scale * w, dtype=torch.float64), times, transpose_jacobian)
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for k in (100, 500, 900):
        t = torch.full((1,), float(times[k]) * TIMESTEP_SCALE)
        target = regression_target(base(x, t, None).double(), adjoint[k], float(times[k]))
        assert torch.allclose(target, tilted(x, t, None).double(), atol=5e-3)


def test_the_memoryless_sampler_forgets_its_start_and_lands_on_the_data_distribution():
    policy = FlowPolicy(GaussianVelocity(0.3, 0.5), ConstantText())

    def correlation(eta):
        with torch.no_grad():
            chain = policy.sample(["x"] * 4000, 200, torch.Generator().manual_seed(2), Sampler(noise=eta))
        start, end = chain.latents[:, 0].flatten(), chain.latents[:, -1].flatten()
        return torch.corrcoef(torch.stack([start, end]))[0, 1].item(), end

    ode, _ = correlation(0.0)
    memoryless, end = correlation(1.0)
    assert ode > 0.9 and abs(memoryless) < 0.02  # the ODE keeps its start; the posterior sampler forgets it
    assert abs(end.mean().item() - 0.3) < 0.01 and abs(end.std().item() - 0.5) < 0.01


# -- DiffusionNFT ------------------------------------------------------------------------------------------------


def test_the_nft_implicit_policies_and_loss_on_hand_made_values():
    v_theta, v_old, target = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]])
    positive, negative = implicit_policies(v_theta, v_old, 0.0)
    assert torch.equal(positive, v_old) and torch.equal(negative, v_old)  # beta = 0: both are the old policy
    positive, negative = implicit_policies(v_theta, v_old, 0.5)
    assert torch.equal(positive, torch.tensor([[0.5, 1.5]])) and torch.equal(negative, torch.tensor([[-0.5, 0.5]]))
    # r = 1/2: ||v_old - v||^2 + beta^2 ||v_theta - v_old||^2, whose gradient pulls v_theta to v_old
    v = v_theta.clone().requires_grad_(True)
    loss = nft_loss(v, v_old, target, torch.tensor([0.5]), 0.5)
    assert math.isclose(loss.item(), 0.5 * (0.25 + 0.25) + 0.25 * 0.5 * (1 + 1), abs_tol=1e-6)
    loss.backward()
    assert torch.allclose(v.grad, 2 * 0.25 * (v_theta - v_old) / 2)


def test_the_optimality_probability_centres_each_group_and_clips():
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0])  # two groups of two; the batch's std is 3.90
    r = optimality_probability(rewards, 2)
    scale = rewards.std(unbiased=False)
    assert torch.allclose(r, torch.tensor([0.5 - 0.5 / scale, 0.5 + 0.5 / scale, 0.5, 0.5]))
    one_group = optimality_probability(torch.tensor([0.0, 0.0, 0.0, 100.0]), 1)  # centred by 25, std 43.3
    assert one_group[3] == 1.0 and torch.allclose(one_group[:3], torch.full((3,), 0.5 - 0.5 * 25 / math.sqrt(1875)))
    assert torch.equal(optimality_probability(torch.full((4,), 7.0), 2), torch.full((4,), 0.5))  # no preference


def test_nft_moves_a_gaussian_flow_along_a_linear_rewards_direction():
    """2-D data N(mu, I) with the closed-form velocity of N(mu_theta, I) as the policy: DiffusionNFT on r(x) = w . x
    moves mu along w and not across it."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    w, across = torch.tensor([0.6, 0.8]), torch.tensor([-0.8, 0.6])
    mu = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.Adam([mu], lr=0.05)

    def velocity(mean, x, t):  # E[eps - x0 | x_t] for x0 ~ N(mean, I)
        variance = (1 - t) ** 2 + t**2
        centred = x - (1 - t) * mean
        return t / variance * centred - (mean + (1 - t) / variance * centred)

    for _ in range(60):
        old = mu.detach().clone()
        x0 = old + torch.randn(4, 16, 2, generator=generator)  # 4 prompts, 16 samples each
        r = optimality_probability((x0 @ w).flatten(), 4)
        x0 = x0.reshape(-1, 2)
        t = torch.rand(len(x0), 1, generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        x_t = (1 - t) * x0 + t * eps
        loss = nft_loss(velocity(mu, x_t, t), velocity(old, x_t, t), eps - x0, r, 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    along, off = float(mu.detach() @ w), float(mu.detach() @ across)
    assert along > 0.5 and abs(off) < 0.15 * along


def test_diffusion_nft_samples_from_its_old_policy_and_keeps_the_current_one(tiny_world):
    trainer, _ = make(tiny_world, "diffusion_nft", "flow", eta_rate=0.5, eta_max=0.5)
    base = trainer.policy.state_dict()
    stats = trainer.step()
    assert stats["eta"] == 0.5 and math.isfinite(stats["loss"])
    current = trainer.policy.state_dict()
    for name, value in trainer.old_state.items():  # theta_old = 0.5 theta_old + 0.5 theta after the first step
        if value.is_floating_point():
            assert torch.allclose(value, 0.5 * base[name] + 0.5 * current[name])
    assert any(not torch.equal(base[n], current[n]) for n in base)  # the policy itself trained
