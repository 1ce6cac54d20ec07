"""Flow-DPPO (methods/flow_dppo.py) and the trust regions of the policy-gradient toolkit: the KL mask against its
formula, exactly, and the method against Flow-GRPO where their objectives coincide. Its contract (finite steps,
determinism, resume, exact metering) is tests/test_methods.py's."""

import pytest
import torch
from test_methods import flat_parameters, make

from bench.cli import main
from methods import METHODS
from methods.toolkit.policy_gradient import KLMask, RatioClip, ppo_clipped_loss


def test_the_mask_drops_exactly_the_terms_beyond_delta_pushed_further_out():
    """Four chains, one per case: (KL above delta?, ratio on the advantage's side of 1?). Only the chain with both
    is masked; its term's gradient is zero and it still counts in the mean."""
    std, delta = 0.5, 0.01
    old_mean = torch.zeros(4, 2, 3)
    shift = torch.tensor([0.3, 0.3, 0.01, 0.01])  # KL per dimension = shift^2 / (2 std^2): 0.18, 0.18, 2e-4, 2e-4
    mean = (old_mean + shift[:, None, None]).requires_grad_()
    log_prob = torch.tensor([0.2, -0.2, 0.2, -0.2], requires_grad=True)
    old_log_prob = torch.zeros(4)
    advantages = torch.tensor([1.0, 1.0, 1.0, 1.0])
    loss, ratio, masked = KLMask(delta).surrogate(log_prob, old_log_prob, advantages, (mean, old_mean, std))
    assert masked.tolist() == [True, False, False, False]
    expected = -(advantages * torch.exp(log_prob.detach()) * torch.tensor([0.0, 1, 1, 1])).sum() / 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert log_prob.grad is not None and log_prob.grad[0] == 0 and (log_prob.grad[1:] != 0).all()
    assert mean.grad is None  # the mask reads the divergence, it is not trained through it
    assert torch.equal(ratio, torch.exp(log_prob.detach()))


def test_a_negative_advantage_is_masked_below_one_and_kept_above():
    old_mean, mean = torch.zeros(2, 4), torch.ones(2, 4)  # KL = 2 per dimension at std 0.5
    log_prob, advantages = torch.tensor([-0.1, 0.1]), torch.tensor([-1.0, -1.0])
    _, _, masked = KLMask(1.0).surrogate(log_prob, torch.zeros(2), advantages, (mean, old_mean, 0.5))
    assert masked.tolist() == [True, False]
    _, _, masked = KLMask(3.0).surrogate(log_prob, torch.zeros(2), advantages, (mean, old_mean, 0.5))
    assert masked.tolist() == [False, False]


def test_the_ratio_clip_region_is_ppo_s_clipped_surrogate():
    log_prob, old, advantages = torch.tensor([0.5, -0.5, 0.01]), torch.zeros(3), torch.tensor([1.0, -2.0, 0.5])
    loss, ratio, outside = RatioClip(0.2).surrogate(log_prob, old, advantages, (torch.zeros(3), torch.zeros(3), 1.0))
    expected_loss, expected_ratio = ppo_clipped_loss(log_prob, old, advantages, 0.2)
    assert torch.equal(loss, expected_loss) and torch.equal(ratio, expected_ratio)
    assert outside.tolist() == [True, True, False]


def test_flow_dppo_with_an_unreachable_delta_is_flow_grpo_without_its_clip(tiny_world):
    """No term can leave a trust region of delta = 1e30, and none is clipped at clip_range = 1e30: both objectives are
    then -A rho, so the same seed takes the same update."""
    updates = []
    for name, options in (("flow_dppo", {"kl_threshold": 1e30}), ("flow_grpo", {"clip_range": 1e30})):
        trainer, _ = make(tiny_world, name, "flow", kl_coef=0.0, inner_epochs=2, **options)
        before = flat_parameters(trainer)
        trainer.step()
        updates.append(flat_parameters(trainer) - before)
    assert updates[0].abs().sum() > 0
    torch.testing.assert_close(updates[0], updates[1], rtol=1e-5, atol=1e-9)


def test_a_tight_delta_masks_the_second_epoch_and_changes_the_update(tiny_world):
    """The first pass is on-policy (KL 0, nothing masked); a second epoch moves beyond a delta of 1e-12."""
    stats, updates = [], []
    for delta in (1e30, 1e-12):
        trainer, _ = make(tiny_world, "flow_dppo", "flow", kl_threshold=delta, inner_epochs=2)
        before = flat_parameters(trainer)
        stats.append(trainer.step())
        updates.append(flat_parameters(trainer) - before)
    assert stats[0]["mask_frac"] == 0 and 0 < stats[1]["mask_frac"] < 1
    assert not torch.equal(updates[0], updates[1])


def test_flow_dppo_has_no_clip_range_and_refuses_a_bad_delta(capsys):
    assert "clip_range" not in {f for f in METHODS["flow_dppo"].Config.__dataclass_fields__}
    with pytest.raises(ValueError, match=r"flow_dppo.kl_threshold must be > 0, got 0"):
        METHODS["flow_dppo"].Config(kl_threshold=0.0)
    for argv, message in (
        (["run", "--flow_dppo.kl_threshold", "-1"], "--flow_dppo.kl_threshold: must be > 0, got -1"),
        (["run", "--flow_dppo.clip_range", "0.1"], "--flow_dppo.clip_range"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err
