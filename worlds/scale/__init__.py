"""The scale worlds: diffusers generators (Stable Diffusion 1.5, a latent consistency model, Stable Diffusion 3 and
3.5, FLUX.1-dev) fine-tuned with LoRA against the published reward models, on a prompt set under prompts/.

  scale       the public checkpoints by hub id (SD 1.5, LCM-Dreamshaper-v7, SD3-medium, SD3.5-medium, FLUX.1-dev;
              CLIP ViT-L/14, PickScore, ImageReward, HPSv2.1), read from the local Hugging Face cache, and the LAION
              aesthetic head from artifacts/scale/: nothing is downloaded at run time, and a missing checkpoint fails
              naming the download that fetches it.
  scale-tiny  the same classes at toy sizes with random weights (models/tiny_pipelines.py), built once into
              artifacts/scale-tiny/: the CPU-sized twin that tests and `--smoke` runs use. Never results.

Evaluation (per prompt set, each image scored at its prompt):
  reward      mean of the run's reward;
  clip_score  100 cos(image, prompt) under the evaluation CLIP (ViT-L/14): prompt fidelity, which reward hacking
              (an aesthetic or compressibility reward drifting off the prompt) loses;
  diversity   mean pairwise L2 distance between the unit CLIP image embeddings of a prompt's images.
A world's identity (its model hash) is the SHA-256 of the generator's weight files and of its loading config, so
a result names exactly what it fine-tuned.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.hub import resolve_directory
from models.policy import Policy
from models.prompts import load_prompt_set
from models.scale.config import (
    DiffusersConfig,
    FluxConfig,
    LatentConsistencyConfig,
    StableDiffusion3Config,
    StableDiffusion35Config,
    StableDiffusionConfig,
)
from models.scale.flux import FluxPolicy
from models.scale.lora import ARITHMETIC_VERSION, LoRALatentPolicy
from models.scale.sd3 import StableDiffusion3Policy, StableDiffusion35Policy
from models.scale.unet import LatentConsistencyPolicy, StableDiffusionPolicy
from models.tiny_pipelines import AESTHETIC_WIDTHS, write_tiny_clip, write_tiny_pipelines
from models.tiny_pipelines import RESOLUTION as TINY_RESOLUTION
from rewards.aesthetic import HEAD_FILENAME, random_head
from rewards.clip_score import ClipScoreReward, clip_image_embeddings
from rewards.learned import PromptRewardModel
from rewards.ranking import top_k_per_group
from worlds.metrics import mean_pairwise_distance

POLICIES: dict[type[DiffusersConfig], type[LoRALatentPolicy]] = {
    StableDiffusionConfig: StableDiffusionPolicy,
    LatentConsistencyConfig: LatentConsistencyPolicy,
    StableDiffusion3Config: StableDiffusion3Policy,
    StableDiffusion35Config: StableDiffusion35Policy,
    FluxConfig: FluxPolicy,
}
METRICS = {"reward": True, "clip_score": True, "diversity": True}  # name -> higher is better
PATH_OPTIONS = ("source", "head", "tokenizer_source")
"""The reward options that name weights: relative to the world's directory in a world built here."""
EVAL_BATCH = 32
"""Images per evaluation CLIP forward pass."""
DEMONSTRATION_CANDIDATES = 4
"""Base-model samples per train prompt the annotator chooses its demonstrations from."""
DEMONSTRATION_SEED = 4321
"""Seed of those samples' noise: the same demonstrations for every method and seed of a model."""


@dataclass(frozen=True)
class ScaleWorldConfig:
    models: dict[str, DiffusersConfig]
    """Model name -> how its pipeline is loaded and fine-tuned (source, resolution, LoRA, precision)."""
    rewards: dict[str, dict] = field(default_factory=dict)
    """Reward name -> the options of its `from_pretrained` (where its weights are)."""
    eval_clip: dict = field(default_factory=lambda: {"source": "openai/clip-vit-large-patch14"})
    """Options of the evaluation CLIP (ClipScoreReward.from_pretrained)."""
    prompts: str = "animals"
    """A prompt set under prompts/, or a path (models/prompts.py)."""
    built_here: bool = False
    """True: the sources are paths inside artifacts/<world>/, written by `build_tiny` on first use."""
    demonstration_steps: int | None = None
    """Sampler steps of the base-model samples the annotator demonstrates from; None: each model's default."""
    gpus_per_cell: float = 1.0
    """The GPUs a cell holds on a Ray cluster (bench/ray_backend.py): one, for the published models; none for the tiny
    twin, which runs on any machine's CPU."""

    def families(self) -> dict[str, str]:
        return {name: POLICIES[type(config)].family for name, config in self.models.items()}


