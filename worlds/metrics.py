"""Metrics more than one world's evaluation uses."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from worlds.base import JUDGES_AGREE, READER_ONLY


def mean_pairwise_distance(features: torch.Tensor, groups: int) -> float:
    """Mean over groups of the mean pairwise L2 distance within a group. features: (G * K, F), group-major."""
    grouped = features.view(groups, -1, features.shape[1])
    k = grouped.shape[1]
    distances = torch.cdist(grouped, grouped)
    return float((distances.sum(dim=(1, 2)) / (k * (k - 1))).mean())


class _Features(nn.Module):
    """Adapts a judge's feature map to torchmetrics' `feature=` protocol (images in [0, 1])."""

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], num_features: int):
        super().__init__()
        self.features, self.num_features = features, num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


def frechet_distance(
    features: Callable[[torch.Tensor], torch.Tensor], num_features: int, fake: torch.Tensor, real: torch.Tensor
) -> float:
    """FID between two image sets (N, C, H, W) in [0, 1] in a judge's feature space (torchmetrics' computation)."""
    # sync_on_compute=False: in a data-parallel run only the main process evaluates; it must not wait for the others
    fid = FrechetInceptionDistance(feature=_Features(features, num_features), normalize=True, sync_on_compute=False)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


PANEL_METRICS = {JUDGES_AGREE: True, READER_ONLY: False}  # name -> higher is better


def panel_metrics(
    judge: torch.Tensor, second: torch.Tensor, reader: torch.Tensor, mean: Callable[[torch.Tensor], float]
) -> dict[str, float]:
    """A panel's metrics from per-image verdicts (bool tensors: the image satisfies its prompt) of the headline judge,
    the second judge and the rewards' reader, averaged by `mean` as the world averages its headline."""
    return {JUDGES_AGREE: mean(judge == second), READER_ONLY: mean(reader & ~judge & ~second)}
