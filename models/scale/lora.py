"""What the diffusers families share: LoRA adapters on a frozen denoiser (or the whole denoiser, trained fully) in a
VAE's latent space, cached text conditioning, classifier-free guidance, mixed precision, the reference, and the
sharding of a full fine-tune over processes."""

from __future__ import annotations

import contextlib
import copy
import warnings
from abc import abstractmethod
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.utils.checkpoint
from torch import nn

from models.diffusion import NoiseSchedule
from models.hub import resolve_directory
from models.policy import ChainPolicy, images_to_model_space, model_space_to_images
from models.scale.config import DECODE_BATCH, DiffusersConfig

ARITHMETIC_VERSION = 4
"""The version of how the families compute, part of a base model's identity (ScaleWorld.model_hash): a change of float
order moves every run's numbers, so runs under another are other runs. 2: the adapters' update fused into one product
(fused_lora.py), and on the CPU the UNets' attention at latents up to 32 x 32 by diffusers' classic processor
(unet.py). 3: on the CPU the adapters' update merged into the base layer's weight (fused_lora.py). 4: on the CPU the
UNets' attention's products transposed and its scale on the queries (attention.py)."""


class Conditioning(NamedTuple):
    """The text inputs of the network for B prompts, and those of the empty prompt (guidance's null condition)."""

    context: torch.Tensor  # (B, L, D): the tokens the network cross-attends to
    pooled: torch.Tensor | None  # (B, P): SD3's pooled CLIP projections; None for the UNets
    null_context: torch.Tensor | None  # (1, L, D), None without guidance
    null_pooled: torch.Tensor | None  # (1, P)


@contextmanager
def adapters_disabled(model: nn.Module):
    """`model` (a diffusers model with peft adapters) predicts as its base model inside the block."""
    model.disable_adapters()
    try:
        yield
    finally:
        model.enable_adapters()


REFERENCE_ADAPTER = "reference"
"""The adapter a LoRA policy's reference gets once it is set to weights other than the base model's (GARDO resets its
reference to the current policy): the policy's own adapter is peft's "default"."""


@contextmanager
def adapter_active(model: Any, name: str, trained: list[nn.Parameter]):
    """`model` predicts with its adapter `name` inside the block. peft's set_adapter also makes the active adapter the
    trainable one; the flags are put back at once, so that only `trained` (the policy's adapter) takes a gradient."""

    def switch(to: str) -> None:
        model.set_adapter(to)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in trained:
            parameter.requires_grad_(True)

    switch(name)
    try:
        yield
    finally:
        switch("default")


@contextmanager
def checkpointing_suspended(model: nn.Module):
    """Switches off diffusers' gradient checkpointing inside `model` for the block. Its recomputation runs in
    the backward pass, outside the block that switched the adapters off: a reference forward would be recomputed
    with the adapters on (another graph, which torch refuses with a CheckpointError)."""
    modules = [m for m in model.modules() if getattr(m, "gradient_checkpointing", None) is True]
    for m in modules:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in modules:
            m.gradient_checkpointing = True


def denoiser_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a diffusers denoiser, in order: the items of its `*blocks` module lists (a UNet's
    down_blocks and up_blocks, a transformer's transformer_blocks and single_transformer_blocks) and a UNet's
    mid_block: FSDP2's units, each gathered whole for its forward and backward and freed after."""
    blocks = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList) and name.endswith("blocks"):
            blocks += list(child)
        elif name == "mid_block" and child is not None:
            blocks.append(child)
    return blocks


