"""What the scale-reward tests share: tiny sizes (those of models/tiny_pipelines.py's CLIP), prompts, images and
the checks every reward's scores pass."""

import torch

from models.tiny_pipelines import CLIP_EMBED, CLIP_IMAGE, CLIP_PATCH, CLIP_WIDTH

PROMPTS = ["a red cat", "two dogs on grass!"]
# the tiny CLIP's sizes (models/tiny_pipelines.py); the BLIP and open_clip fakes below use them too
WIDTH, LAYERS, HEADS, MLP_WIDTH, IMAGE, PATCH, EMBED = (
    CLIP_WIDTH,
    2,
    4,
    2 * CLIP_WIDTH,
    CLIP_IMAGE,
    CLIP_PATCH,
    CLIP_EMBED,
)
HEAD_WIDTHS = (EMBED, 24, 12, 8, 4, 1)
ABSENT = "rlhf-bench-tests/absent-model"


def images(batch=2, height=40, width=48, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def assert_scores(scores, batch):
    assert scores.shape == (batch,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()


def assert_gradient_reaches_pixels(reward):
    pixels = images().requires_grad_()
    reward(pixels, PROMPTS).sum().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
