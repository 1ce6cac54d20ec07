"""The diffusers families (SD, LCM, SD3, FLUX) on tiny random-initialised models of the real classes, saved in the
pipeline layout and loaded back through `from_pretrained`: offline, on the CPU. Their samplers are checked
against the contract: images in range, log-probabilities reproduced, steps re-evaluated in one call; LoRA, the
reference and the meter (the deterministic samplers against diffusers' own, and loading:
tests/test_diffusers_loading.py)."""

import pytest
import torch
from tiny_diffusers import FAMILIES, PROMPTS, load

from bench.meter import Meter, MeteredPolicy
from models.sampler import Sampler
from models.scale.fused_lora import FusedLoRALinear, fused_lora
from models.scale.lora import adapters_disabled
from models.tiny_pipelines import RESOLUTION


def lora_names(policy) -> set[str]:
    return set(policy.state_dict())


def all_parameters(policy):
    """Every parameter a policy holds, by module: the denoiser's, the VAE's and the text encoders'."""
    modules = {"denoiser": policy.backbone, "vae": policy.vae}
    modules.update({f"text_encoder_{i}": e for i, e in enumerate(policy.text_encoders) if e is not None})
    for prefix, module in modules.items():
        for name, p in module.named_parameters():
            yield prefix, name, p


