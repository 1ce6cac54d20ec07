"""Divergences between the per-step Gaussian transitions of two policies, shared by the methods.

A step's transition is N(mean, std^2 I) over D = C*H*W dimensions. Divergences are summed over
dimensions (they are divergences between the D-dimensional distributions) and returned per sample,
shape (B,); a method decides how to combine steps.
"""
from __future__ import annotations

import torch


def gaussian_kl(mean_p: torch.Tensor, std_p: float | torch.Tensor, mean_q: torch.Tensor,
                std_q: float | torch.Tensor) -> torch.Tensor:
    """KL(N(mean_p, std_p^2 I) || N(mean_q, std_q^2 I)) in closed form: (B, ...) -> (B,)."""
    var_p = torch.as_tensor(std_p, dtype=mean_p.dtype, device=mean_p.device) ** 2
    var_q = torch.as_tensor(std_q, dtype=mean_p.dtype, device=mean_p.device) ** 2
    per_dim = 0.5 * (torch.log(var_q / var_p) + (var_p + (mean_p - mean_q) ** 2) / var_q - 1)
    return per_dim.flatten(1).sum(dim=1)
