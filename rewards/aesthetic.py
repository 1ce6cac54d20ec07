"""`aesthetic`: the LAION aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor), differentiable.

score = MLP(e / |e|), e = CLIP ViT-L/14 image embedding (OpenAI's `openai/clip-vit-large-patch14`, through
transformers' `CLIPModel.get_image_features`), the MLP trained on SAC + LAION-Logos + AVA ratings
(checkpoint `sac+logos+ava1-l14-linearMSE.pth`; scores are on the 1-10 rating scale). This is the reward of
DDPO's aesthetic task.

The MLP (`ScoreMLP`, shared with ImageReward, whose head copies it) is the repository's `MLP`:

    layers = Sequential(Linear(768, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2),
                        Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1))

with no nonlinearity: the ReLUs are commented out in the reference code, so the trained head is an affine map
in effect. It is kept as five layers so the published weights load one to one.

Checkpoint key mapping (`head_state_dict`): the published .pth is the plain `state_dict()` of that module,
keys `layers.{0,2,4,6,7}.{weight,bias}` (indices 1, 3, 5 are the parameterless Dropouts). `ScoreMLP` keeps the
same `layers` Sequential, so the mapping is the identity on those ten keys; it exists to check the key set
(a missing or extra key is an error, not a silent partial load) and to strip a prefix (ImageReward stores the
same head under `mlp.`). Layer widths are read from the weight shapes.

On disk: `source` is the CLIP backbone, a hub id in the local Hugging Face cache (`huggingface-cli download
openai/clip-vit-large-patch14`) or a `CLIPModel.save_pretrained` directory; `head` is the path to
`sac+logos+ava1-l14-linearMSE.pth` (from the improved-aesthetic-predictor GitHub repository), a directory
holding it, or a hub id whose cached snapshot holds it. The authors publish it on GitHub, not under an official
hub id, so it has no default and must be passed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from models.hub import resolve_file
from rewards.clip_score import check_batch, clip_image_embeddings, freeze, load_frozen

DEFAULT_SOURCE = "openai/clip-vit-large-patch14"
HEAD_FILENAME = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor"
# Positions of the Linear layers in the published `layers` Sequential (the others are Dropouts).
LINEAR_INDICES = (0, 2, 4, 6, 7)
HEAD_KEYS = tuple(f"layers.{i}.{p}" for i in LINEAR_INDICES for p in ("weight", "bias"))
PUBLISHED_WIDTHS = (768, 1024, 128, 64, 16, 1)


class ScoreMLP(nn.Module):
    """The aesthetic-predictor / ImageReward head: (B, widths[0]) -> (B,). See the module docstring."""

    def __init__(self, widths: Sequence[int] = PUBLISHED_WIDTHS):
        super().__init__()
        if len(widths) != 6 or widths[-1] != 1 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be six positive sizes ending in 1 (e.g. {PUBLISHED_WIDTHS}), got {widths}")
        w = [int(x) for x in widths]
        self.layers = nn.Sequential(
            nn.Linear(w[0], w[1]),
            nn.Dropout(0.2),
            nn.Linear(w[1], w[2]),
            nn.Dropout(0.2),
            nn.Linear(w[2], w[3]),
            nn.Dropout(0.1),
            nn.Linear(w[3], w[4]),
            nn.Linear(w[4], w[5]),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> ScoreMLP:
        """A head with the widths and weights of a `head_state_dict` result."""
        widths = [state_dict["layers.0.weight"].shape[1]] + [
            state_dict[f"layers.{i}.weight"].shape[0] for i in LINEAR_INDICES
        ]
        head = cls(widths)
        try:
            head.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            raise ValueError(
                f"head weights do not chain into one MLP (widths {widths}): {' '.join(str(error).split())[:300]}"
            ) from error
        return head


def random_head(generator: torch.Generator, widths: Sequence[int], prefix: str = "") -> dict[str, torch.Tensor]:
    """A state dict in the published head's layout (linear layers 0, 2, 4, 6, 7) at the given widths, with random
    weights: what the tiny scale world and the tests load in place of the published file."""
    state = {}
    for (fan_in, fan_out), i in zip(zip(widths[:-1], widths[1:]), LINEAR_INDICES):
        state[f"{prefix}layers.{i}.weight"] = torch.randn(fan_out, fan_in, generator=generator) / math.sqrt(fan_in)
        state[f"{prefix}layers.{i}.bias"] = 0.1 * torch.randn(fan_out, generator=generator)
    return state


def head_state_dict(published: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Published head weights -> `ScoreMLP` state dict.

    `published[prefix + "layers.{i}.{weight,bias}"]` -> `"layers.{i}.{weight,bias}"` for i in 0, 2, 4, 6, 7
    (identity after the prefix). Keys outside `prefix` are ignored; under it, a missing or unexpected key is a
    ValueError.
    """
    under = {key[len(prefix) :]: value for key, value in published.items() if key.startswith(prefix)}
    missing = [key for key in HEAD_KEYS if key not in under]
    unexpected = sorted(set(under) - set(HEAD_KEYS))
    if missing or unexpected:
        raise ValueError(
            f"not a LAION-aesthetic/ImageReward head under prefix '{prefix}': missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}; expected exactly {prefix}layers.{{0,2,4,6,7}}.{{weight,bias}}"
        )
    return {key: under[key] for key in HEAD_KEYS}


