"""Pipelines from a hub id (the local cache) or a directory in diffusers' layout: their components, tokenizers and
schedules."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.utils.checkpoint

from models.diffusion import NoiseSchedule
from models.scale.config import SD_SCHEDULE


def resolve_source(source: str, allow_patterns: list[str]) -> Path:
    """The local directory of `source`: itself, or a hub id's snapshot (the cache first; downloaded, only the
    files matching `allow_patterns`, when the hub is reachable). Offline and uncached: a ValueError saying how
    to get it."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    path = Path(source).expanduser()
    if path.is_dir():
        return path
    how = (
        f"run `hf download {source}` (`huggingface-cli download {source}` with an older huggingface_hub) "
        f"on a networked machine, or pass a local directory in diffusers' pipeline layout"
    )
    # safetensors only: several hubs' repos also hold .bin and full .ckpt copies of every weight
    ignore = ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.onnx", "*.h5", "*fp16*", "*non_ema*"]
    try:
        return Path(
            snapshot_download(source, allow_patterns=allow_patterns, ignore_patterns=ignore, local_files_only=True)
        )
    except HFValidationError:
        raise ValueError(
            f"model source {source!r} is neither an existing directory nor a hub id (owner/name)"
        ) from None
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise ValueError(
                f"model {source!r} is not in the local Hugging Face cache and the hub is offline "
                f"(HF_HUB_OFFLINE): {how}"
            ) from None
    try:
        return Path(snapshot_download(source, allow_patterns=allow_patterns, ignore_patterns=ignore))
    except LocalEntryNotFoundError as error:  # the hub did not answer
        raise ValueError(
            f"model {source!r} is not in the local Hugging Face cache and could not be downloaded ({error}): {how}"
        ) from None


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
    tokenizer = (cls or AutoTokenizer).from_pretrained(root, subfolder=name)
    if len(tokenizer) < min_vocab:
        raise ValueError(
            f"the tokenizer in {root / name} has only {len(tokenizer)} tokens (min_vocab {min_vocab}): "
            f"it did not load properly (missing vocabulary files?); lower min_vocab only for a "
            f"deliberately tiny tokenizer"
        )
    return tokenizer


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
