"""`jpeg`: JPEG compressibility, DDPO's compressibility task (Black et al. 2023; not differentiable).

score = -(size of the image's JPEG encoding at quality 95, in kB = 1000 bytes), the image first quantised to
8 bits as DDPO does: (x * 255).round().clamp(0, 255) as uint8, then PIL's JPEG encoder with every other
setting at PIL's default, as in DDPO. Flat, smooth images score higher.

For the 8x8 images of the embedded digits world JPEG's fixed headers dominate the size; `compress` (PNG)
is the variant meant for those. This one is for full-size generations, comparable with DDPO's numbers.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from rewards.clip_score import check_batch

QUALITY = 95


def jpeg_kilobytes(image: np.ndarray, quality: int = QUALITY) -> float:
    """Size in kB (1000 bytes) of the JPEG encoding of one uint8 image of shape (H, W, 3)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000.0


class JpegCompressibilityReward:
    """Minus the JPEG size (kB, quality 95) of each image."""

    name = "jpeg"
    version = "1"
    differentiable = False
    higher_is_better = True

    def __init__(self, quality: int = QUALITY):
        if not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"quality must be an int in [1, 100] (DDPO uses {QUALITY}), got {quality!r}")
        self.quality = quality
        if quality != QUALITY:
            self.version = f"{type(self).version}-q{quality}"

    @classmethod
    def from_world(cls, world) -> JpegCompressibilityReward:
        """As the scale world configures it: its weights' location, on the generators' device."""
        return cls.from_pretrained(**world.reward_options(cls.name))

    @classmethod
    def from_pretrained(
        cls, source=None, *, device=None, dtype=None, quality: int = QUALITY
    ) -> JpegCompressibilityReward:
        """No weights: the same construction interface as the learned rewards."""
        return cls(quality)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_batch(images, prompts)
        pixels = (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8)
        arrays = pixels.permute(0, 2, 3, 1).cpu().numpy()
        sizes = [jpeg_kilobytes(np.ascontiguousarray(a), self.quality) for a in arrays]
        return -torch.tensor(sizes, dtype=torch.float32, device=images.device)