def load_head(source: str | Path) -> ScoreMLP:
    """The aesthetic head from the published .pth, frozen: `source` is the file, a directory holding
    HEAD_FILENAME, or a hub id whose cached snapshot holds it."""
    path = resolve_file(source, HEAD_FILENAME, f"aesthetic head (download {HEAD_FILENAME} from {HEAD_URL})")
    try:
        published = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors have many types; all mean "not a plain state dict"
        raise ValueError(f"aesthetic head: {path} is not a loadable state dict ({type(error).__name__})") from error
    if not isinstance(published, Mapping):
        raise ValueError(f"aesthetic head: {path} holds a {type(published).__name__}, expected a state dict")
    return freeze(ScoreMLP.from_state_dict(head_state_dict(published)))


class AestheticReward:
    """LAION aesthetic predictor v2 on CLIP ViT-L/14 image embeddings (prompts are not used)."""

    name = "aesthetic"
    version = "2"
    differentiable = True
    higher_is_better = True

    def __init__(self, clip: nn.Module, head: ScoreMLP):
        embed = clip.config.projection_dim
        if head.layers[0].in_features != embed:
            raise ValueError(
                f"the aesthetic head takes {head.layers[0].in_features}-d embeddings but the CLIP model "
                f"projects to {embed}: the published head needs CLIP ViT-L/14 (768)"
            )
        self.clip = freeze(clip)
        # The head is tiny: it stays float32 whatever the backbone's dtype, as the reference feeds it floats.
        self.head = freeze(head).to(next(clip.parameters()).device)

    @classmethod
    def from_world(cls, world) -> AestheticReward:
        """As the scale world configures it: its weights' location, on the generators' device."""
        return cls.from_pretrained(**world.reward_options(cls.name))

    @classmethod
    def from_pretrained(
        cls, source: str | Path = DEFAULT_SOURCE, *, head: str | Path | None = None, device=None, dtype=None
    ) -> AestheticReward:
        from transformers import CLIPModel

        if head is None:
            raise ValueError(
                f"the aesthetic head is not bundled: pass head=<path to {HEAD_FILENAME}> "
                f"(download it on a networked machine from {HEAD_URL})"
            )
        head_module = load_head(head)
        clip = load_frozen(
            CLIPModel, source, "CLIP ViT-L/14 weights for the aesthetic predictor", device=device, dtype=dtype
        )
        return cls(clip, head_module)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_batch(images, prompts)
        return self.head(clip_image_embeddings(self.clip, images)).to(images.device)
