"""models/scale/attention.py: the transposed products against autograd's derivatives and diffusers' processors."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor

from models.scale.attention import KeptSoftmaxAttention, _KeptSoftmaxCore, attend_with_kept_softmax


def reference_attention(query, key, value, scale):
    """softmax(s Q K^T) V as written, for autograd to differentiate."""
    return torch.softmax(scale * query @ key.transpose(1, 2), dim=-1) @ value


@pytest.mark.parametrize("keys", [5, 7])  # self-attention's square scores, cross-attention's wider ones
@pytest.mark.parametrize("trained", ["qkv", "q", "k", "v"])  # the backward computes only the gradients asked for
def test_the_core_backward_is_autograds_derivative_of_the_forward(keys, trained):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(6, 5, 3, dtype=torch.float64, generator=generator, requires_grad="q" in trained)
    key = torch.randn(6, keys, 3, dtype=torch.float64, generator=generator, requires_grad="k" in trained)
    value = torch.randn(6, keys, 3, dtype=torch.float64, generator=generator, requires_grad="v" in trained)
    assert torch.autograd.gradcheck(lambda q, k, v: _KeptSoftmaxCore.apply(q, k, v, 0.4), (query, key, value))
    ours = _KeptSoftmaxCore.apply(query, key, value, 0.4)
    torch.testing.assert_close(ours, reference_attention(query, key, value, 0.4), rtol=1e-12, atol=1e-12)


def attention_results(module, hidden, context, grad_out):
    output = module(hidden, encoder_hidden_states=context)
    inputs = [hidden] + ([context] if context is not None else [])
    return [output, *torch.autograd.grad(output, [*inputs, *module.parameters()], grad_out)]


@pytest.mark.parametrize("cross", [False, True])
def test_the_processor_computes_what_diffusers_classic_processor_computes(cross):
    torch.manual_seed(0)
    module = Attention(query_dim=64, heads=8, dim_head=8, cross_attention_dim=32 if cross else None, out_bias=True)
    hidden = torch.randn(4, 64, 64, requires_grad=True)
    context = torch.randn(4, 77, 32, requires_grad=True) if cross else None
    grad_out = torch.randn(4, 64, 64)
    results = []
    for processor in (KeptSoftmaxAttention(), AttnProcessor()):
        module.set_processor(processor)
        results.append(attention_results(module, hidden, context, grad_out))
    for ours, classic in zip(*results, strict=True):
        torch.testing.assert_close(ours, classic, rtol=1e-5, atol=1e-6)


def test_modules_that_do_more_than_plain_attention_keep_the_classic_processor():
    plain = Attention(query_dim=16, heads=2, dim_head=8)
    residual = Attention(query_dim=16, heads=2, dim_head=8, residual_connection=True)
    model = torch.nn.ModuleList([plain, residual])
    attend_with_kept_softmax(model)
    assert type(plain.processor) is KeptSoftmaxAttention and type(residual.processor) is AttnProcessor


def test_a_mask_is_refused_with_a_message_naming_it():
    module = Attention(query_dim=16, heads=2, dim_head=8)
    module.set_processor(KeptSoftmaxAttention())
    with pytest.raises(ValueError, match="unmasked .* got a mask"):
        module(torch.randn(2, 4, 16), attention_mask=torch.zeros(2, 4, 4))
