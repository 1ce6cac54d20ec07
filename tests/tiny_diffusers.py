"""What the diffusers-family tests share: their prompts and each family's tiny policy, loaded from the pipelines
tests/conftest.py writes (`pipelines`)."""

from models.scale.config import FluxConfig, LatentConsistencyConfig, StableDiffusion3Config, StableDiffusionConfig
from models.scale.flux import FluxPolicy
from models.scale.sd3 import StableDiffusion3Policy
from models.scale.unet import LatentConsistencyPolicy, StableDiffusionPolicy
from models.tiny_pipelines import RESOLUTION

PROMPTS = ["a red cat", "the number 7"]


FAMILIES = {
    "sd": (StableDiffusionPolicy, StableDiffusionConfig),
    "lcm": (LatentConsistencyPolicy, LatentConsistencyConfig),
    "sd3": (StableDiffusion3Policy, StableDiffusion3Config),
    "flux": (FluxPolicy, FluxConfig),
}


def load(pipelines, family: str, **overrides):
    """The family's tiny policy: CFG 3, and SD3 with the UNets' LoRA size and 8 (zero) T5 tokens."""
    policy_class, config_class = FAMILIES[family]
    fields = dict(resolution=RESOLUTION, guidance_scale=3.0, min_vocab=50)
    if family in ("sd3", "flux"):
        fields.update(lora_rank=4, lora_alpha=4.0, t5_max_length=8)
    return policy_class.from_pretrained(pipelines / family, config=config_class(**{**fields, **overrides}))