# The public checkpoints: the defaults, each trainable at its native resolution in bf16 on one GPU.
AESTHETIC_HEAD = Path(__file__).resolve().parents[1] / "artifacts" / "scale" / HEAD_FILENAME
"""Where the scale world reads the LAION aesthetic head, which no model hub hosts officially (docs/scale.md)."""
SCALE = ScaleWorldConfig(
    models={
        "sd15": StableDiffusionConfig(gradient_checkpointing=True),
        "lcm": LatentConsistencyConfig(gradient_checkpointing=True),
        "sd3": StableDiffusion3Config(gradient_checkpointing=True),
        "sd35": StableDiffusion35Config(gradient_checkpointing=True),
        "flux": FluxConfig(gradient_checkpointing=True),
    },
    rewards={
        "aesthetic": {"source": "openai/clip-vit-large-patch14", "head": str(AESTHETIC_HEAD)},
        "pickscore": {},
        "clip_score": {},
        "imagereward": {},
        "hpsv2": {},
        "jpeg": {},
    },
)

_TINY: dict[str, Any] = dict(resolution=TINY_RESOLUTION, min_vocab=0, dtype="float32")
SCALE_TINY = ScaleWorldConfig(
    models={
        "sd15": StableDiffusionConfig(source="sd", guidance_scale=3.0, **_TINY),
        "lcm": LatentConsistencyConfig(source="lcm", **_TINY),
        "sd3": StableDiffusion3Config(source="sd3", guidance_scale=3.0, lora_rank=4, lora_alpha=4.0, **_TINY),
        "sd35": StableDiffusion35Config(source="sd35", guidance_scale=3.0, lora_rank=4, lora_alpha=4.0, **_TINY),
        "flux": FluxConfig(source="flux", lora_rank=4, lora_alpha=4.0, t5_max_length=8, **_TINY),
    },
    rewards={
        "aesthetic": {"source": "clip", "head": "clip"},
        "pickscore": {"source": "clip", "tokenizer_source": "clip", "min_vocab": 0},
        "clip_score": {"source": "clip", "min_vocab": 0},
        "jpeg": {},
    },
    eval_clip={"source": "clip", "min_vocab": 0},
    built_here=True,
    demonstration_steps=3,
    gpus_per_cell=0.0,
)
"""The scale world's classes at toy sizes (16 px, 8 x 8 latents; no T5 in SD3), for tests and smoke runs. ImageReward
and HPSv2 are left out: their published checkpoints have no tiny form (tests/test_scale_rewards.py covers them)."""

TINY_BUILD_SEED = 0
TINY_WEIGHTS = tuple(
    f"{pipeline}/{component}/{file}"
    for pipeline, components in (
        ("sd", ("unet", "vae", "text_encoder")),
        ("lcm", ("unet", "vae", "text_encoder")),
        ("sd3", ("transformer", "vae", "text_encoder", "text_encoder_2")),
        ("sd35", ("transformer", "vae", "text_encoder", "text_encoder_2")),
        ("flux", ("transformer", "vae", "text_encoder", "text_encoder_2")),
    )
    for component in components
    for file in ["model.safetensors" if component.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"]
) + ("clip/model.safetensors",)
"""Every weight file of the tiny world: it is built when they are all there."""


def build_tiny(directory: Path, log=print) -> None:
    """Writes the tiny world's pipelines and CLIP into `directory`, atomically (a half-built world is never seen);
    a directory missing any weight file is built again."""
    if all((directory / f).is_file() for f in TINY_WEIGHTS):
        return
    log(f"building the tiny scale world into {directory} (once; later runs reuse it)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-"))
    try:
        write_tiny_pipelines(staging, seed=TINY_BUILD_SEED)
        write_tiny_clip(staging / "clip", seed=TINY_BUILD_SEED)
        head = random_head(torch.Generator().manual_seed(TINY_BUILD_SEED + 1), AESTHETIC_WIDTHS)
        torch.save(head, staging / "clip" / HEAD_FILENAME)
        missing = [f for f in TINY_WEIGHTS if not (staging / f).is_file()]
        if missing:  # transformers saves from the main process of a torch.distributed group only
            raise RuntimeError(
                f"building the tiny scale world wrote no {missing[0]}: build it from one process "
                f"(python -m bench models --world scale-tiny)"
            )
        shutil.rmtree(directory, ignore_errors=True)  # an incomplete earlier build
        try:
            staging.rename(directory)
        except OSError:  # another process built it meanwhile: theirs is the same
            if not all((directory / f).is_file() for f in TINY_WEIGHTS):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@functools.cache
