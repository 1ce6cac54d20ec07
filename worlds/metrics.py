"""Metrics more than one world's evaluation uses."""

from __future__ import annotations

import torch


def mean_pairwise_distance(features: torch.Tensor, groups: int) -> float:
    """Mean over groups of the mean pairwise L2 distance within a group. features: (G * K, F), group-major."""
    grouped = features.view(groups, -1, features.shape[1])
    k = grouped.shape[1]
    distances = torch.cdist(grouped, grouped)
    return float((distances.sum(dim=(1, 2)) / (k * (k - 1))).mean())
