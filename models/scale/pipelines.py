"""Pipelines from a hub id (the local cache) or a directory in diffusers' layout: their components, tokenizers and
schedules."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.utils.checkpoint

from models.diffusion import NoiseSchedule
from models.hub import check_vocabulary
from models.scale.config import SD_SCHEDULE


def component_dir(root: Path, name: str) -> Path:
    """root/name, which must exist."""
    folder = root / name
    if not folder.is_dir():
        raise ValueError(
            f"{root} has no {name}/ component: expected diffusers' pipeline layout "
            f"(unet or transformer, vae, text_encoder, tokenizer, ..., scheduler)"
        )
    return folder


def load_tokenizer(root: Path, name: str, min_vocab: int, cls=None):
    """The tokenizer in `root/name`, refused when its vocabulary is smaller than `min_vocab`."""
    from transformers import AutoTokenizer

    component_dir(root, name)
    return check_vocabulary((cls or AutoTokenizer).from_pretrained(root, subfolder=name), min_vocab, str(root / name))


def read_scheduler_config(root: Path) -> dict:
    path = root / "scheduler" / "scheduler_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def noise_schedule_from(root: Path) -> NoiseSchedule:
    """The DDPM training schedule in `root`'s scheduler config (Stable Diffusion's when there is none)."""
    config = read_scheduler_config(root)
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(
            f"{root} predicts {config['prediction_type']!r}; these policies implement epsilon "
            f"prediction (Stable Diffusion 1.x and its LCMs) only"
        )
    if config.get("trained_betas") is not None:
        raise ValueError(
            f"{root}'s scheduler has trained_betas; only linear and scaled_linear schedules are implemented"
        )
    default = SD_SCHEDULE
    return NoiseSchedule(
        num_train_timesteps=config.get("num_train_timesteps", default.num_train_timesteps),
        beta_start=config.get("beta_start", default.beta_start),
        beta_end=config.get("beta_end", default.beta_end),
        steps_offset=config.get("steps_offset", default.steps_offset),
        beta_schedule=config.get("beta_schedule", default.beta_schedule),
    )


def load_component(cls, root: Path, name: str, dtype: torch.dtype):
    component_dir(root, name)
    # diffusers' models take torch_dtype, transformers' dtype; loading in the target dtype halves peak memory
    keyword = "torch_dtype" if cls.__module__.startswith("diffusers") else "dtype"
    return cls.from_pretrained(root, subfolder=name, **{keyword: dtype})