def train_one_step(policy, seed: int = 3):
    """One Adam step on the family's loss, on images the policy sampled."""
    optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=1e-2)
    with torch.no_grad():
        images = policy.sample(PROMPTS, 2, torch.Generator().manual_seed(seed)).images
    policy.loss(images, PROMPTS, torch.Generator().manual_seed(seed)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# -- the samplers -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_gives_images_in_the_unit_interval(pipelines, family):
    policy = load(pipelines, family)
    with torch.no_grad():
        trajectory = policy.sample(PROMPTS, 3, torch.Generator().manual_seed(0), Sampler(noise=1.0))
    assert policy.image_shape == (3, RESOLUTION, RESOLUTION)
    # the config asks for bfloat16 (the default), which only CUDA gets: on the CPU everything is float32
    assert policy.config.dtype == "bfloat16"
    assert all(p.dtype == torch.float32 for _, _, p in all_parameters(policy))
    assert trajectory.images.shape == (2, *policy.image_shape)
    assert trajectory.latents.shape == (2, 4, *policy.latent_shape)
    assert torch.isfinite(trajectory.images).all()
    assert trajectory.images.min() >= 0 and trajectory.images.max() <= 1


@pytest.mark.parametrize("family, stochastic", [("sd", 3), ("lcm", 2), ("sd3", 2), ("flux", 2)])
def test_recorded_log_probs_are_reproduced_under_unchanged_parameters(pipelines, family, stochastic):
    policy = load(pipelines, family)
    with torch.no_grad():
        trajectory = policy.sample(PROMPTS, 3, torch.Generator().manual_seed(1), Sampler(noise=1.0))
        assert len(trajectory.stochastic_steps) == stochastic
        for s in trajectory.stochastic_steps:
            assert torch.isfinite(trajectory.log_probs[:, s]).all()
            assert torch.allclose(policy.log_prob(trajectory, s), trajectory.log_probs[:, s], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_several_steps_re_evaluated_in_one_network_call_are_each_steps_own_mean(pipelines, family):
    """Policy gradients' batched re-evaluation (step_means) through each family's conditioning and guidance."""
    policy = load(pipelines, family)
    calls: list[int] = []
    with torch.no_grad():
        trajectory = policy.sample(PROMPTS, 3, torch.Generator().manual_seed(1), Sampler(noise=1.0))
        policy.network.register_forward_hook(lambda _module, inputs, _output: calls.append(len(inputs[0])))
        steps = trajectory.stochastic_steps[::-1]
        batched = policy.step_means(trajectory, steps)
        guidance = 2 if policy.guided_by_cfg else 1  # the unconditional half rides along in the same call
        assert calls == [guidance * len(steps) * len(PROMPTS)]
        for s, mean in zip(steps, batched, strict=True):
            assert torch.allclose(mean, policy.step_mean(trajectory, s), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_sampling_pass_keeps_each_steps_mean_differentiable_in_the_adapters(pipelines, family):
    """reuse_sampling_pass's graph (score_graph) through each family's conditioning and guidance: a sampled step's
    mean is its re-evaluated one, and its gradient reaches the LoRA weights."""
    policy = load(pipelines, family)
    with torch.no_grad():
        trajectory = policy.sample(PROMPTS, 3, torch.Generator().manual_seed(1), Sampler(noise=1.0), score_graph=True)
        step = trajectory.stochastic_steps[-1]
        assert torch.allclose(trajectory.mean_graphs[step], policy.step_mean(trajectory, step), rtol=0, atol=1e-5)
    trajectory.mean_graphs[step].square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.trainable_parameters())


# -- LoRA, gradients and the reference ----------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_the_loss_trains_only_the_lora_weights(pipelines, family):
    policy = load(pipelines, family)
    lora = lora_names(policy)
    assert lora and all("lora_" in name for name in lora)
    assert {id(p) for p in policy.trainable_parameters()} == {
        id(p) for name, p in policy.backbone.named_parameters() if name in lora
    }
    images = torch.rand(2, *policy.image_shape, generator=torch.Generator().manual_seed(0))
    loss = policy.loss(images, PROMPTS, torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for module, name, p in all_parameters(policy):
        assert (p.grad is not None) == (module == "denoiser" and name in lora), (module, name)
    # LoRA starts with B = 0, so only B has a gradient at first
    assert any(p.grad.abs().sum() > 0 for name, p in policy.backbone.named_parameters() if "lora_B" in name)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_adapter_is_fused_and_computes_what_peft_computes(pipelines, family):
    from peft.tuners.lora.layer import Linear

    policy = load(pipelines, family, lora_alpha=2.0)  # scaling 1/2: the fused product must carry it
    layers = [m for m in policy.backbone.modules() if isinstance(m, Linear)]
    assert layers and all(isinstance(m, FusedLoRALinear) for m in layers)
    assert len(layers) == len(lora_names(policy)) // 2  # an A and a B each
    generator = torch.Generator().manual_seed(0)
    for layer in layers[:4]:
        for p in layer.lora_B.parameters():
            p.data = torch.randn(p.shape, generator=generator)  # B starts at 0, where the update would vanish
        x = torch.randn(2, 5, layer.in_features, generator=generator, requires_grad=True)
        grad_out = torch.randn(2, 5, layer.out_features, generator=generator)
        base, down = layer.base_layer, layer.lora_A["default"].weight

        def fused(x, layer=layer, base=base, down=down):  # the GPUs' way, on the CPU here
            up = layer.lora_B["default"].weight * layer.scaling["default"]
            return fused_lora(x, base.weight, base.bias, down, up)

        def peft(x, layer=layer):
            return Linear.forward(layer, x)

        results = []
        for forward in (peft, layer.forward, fused):  # peft's own, then merged (the CPU's way), then fused
            output = forward(x)
            params = [x, *layer.lora_A.parameters(), *layer.lora_B.parameters()]
            results.append([output, *torch.autograd.grad(output, params, grad_out)])
        # the merged way sums the adapters' gradients through the (out x in) g^T x: another float order
        for ours, rtol, atol in ((results[1], 1e-4, 1e-5), (results[2], 1e-5, 1e-6)):
            for computed, expected in zip(ours, results[0], strict=True):
                torch.testing.assert_close(computed, expected, rtol=rtol, atol=atol)
        assert not torch.equal(results[0][0], layer.base_layer(x))  # the update is there
        with adapters_disabled(policy.backbone):
            assert torch.equal(layer(x), layer.base_layer(x))


@pytest.mark.parametrize("family", ["sd", "lcm"])
def test_a_unet_on_the_cpu_attends_with_its_softmax_kept_to_diffusers_result_and_gradients(pipelines, family):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from models.scale.attention import KeptSoftmaxAttention

    policy = load(pipelines, family)
    processors = list(policy.backbone.attn_processors.values())
    assert processors and all(type(p) is KeptSoftmaxAttention for p in processors)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, *policy.latent_shape, generator=generator)
    t = torch.tensor([900, 100])
    text = policy._text(PROMPTS)
    grad_out = torch.randn(2, *policy.latent_shape, generator=generator)
    results = []
    for processor in (None, AttnProcessor(), AttnProcessor2_0()):  # ours, then diffusers' classic and SDPA
        if processor is not None:
            policy.backbone.set_attn_processor(processor)
        output = policy.step_output(x, t, text)
        results.append([output, *torch.autograd.grad(output, policy.trainable_parameters(), grad_out)])
    # float order alone: within 2e-5 of each tensor's largest entry (diffusers' two disagree by up to 5e-6)
    for diffusers_result in results[1:]:
        for ours, theirs in zip(results[0], diffusers_result, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5 * theirs.abs().max().item())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_reward_on_the_decoded_images_backpropagates_into_lora(pipelines, family):
    policy = load(pipelines, family)
    trajectory = policy.sample(
        PROMPTS, 2, torch.Generator().manual_seed(0), Sampler(noise=1.0), grad=True, checkpoint=family == "sd"
    )
    # the reward sees only the images: its gradient reaches the chain through the VAE decoder
    (trajectory.images * torch.linspace(-1, 1, RESOLUTION)).mean().backward()
    grads = [p.grad for p in policy.trainable_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for module, _, p in all_parameters(policy) if module != "denoiser")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_reference_keeps_the_base_model_after_training(pipelines, family):
    policy = load(pipelines, family)
    reference = policy.frozen_copy()
    assert reference.trainable_parameters() == [] and reference.vae is policy.vae
    with torch.no_grad():
        trajectory = policy.sample(PROMPTS, 2, torch.Generator().manual_seed(4), Sampler(noise=1.0))
        before = policy.step_mean(trajectory, 0)
    train_one_step(policy)
    with torch.no_grad():
        assert torch.allclose(reference.step_mean(trajectory, 0), before, atol=1e-6)
        assert not torch.allclose(policy.step_mean(trajectory, 0), before, atol=1e-4)
    # the policy's adapters are on again after the reference's call
    assert len(policy.trainable_parameters()) == len(lora_names(policy))
    assert all(p.requires_grad for p in policy.trainable_parameters())


def test_the_reference_under_gradient_checkpointing_is_still_the_base_model(pipelines):
    """diffusers' checkpointing recomputes blocks in the backward pass, after the reference's call has switched
    the adapters back on: the reference's input gradient must still be the base model's."""
    trained = load(pipelines, "sd")
    train_one_step(trained)
    x = torch.randn(2, *trained.latent_shape, generator=torch.Generator().manual_seed(5))
    t = torch.full((2,), 500)

    def input_gradient(policy):
        x_ = x.clone().requires_grad_(True)
        (policy.predict(x_, t, policy._text(PROMPTS)) ** 2).sum().backward()
        return x_.grad

    grads = {}
    for checkpointing in (False, True):
        policy = load(pipelines, "sd", gradient_checkpointing=checkpointing)
        policy.load_state_dict(trained.state_dict())
        grads[checkpointing] = input_gradient(policy.frozen_copy()), input_gradient(policy)
    assert torch.allclose(grads[True][0], grads[False][0], atol=1e-5)  # reference
    assert torch.allclose(grads[True][1], grads[False][1], atol=1e-5)  # policy
    assert not torch.allclose(grads[True][0], grads[True][1], atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_round_trip_carries_only_lora(pipelines, family):
    policy = load(pipelines, family)
    initial = policy.state_dict()
    train_one_step(policy)
    trained = policy.state_dict()
    assert set(trained) == set(initial) and all("lora_" in name for name in trained)
    with torch.no_grad():
        trajectory = policy.sample(PROMPTS, 2, torch.Generator().manual_seed(6), Sampler(noise=1.0))
        trained_mean = policy.step_mean(trajectory, 0)
        fresh = load(pipelines, family)
        assert not torch.allclose(fresh.step_mean(trajectory, 0), trained_mean, atol=1e-4)
        fresh.load_state_dict(trained)
        assert torch.allclose(fresh.step_mean(trajectory, 0), trained_mean, atol=1e-6)
        policy.load_state_dict(initial)
        assert torch.allclose(policy.step_mean(trajectory, 0), policy.frozen_copy().step_mean(trajectory, 0), atol=1e-6)
    with pytest.raises(ValueError, match="not this policy's trained weights"):
        policy.load_state_dict({"unet.conv_in.weight": torch.zeros(1)})


@pytest.mark.parametrize(
    "family, guidance, per_image", [("sd", 3.0, 2), ("sd", 1.0, 1), ("lcm", 3.0, 1), ("sd3", 3.0, 2), ("flux", 3.0, 1)]
)
def test_the_meter_counts_both_halves_of_a_guided_step(pipelines, family, guidance, per_image):
    meter = Meter()
    policy = MeteredPolicy(load(pipelines, family, guidance_scale=guidance), meter)
    with torch.no_grad():
        trajectory = policy.sample(PROMPTS, 3, torch.Generator().manual_seed(0), Sampler(noise=1.0))
    assert meter.usage.nfe == 3 * per_image * len(PROMPTS) and meter.usage.samples == 2
    with torch.no_grad():
        policy.frozen_copy().step_mean(trajectory, 0)  # the reference shares the watched network
    assert meter.usage.nfe == 4 * per_image * len(PROMPTS)
    # the training loss regresses the conditional prediction: one evaluation per image
    policy.loss(trajectory.images, PROMPTS, torch.Generator().manual_seed(0)).backward()
    loss_calls = 2 if family == "lcm" else 1  # consistency training: the target is a second (no-grad) call
    assert meter.usage.nfe == 4 * per_image * len(PROMPTS) + (loss_calls + 2) * len(PROMPTS)
