"""Reward gradients through the sampler, shared by the direct-gradient methods (draft, alignprop).

Written with the reparameterization trick, a chain's image is a differentiable function of the parameters and its
noise, x_0 = G_theta(x_T, noise), so the reward's gradient reaches theta through the chain:
  L(theta) = -E_{c, x_T, noise} [ r(G_theta(x_T, noise), c) ].
Truncation keeps the graph of the last K steps only (DRaFT-K; AlignProp with K drawn each iteration): the earlier
steps run without it, so grad L is the gradient of r through the last K steps, with x_{T-K} held fixed.
"""

from __future__ import annotations

from models.sampler import Sampler


def truncated_backprop_usage(images: int, steps: int, grad_steps: float, checkpoint: bool) -> dict[str, float]:
    """What one iteration of `reward_backprop` costs: `images` chains of `steps` forwards, a backward (2) through
    the last `grad_steps` of each (an expectation where K is drawn), and with `checkpoint` those steps' forwards
    again, recomputed in the backward pass."""
    per_chain = steps + grad_steps * (3 if checkpoint else 2)
    return {"nfe": images * per_chain, "reward_queries": images, "samples": images}


def reward_backprop(trainer, prompts: list[str], steps: int, grad_steps: int, eta: float, checkpoint: bool) -> dict:
    """One optimizer step of L(theta) above on `prompts`: chains of `steps` steps (noise level `eta`), the graph
    kept through the last `grad_steps`; the trainer's config gives max_grad_norm. Returns the reward and the loss."""
    trajectory = trainer.policy.sample(
        prompts, steps, trainer.generator, Sampler(noise=eta), grad=True, grad_steps=grad_steps, checkpoint=checkpoint
    )
    return ascend_reward(trainer, trajectory.images, prompts)


def ascend_reward(trainer, images, prompts: list[str]) -> dict:
    """One optimizer step of -mean r(images) through whatever graph the images carry (the trainer's config gives
    max_grad_norm). Returns the reward and the loss."""
    rewards = trainer.reward(images, prompts)
    loss = -rewards.mean()
    trainer.descend(loss, trainer.config.max_grad_norm)
    return {"reward": rewards.mean().item(), "loss": loss.item()}