class LoRALatentPolicy(ChainPolicy):
    """What the diffusers families share: LoRA (or the whole denoiser trained), the VAE's latent space, cached text
    conditioning, guidance, mixed precision and the reference. A family passes its network wrapped so that it returns
    a tensor (UNetDenoiser, SD3Denoiser) and implements `_encode_prompts`."""

    Config = DiffusersConfig
    guided_by_cfg = True
    """Whether `predict` runs classifier-free guidance (LCM conditions on w instead)."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, source: str | Path | None = None, *, config=None) -> LoRALatentPolicy:
        """The family's pipeline from `source` (a hub id in the local cache, or a directory), or from `config`'s
        source, with fresh LoRA adapters on its denoiser."""

    def __init__(
        self,
        network: nn.Module,
        vae: nn.Module,
        text_encoders: list,
        tokenizers: list,
        config: DiffusersConfig,
        schedule: NoiseSchedule | None = None,
    ):
        super().__init__(network, None, schedule)
        self.config = config
        self.vae = vae
        self.text_encoders = list(text_encoders)
        self.tokenizers = list(tokenizers)
        self.image_shape = (3, config.resolution, config.resolution)
        self._shift_factor = float(vae.config.get("shift_factor") or 0.0)
        self._scaling_factor = float(vae.config.scaling_factor)
        self._is_reference = False
        self._reference_adapter = False
        """A LoRA reference set to weights of its own: the REFERENCE_ADAPTER's (False: the base model, adapters off)."""
        self._policy_adapter: list[nn.Parameter] = []
        """A LoRA reference's policy's adapter weights: what alone takes gradients when its own adapter is active."""
        self._reference_network: nn.Module | None = None
        """A full fine-tune's reference: the base denoiser, frozen in `dtype` (None with LoRA, whose reference is the
        same modules with the adapters off)."""
        self._embeddings: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

        device, dtype = config.torch_device(), config.weight_dtype()
        self._autocast_dtype = dtype if dtype != torch.float32 else None
        for module in [network, vae, *self.text_encoders]:
            if module is not None:
                module.to(device).eval().requires_grad_(False)
                # only modules built in float32 here: from_pretrained loads in dtype already, keeping the layers a
                # model needs in float32 (T5's feed-forward output overflows in float16), which a cast would undo
                if dtype != torch.float32 and all(p.dtype == torch.float32 for p in module.parameters()):
                    module.to(dtype=dtype)
        if config.finetune == "full":
            self._train_fully()
        else:
            self._add_lora()
        if config.gradient_checkpointing:
            self.backbone.enable_gradient_checkpointing()
            vae.enable_gradient_checkpointing()

    @property
    def backbone(self) -> nn.Module:
        """The diffusers model inside the network wrapper, which carries the adapters."""
        return self.network.model

    def _add_lora(self) -> None:
        from peft import LoraConfig

        from models.scale.fused_lora import fuse_adapters  # imports peft

        cfg = self.config
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            target_modules=list(cfg.lora_target_modules),
            init_lora_weights="gaussian",
        )
        try:
            self.backbone.add_adapter(lora)
        except ValueError as error:
            raise ValueError(
                f"lora_target_modules {list(cfg.lora_target_modules)} do not fit the "
                f"{type(self.backbone).__name__}: {error}"
            ) from error
        fuse_adapters(self.backbone)
        # peft marks the adapters, and only them, trainable; they train in float32 whatever the frozen dtype
        self._trained = [(name, p) for name, p in self.backbone.named_parameters() if p.requires_grad]
        for _, p in self._trained:
            p.data = p.data.float()

    def _train_fully(self) -> None:
        """Every weight of the denoiser trains, in float32 (master weights: on CUDA the forward runs in `dtype` under
        autocast, or in FSDP2's mixed precision when sharded); the base denoiser stays beside it as the reference."""
        self._reference_network = copy.deepcopy(self.network)
        self.network.float().requires_grad_(True)
        self._trained = list(self.backbone.named_parameters())

    def shard(self, shard_module: Callable[[nn.Module, torch.dtype], None]) -> None:
        """Shards a full fine-tune's denoiser and its reference over the processes: `shard_module` (FSDP2's
        fully_shard with the run's mesh, bench/parallel.py) on each block, then on the model, whose unit takes the
        rest (embeddings, final norm and projection), each computing in the frozen weights' dtype. Call before an
        optimizer holds the parameters: sharding replaces them."""
        if self._reference_network is None:
            raise ValueError(
                f"sharding splits a full fine-tune over processes; this policy trains LoRA adapters "
                f"(finetune={self.config.finetune!r}): use finetune='full'"
            )
        for network in (self.network, self._reference_network):
            model = network.get_submodule("model")
            for block in denoiser_blocks(model):
                shard_module(block, self.config.weight_dtype())
            shard_module(model, self.config.weight_dtype())
        self._trained = list(self.backbone.named_parameters())

    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    # -- text ---------------------------------------------------------------------------------------------
    @abstractmethod
    def _encode_prompts(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Each prompt's (context (L, D), pooled (P,) or None); called without gradients."""

    def _text(self, prompts: list[str]) -> Conditioning:
        """The prompts' conditioning on the policy's device; embeddings are cached per prompt (on the CPU:
        SD3's with T5 take ~2.7 MB each) since the encoders are frozen and prompt sets are reused."""
        guided = self.guided_by_cfg and self.config.guidance_scale > 1
        wanted = set(prompts) | ({""} if guided else set())
        missing = sorted(p for p in wanted if p not in self._embeddings)
        if missing:
            # no autocast: the encoders' weights are all in their own dtypes, and autocast would push the layers
            # transformers keeps in float32 back to half precision
            with torch.no_grad():
                encoded = self._encode_prompts(missing)
            for prompt, (context, pooled) in zip(missing, encoded):
                self._embeddings[prompt] = (context.cpu(), None if pooled is None else pooled.cpu())

        def stack(items):
            return None if items[0] is None else torch.stack(items).to(self.device)

        contexts, pooled = zip(*(self._embeddings[p] for p in prompts))
        null = self._embeddings[""] if guided else (None, None)
        return Conditioning(
            stack(contexts),
            stack(pooled),
            None if null[0] is None else null[0][None].to(self.device),
            None if null[1] is None else null[1][None].to(self.device),
        )

    # -- the network --------------------------------------------------------------------------------------
    def _network_inputs(self, text: Conditioning, cfg: bool) -> list[torch.Tensor]:
        """The network's conditioning arguments: (B, ...) each, or (2B, ...) as [null, prompts] under guidance."""

        def batch(cond, null):
            return torch.cat([null.expand_as(cond), cond]) if cfg else cond

        inputs = [batch(text.context, text.null_context)]
        if text.pooled is not None:
            inputs.append(batch(text.pooled, text.null_pooled))
        return inputs

    def predict(self, x, t, text, network=None, *, guided=True):
        network = self.network if network is None else network
        cfg = guided and self.guided_by_cfg and self.config.guidance_scale > 1
        inputs = self._network_inputs(text, cfg)
        if cfg:  # one call on [null, cond]: the meter sees the 2B evaluations it costs
            x, t = torch.cat([x, x]), torch.cat([t, t])
        out = self._forward(network, x, t, *inputs).float()
        if not cfg:
            return out
        uncond, cond = out.chunk(2)
        return uncond + self.config.guidance_scale * (cond - uncond)

    def _forward(self, network: nn.Module, *args) -> torch.Tensor:
        if not self._is_reference or self._reference_network is not None:  # its own network, as it is
            with self._autocast():
                return network(*args)
        if torch.is_grad_enabled() and self.config.gradient_checkpointing:
            # checkpoint the whole reference call instead, so that its recomputation runs with the adapters off too
            return torch.utils.checkpoint.checkpoint(self._reference_forward, network, *args, use_reentrant=False)
        return self._reference_forward(network, *args)

    def _reference_forward(self, network: nn.Module, *args) -> torch.Tensor:
        """A LoRA reference's call: the shared modules with the adapters off, or with its own adapter active."""
        adapters = (
            adapter_active(self.backbone, REFERENCE_ADAPTER, self._policy_adapter)
            if self._reference_adapter
            else adapters_disabled(self.backbone)
        )
        with adapters, checkpointing_suspended(self.backbone), self._autocast():
            return network(*args)

    # -- latent space -------------------------------------------------------------------------------------
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] from latents x (B, *latent_shape): the VAE decoder on
        x / scaling_factor + shift_factor, differentiable (reward gradients reach the chain through it)."""
        latents = x / self._scaling_factor + self._shift_factor
        # without a graph to keep, a few images at a time: a 1024 px decode holds GBs of activations per image
        chunk = len(latents) if torch.is_grad_enabled() else DECODE_BATCH
        with self._autocast():
            images = torch.cat([self.vae.decode(part, return_dict=False)[0] for part in latents.split(chunk)])
        return model_space_to_images(images.float())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents (B, *latent_shape) of images (B, 3, H, W) in [0, 1]: the mean of the VAE encoder's
        distribution, (z - shift_factor) * scaling_factor. Without gradients: the VAE is frozen and the losses
        only noise these latents, so keeping the encoder's activations would waste memory."""
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"images must be (B, {', '.join(map(str, self.image_shape))}) in [0, 1], got {tuple(images.shape)}"
            )
        with torch.no_grad(), self._autocast():
            posterior = self.vae.encode(images_to_model_space(images.to(self.device)), return_dict=False)[0]
        return (posterior.mean.float() - self._shift_factor) * self._scaling_factor

    # -- parameters ---------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The LoRA weights, or a full fine-tune's every denoiser weight (none for a reference)."""
        return [] if self._is_reference else [p for _, p in self._trained]

    def frozen_copy(self) -> LoRALatentPolicy:
        """The reference policy: the base model, with the same prompt cache. With LoRA, the same modules and meter
        hooks called with the adapters off (no weights are copied); in a full fine-tune, the base denoiser kept
        beside the trained one. It has no trainable parameters."""
        reference = copy.copy(self)
        reference._is_reference = True
        if self._reference_network is None:
            # the base model until it is loaded with weights (`load_state_dict`); the policy's adapter kept aside
            reference._trained, reference._policy_adapter = [], [p for _, p in self._trained]
        else:
            # its weights by the policy's names: loading the policy's state makes it the current policy (GARDO's reset)
            reference.network = self._reference_network
            reference._trained = list(self._reference_network.get_submodule("model").named_parameters())
        return reference

    def state_dict(self) -> dict:
        """The trained weights only (LoRA's, or the whole denoiser's), by parameter name."""
        return {name: p.detach().clone() for name, p in self._trained}

    def load_state_dict(self, state: dict) -> None:
        if self._is_reference and self._reference_network is None and state and not self._reference_adapter:
            self._add_reference_adapter(list(state))
        own = dict(self._trained)
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"not this policy's trained weights: {len(missing)} missing (e.g. {missing[:1]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:1]}); a state_dict from a policy "
                f"with the same model, finetune and lora_target_modules is valid"
            )
        wrong = [name for name, p in own.items() if tuple(state[name].shape) != tuple(p.shape)]
        if wrong:
            raise ValueError(
                f"weight {wrong[0]} is {tuple(state[wrong[0]].shape)}, this policy's is "
                f"{tuple(own[wrong[0]].shape)}: saved with another lora_rank?"
            )
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(state[name])

    def _add_reference_adapter(self, names: list[str]) -> None:
        """Gives a LoRA reference an adapter of its own beside the policy's (on the same modules, trained by no one),
        its weights by the policy's adapter's names, so that it can hold the policy's weights of another time."""
        backbone: Any = self.backbone  # a diffusers model with peft's adapter methods
        if REFERENCE_ADAPTER not in getattr(backbone, "peft_config", {}):
            with warnings.catch_warnings():  # peft warns of a second adapter, which is the point here
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                backbone.add_adapter(backbone.peft_config["default"], adapter_name=REFERENCE_ADAPTER)
            backbone.set_adapter("default")  # add_adapter activates the new one
        own = dict(backbone.named_parameters())
        suffix = {name: name.replace(".default.", f".{REFERENCE_ADAPTER}.") for name in names}
        missing = [name for name in names if suffix[name] not in own]
        if missing:
            raise ValueError(f"not this policy's LoRA weights (e.g. {missing[0]}): a reference takes its policy's")
        self._trained = [(name, own[suffix[name]]) for name in names]
        for _, p in self._trained:
            p.data = p.data.float()
            p.requires_grad_(False)
        self._reference_adapter = True

    # -- loading ------------------------------------------------------------------------------------------
    @staticmethod
    def _latent_side(config: DiffusersConfig, vae, denoiser_factor: int) -> int:
        vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        multiple = vae_factor * denoiser_factor
        if config.resolution % multiple:
            raise ValueError(
                f"resolution must be a multiple of {multiple} for this model (the VAE downsamples by "
                f"{vae_factor}, the denoiser by {denoiser_factor}), got {config.resolution}"
            )
        return config.resolution // vae_factor

    @classmethod
    def _configure(cls, source, config) -> DiffusersConfig:
        """The family's config (its defaults if None) with `source`, when given, in place of its own."""
        config = config or cls.Config()
        if not isinstance(config, cls.Config):
            raise ValueError(f"{cls.__name__} takes a {cls.Config.__name__}, got a {type(config).__name__}")
        return config if source is None else replace(config, source=str(source))

    @staticmethod
    def _root(config: DiffusersConfig, components: list[str]) -> Path:
        """The pipeline directory of `config.source`, holding (at least) `components`."""
        return resolve_directory(config.source, "model", ["model_index.json"] + [f"{name}/*" for name in components])
