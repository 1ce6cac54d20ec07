"""Choosing samples by their rewards: RAFT's kept set, and the annotator's demonstrations at scale."""

from __future__ import annotations

import torch


def top_k_per_group(rewards: torch.Tensor, groups: int, k: int) -> torch.Tensor:
    """Indices of the k highest rewards in each group of a (groups * size,) vector laid out group-major.

    rewards: (G * S,) -> (G * k,) indices into rewards, best first within each group.
    """
    if rewards.numel() % groups:
        raise ValueError(f"{rewards.numel()} rewards do not split into {groups} equal groups")
    size = rewards.numel() // groups
    if not 1 <= k <= size:
        raise ValueError(f"k must be in [1, {size}] (the group size), got {k}")
    top = rewards.view(groups, size).topk(k, dim=1).indices
    return (top + torch.arange(groups)[:, None] * size).flatten()
