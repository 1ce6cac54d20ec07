"""The flow-matching error of a velocity at a point of the forward path, the likelihood surrogate of the methods that
train a flow model on its own samples with the pretraining loss (awm, dgpo)."""

from __future__ import annotations

import torch


def flow_matching_error(velocity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """l = ||v - target||^2 averaged over dimensions: (B, ...) -> (B,); -l is the sample's log-likelihood surrogate
    (its ELBO, up to constants and the weighting over t)."""
    return (velocity - target).pow(2).flatten(1).mean(dim=1)