def weights_fingerprint(root: Path) -> str:
    """SHA-256 over the weight files under `root` (a pipeline directory): their relative paths and contents. A hub
    snapshot is named by its commit already, so its weights are fingerprinted by that name without reading them."""
    if root.parent.name == "snapshots":
        return hashlib.sha256(f"hub-commit:{root.name}".encode()).hexdigest()
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json")):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


class ScaleWorld:
    metrics = METRICS
    learned_reward_model = PromptRewardModel

    def __init__(self, name: str, config: ScaleWorldConfig, directory: Path | None):
        self.name = name
        self.config = config
        self.directory = directory
        self.prompts = load_prompt_set(config.prompts)
        self._eval_clip: ClipScoreReward | None = None

    def _local(self, options: dict) -> dict:
        if not self.config.built_here:
            return dict(options)
        return {k: str(self.directory / v) if k in PATH_OPTIONS else v for k, v in options.items()}

    def model_config(self, model: str, source: str = "") -> DiffusersConfig:
        """The model's loading config, its source made a path in a world built here, or `source` (a checkpoint of
        one's own: a hub id in the local cache or a pipeline directory) in its place."""
        if model not in self.config.models:
            raise ValueError(f"unknown model {model!r} in world {self.name!r}; valid: {', '.join(self.config.models)}")
        config = self.config.models[model]
        return dataclasses.replace(config, source=source or self._local({"source": config.source})["source"])

    @property
    def device(self) -> torch.device:
        return next(iter(self.config.models.values())).torch_device()

    def checkpoint_root(self, model: str, source: str = "") -> Path:
        """The local pipeline directory of the model (a hub id's cached snapshot); fails naming how to get it."""
        return resolve_directory(self.model_config(model, source).source, "model", ["model_index.json", "*/*"])

    def model_hash(self, model: str, source: str = "") -> str:
        """The weights' fingerprint, the loading config (as declared, device aside) and the arithmetic's version:
        the base model's identity."""
        root = self.checkpoint_root(model, source)
        # what trains is not the base model: a sharded run's id names its full fine-tune (bench/runner.py: RunSpec)
        declared = {
            k: v for k, v in dataclasses.asdict(self.config.models[model]).items() if k not in ("device", "finetune")
        }
        if source:
            declared["source"] = source
        identity = json.dumps(
            {"weights": weights_fingerprint(root), "config": declared, "arithmetic": ARITHMETIC_VERSION},
            sort_keys=True,
            default=list,
        )
        return hashlib.sha256(identity.encode()).hexdigest()

    def make_policy(self, model: str, source: str = "", *, full_finetune: bool = False) -> Policy:
        """A fresh policy: the pipeline's frozen weights with new (zero-effect) LoRA adapters, or with `full_finetune`
        its denoiser's every weight trainable."""
        config = self.model_config(model, source)
        if full_finetune:
            config = dataclasses.replace(config, finetune="full")
        return POLICIES[type(config)].from_pretrained(config=config)

    def reward_options(self, reward: str) -> dict:
        """The keyword arguments that load `reward` in this world: where its weights are, on the generators' device
        (in their precision on a GPU)."""
        if reward not in self.config.rewards:
            raise ValueError(
                f"world {self.name!r} offers no {reward!r} reward; valid: {', '.join(self.config.rewards)}"
            )
        model = next(iter(self.config.models.values()))
        precision = {"dtype": model.weight_dtype()} if self.device.type == "cuda" else {}
        return {**self._local(self.config.rewards[reward]), "device": self.device, **precision}

    def verify(self, log=print) -> None:
        """Loads every generator's pipeline config and every reward once: a missing checkpoint fails here, naming the
        download that fetches it, instead of in the middle of a night's sweep."""
        from rewards import REWARDS

        for model in self.config.models:
            log(f"{model}: {self.checkpoint_root(model)}")
        for reward in self.config.rewards:
            log(f"{reward}: version {REWARDS[reward].from_world(self).version}")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def demonstrations(self, reward, fraction: float, base_policy) -> tuple[torch.Tensor, list[str]]:
        """The annotator's: no image set ships at scale, so the best `fraction` by `reward` of the base model's
        DEMONSTRATION_CANDIDATES samples of each train prompt (its deterministic sampler; the annotator's work, not
        charged to the run). Images on the CPU, prompt-major."""
        prompts = [p for p in self.prompts["train"] for _ in range(DEMONSTRATION_CANDIDATES)]
        generator = torch.Generator().manual_seed(DEMONSTRATION_SEED)
        steps = self.config.demonstration_steps or base_policy.default_steps
        chunks = range(0, len(prompts), EVAL_BATCH)
        with torch.no_grad():
            images = torch.cat(
                [base_policy.sample(prompts[i : i + EVAL_BATCH], steps, generator).images.float().cpu() for i in chunks]
            )
            scores = torch.cat(
                [reward(images[i : i + EVAL_BATCH], prompts[i : i + EVAL_BATCH]).float().cpu() for i in chunks]
            )
        keep = top_k_per_group(scores, len(self.prompts["train"]), max(1, round(fraction * DEMONSTRATION_CANDIDATES)))
        return images[keep], [prompts[i] for i in keep.tolist()]

    def sample_metrics(self, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """None beside score_images'."""
        return {}

    def score_images(
        self, images: torch.Tensor, prompts: list[str], samples_per_prompt: int, reward
    ) -> dict[str, float]:
        """The metrics of one evaluation set of images (prompt-major: each prompt's images are consecutive)."""
        if self._eval_clip is None:
            self._eval_clip = ClipScoreReward.from_pretrained(**self._local(self.config.eval_clip), device=self.device)
        chunks = [(images[i : i + EVAL_BATCH], prompts[i : i + EVAL_BATCH]) for i in range(0, len(prompts), EVAL_BATCH)]
        with torch.no_grad():
            rewards = torch.cat([reward(x, p).float().cpu() for x, p in chunks])
            clip_scores = torch.cat([self._eval_clip(x, p).float().cpu() for x, p in chunks])
            embeddings = torch.cat([clip_image_embeddings(self._eval_clip.model, x).cpu() for x, _ in chunks])
        return {
            "reward": float(rewards.mean()),
            "clip_score": float(clip_scores.mean()),
            "diversity": mean_pairwise_distance(embeddings, len(prompts) // samples_per_prompt),
        }


@dataclass(frozen=True)
class ScaleEntry:
    """A scale world as registered: its generators' and rewards' checkpoints."""

    config: ScaleWorldConfig
    metrics = METRICS
    headline_metric = "clip_score"
    headline_label = "prompt fidelity"
    second_judge_metric = ""
    # a second worker would load a second model onto the same GPU; several GPUs train one run together instead
    cells_side_by_side = False
    takes_sources = True
    shards = True

    @property
    def models(self) -> dict[str, str]:
        return self.config.families()

    @property
    def reward_classes(self) -> dict[str, type]:
        """None of its own: it scores with the published reward models (rewards/)."""
        return {}

    def prompt_group(self, prompt: str) -> str:
        return ""

    @property
    def gpus_per_cell(self) -> float:
        return self.config.gpus_per_cell

    @property
    def rewards(self) -> tuple[str, ...]:
        return tuple(self.config.rewards)

    @property
    def image_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """RGB at each model's resolution."""
        return tuple(sorted({(3, model.resolution, model.resolution) for model in self.config.models.values()}))

    def generator_class(self, model: str) -> type:
        return POLICIES[type(self.config.models[model])]

    def ensure(self, name: str, root: Path, log=print) -> Path:
        """The generators are checkpoints in the model cache: nothing to build, except the tiny twin's toy models."""
        directory = root / name
        if self.config.built_here:
            build_tiny(directory, log)
        return directory

    def prepare(self, name: str, root: Path, log=print, ship: bool = False, workers: int = 1) -> None:
        if ship:
            raise ValueError(f"world {name!r} ships no weights: its generators are checkpoints from the model cache")
        self.load(name, root, log).verify(log)

    def load(self, name: str, root: Path, log=print) -> ScaleWorld:
        from transformers.utils import logging as transformers_logging

        # every run loads its generator afresh: a weight-loading progress bar per run would bury the sweep's own log
        transformers_logging.disable_progress_bar()
        directory = self.ensure(name, root, log)
        return ScaleWorld(name, self.config, directory if self.config.built_here else None)
