"""`compress`: minus the byte size of the image's PNG encoding (DDPO's compressibility task; not differentiable).

DDPO encodes with JPEG; at 8x8 pixels JPEG's fixed header dwarfs the content, while PNG's size still
tracks how much structure an image holds (a blank 8x8 image: 69 bytes, a data digit: ~122, noise: ~140).
Images are quantised to 8 bits as any saved image would be.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def png_bytes(image: np.ndarray) -> int:
    """Size of the PNG encoding (zlib level 9) of one uint8 image of shape (C, H, W)."""
    array = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=9)
    return len(buffer.getvalue())


class CompressReward:
    name = "compress"
    version = "1"
    differentiable = False
    higher_is_better = True

    @classmethod
    def from_world(cls, world) -> CompressReward:
        return cls()

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return torch.tensor([-float(png_bytes(image)) for image in pixels], dtype=torch.float32, device=images.device)
