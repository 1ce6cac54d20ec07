"""The LoRA adapters' forward computed as one product with the base layer's on the CPU, fused into one elsewhere.

peft's lora.Linear computes y = W x + b + (B (A x)) s as result + lora_B(lora_A(x)) * scaling: beside the rank-r
products, a pass over the (tokens, out) output for the scaling and another for the sum, forward, and the product's
pass again backward. FusedLoRALinear computes the same function in one of two ways:

- on the CPU, merged: linear(x, W + s B A, b). The rank-r products are the slow part of a CPU layer (a 2,048 x 64 by
  64 x 4 product runs at a fraction of a square one's rate), and merging leaves one product forward and two backward
  (dx = g (W + s B A) and d(W + s B A) = g^T x, from which dA = s B^T d(.) and dB = s d(.) A^T). On the tiny SD
  pipeline of bench/throughput/cpu.py (one thread) a 64 -> 64 projection of 2,048 tokens takes 0.59 ms forward and
  backward instead of 0.72 fused, a 32 -> 64 one of 2,464 tokens 0.38 instead of 0.63, and a DDPO step runs about 9%
  faster reusing its sampling pass and 13% re-evaluating (median ratios of 14 and 8 pairs of steps alternating
  the two ways in one process);
- elsewhere (GPUs), fused: addmm(W x + b, A x, (s B)^T), the scaling on the r x out matrix B and the sum inside the
  product (beta = 1), so the output is written once (about 3% of a reusing DDPO step against peft's forward on the
  CPU, the median of 8 steps alternating in one process). Merging there would add a full (out x in) weight gradient, a
  second large product in every layer's backward, where the rank-r products are cheap.

Either way only the float order changes. Every other case is peft's own forward: adapters disabled or merged, several
active adapters, dropout, DoRA and the other variants, extra arguments, and inputs whose dtype differs from the
weights' outside autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear
from torch import nn


class FusedLoRALinear(Linear):
    """peft's LoRA linear layer (every attribute, adapter and state-dict name its own) with the plain adapter's
    forward fused (module docstring)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        plain = self._plain_adapter(x, args, kwargs)
        if plain is None:
            return super().forward(x, *args, **kwargs)
        base, down, up, scaling = plain
        combine = merged_lora if x.device.type == "cpu" else fused_lora
        return combine(x, base.weight, base.bias, down.weight, up.weight * scaling)

    def _plain_adapter(
        self, x: torch.Tensor, args: tuple, kwargs: dict
    ) -> tuple[nn.Linear, nn.Linear, nn.Linear, float] | None:
        """The base layer, the one active adapter's A and B and its scaling when it is plain LoRA on a plain call,
        else None (peft's forward then runs)."""
        if args or kwargs or self.disable_adapters or self.merged or self.fan_in_fan_out:
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_variant:
            return None
        adapter = active[0]
        base, down, up = self.base_layer, self.lora_A[adapter], self.lora_B[adapter]
        if not isinstance(self.lora_dropout[adapter], nn.Identity):
            return None
        if not (isinstance(base, nn.Linear) and isinstance(down, nn.Linear) and isinstance(up, nn.Linear)):
            return None
        if len({x.dtype, base.weight.dtype, down.weight.dtype}) > 1 and not torch.is_autocast_enabled(x.device.type):
            return None
        return base, down, up, self.scaling[adapter]


def merged_lora(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, down: torch.Tensor, up: torch.Tensor
) -> torch.Tensor:
    """W x + b + up (down x) as one product: linear(x, W + up down, b) (module docstring: the CPU's way)."""
    return F.linear(x, torch.addmm(weight, up, down), bias)


def fused_lora(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, down: torch.Tensor, up: torch.Tensor
) -> torch.Tensor:
    """W x + b + up (down x) with the update summed inside its product: addmm(W x + b, down x, up^T)."""
    result = F.linear(x, weight, bias)
    update = F.linear(x, down)
    fused = torch.addmm(result.reshape(-1, result.shape[-1]), update.reshape(-1, update.shape[-1]), up.t())
    return fused.view(result.shape)


def fuse_adapters(model: nn.Module) -> None:
    """Makes every peft LoRA linear layer of `model` a FusedLoRALinear, in place."""
    for layer in [m for m in model.modules() if type(m) is Linear]:
        layer.__class__ = FusedLoRALinear
