"""The UNets' attention on the CPU: the softmax kept for the backward, every product in the orientation MKL runs fast.

Per head, with Q (N, d), K and V (M, d) and s = d^-1/2:

    S = s Q K^T,   P = softmax(S) (over each row),   O = P V,

and backward from dO:

    dP = dO V^T,   dV = P^T dO,   dS = P * (dP - rowsum(dP * P)),   dQ = s dS K,   dK = s dS^T Q.

At the UNets' small head dimensions MKL's batched product is several times slower when it writes a long-by-d result
(rows the sequence, columns the head dimension) than when it writes the d-by-long transpose of the same result: on
256 heads of 64 queries and keys with d = 8 (the tiny SD pipeline of bench/throughput/cpu.py, one thread) P V takes
0.86 ms and (V^T P^T)^T 0.28. Diffusers' classic processor writes three of the six products long-by-d (O, dV and
dQ); this computes their transposes, O^T = V^T P^T, dV^T = dO^T P and dQ^T = s K^T dS^T, and returns transposed
views. The scale multiplies Q (N x d) rather than S (N x M): S = (s Q) K^T, and dK^T = (s Q)^T dS. On that pipeline a
UNet forward and backward of the 32-state guided batch takes 183 ms instead of 209 (the median ratio of 10 pairs
alternating in one process, 1.165, 10 of 10 faster).

Like the classic processor it keeps P (M floats per query and head) for the backward where SDPA's flash kernel
recomputes it; unet.py installs it only at latents up to 32 x 32, where keeping is the cheaper trade. Only the float
order differs from diffusers' processors. It computes the plain attention of the UNets' transformer blocks: modules
with a group or spatial norm, a residual connection, a rescaled output, a normed context, or half-precision weights
that upcast keep the classic processor (`attend_with_kept_softmax`).
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor
from torch import nn


class _KeptSoftmaxCore(torch.autograd.Function):
    """softmax(s Q K^T) V for Q (BH, N, d), K and V (BH, M, d): the module docstring's equations."""

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
        scaled_query = query * scale
        probabilities = torch.bmm(scaled_query, key.transpose(1, 2)).softmax(-1)
        ctx.save_for_backward(scaled_query, key, value, probabilities)
        ctx.scale = scale
        return torch.bmm(value.transpose(1, 2), probabilities.transpose(1, 2)).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # pyright: ignore[reportIncompatibleMethodOverride]
        scaled_query, key, value, probabilities = ctx.saved_tensors
        needs_query, needs_key, needs_value, _ = ctx.needs_input_grad
        grad_query = grad_key = grad_value = None
        if needs_value:
            grad_value = torch.bmm(grad_out.transpose(1, 2), probabilities).transpose(1, 2)
        if needs_query or needs_key:
            grad_probabilities = torch.bmm(grad_out, value.transpose(1, 2))
            grad_scores = torch._softmax_backward_data(grad_probabilities, probabilities, -1, probabilities.dtype)
            if needs_query:
                grad_query = torch.bmm(key.transpose(1, 2), grad_scores.transpose(1, 2)).mul_(ctx.scale).transpose(1, 2)
            if needs_key:
                grad_key = torch.bmm(scaled_query.transpose(1, 2), grad_scores).transpose(1, 2)
        return grad_query, grad_key, grad_value, None


class KeptSoftmaxAttention(AttnProcessor):
    """A diffusers attention processor for plain attention modules (`is_plain`): the module docstring's products, in
    place of the classic processor's."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **_,
    ) -> torch.Tensor:
        to_k, to_v, to_out = attn.to_k, attn.to_v, attn.to_out
        if to_k is None or to_v is None or to_out is None:
            raise ValueError("KeptSoftmaxAttention needs a module with key, value and output projections (is_plain)")
        if attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError(
                "KeptSoftmaxAttention attends unmasked (batch, tokens, channels) inputs; got "
                f"{'a mask and ' if attention_mask is not None else ''}inputs of shape {tuple(hidden_states.shape)}"
            )
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(to_k(context))
        value = attn.head_to_batch_dim(to_v(context))
        out = attn.batch_to_head_dim(_KeptSoftmaxCore.apply(query, key, value, attn.scale))
        return to_out[1](to_out[0](out))


def is_plain(module: Attention) -> bool:
    """Whether the module computes to_out(softmax(s Q K^T) V) of its input and nothing else, in its weights' dtype."""
    weights_dtype = next(module.parameters()).dtype
    return (
        module.to_k is not None
        and module.to_v is not None
        and module.to_out is not None
        and module.spatial_norm is None
        and module.group_norm is None
        and module.norm_cross is None
        and not module.residual_connection
        and module.rescale_output_factor == 1.0
        and (weights_dtype == torch.float32 or not (module.upcast_attention or module.upcast_softmax))
    )


def attend_with_kept_softmax(model: nn.Module) -> None:
    """Every attention module of `model` keeps its softmax for the backward: plain ones through
    KeptSoftmaxAttention, the others through diffusers' classic processor."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(KeptSoftmaxAttention() if is_plain(module) else AttnProcessor())
