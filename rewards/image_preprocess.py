"""Differentiable image preprocessing for CLIP- and BLIP-style encoders, in torch.

The reference pipelines (OpenAI CLIP's `_transform`, open_clip's `preprocess_val`, transformers'
`CLIPImageProcessor`, ImageReward's `_transform`) work on PIL images, so no gradient reaches the pixels.
These functions do the same steps on a (B, 3, H, W) float tensor in [0, 1]:

    resize so the shorter side is N (bicubic, antialiased) -> center crop N x N -> (x - mean) / std

except HPSv2's, which keeps the whole image: its longer side resized to N, then padded to a square
(`hpsv2_preprocess`).

torch's antialiased bicubic (`interpolate(..., mode="bicubic", antialias=True)`) uses PIL's BICUBIC kernel
(a = -0.5, support widened by the downscale factor); plain torch bicubic (a = -0.75, no antialiasing) does
not. Measured against PIL on 8-bit images (64..512 px to 224, up and down), the mean absolute difference
is about 1e-3, a third of one 8-bit level, from the 8-bit rounding PIL applies between its two passes.
PIL resizes 8-bit images, which saturate at 0 and 255; bicubic overshoots near edges, so the resized
tensor is clamped to [0, 1] to match.

BLIP: the original BLIP code (salesforce/BLIP) and transformers' `BlipImageProcessor` resize straight to a
square (`Resize((N, N))`, 384 for the released BLIP models), without keeping the aspect ratio and without a
crop; `blip_preprocess` does that. ImageReward, although built on BLIP, preprocesses like CLIP: its
`_transform(224)` is `Resize(224)` (shorter side) then `CenterCrop(224)` with the OpenAI CLIP mean/std, so
`rewards.imagereward` uses `clip_preprocess`. For square images (what generators produce) both are one resize.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# OpenAI CLIP's normalisation (also open_clip's OPENAI_DATASET_MEAN/STD, used by the LAION ViT-H-14 models
# behind PickScore and HPSv2).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# BLIP normalises with the OpenAI CLIP constants (BLIP's transforms and BlipImageProcessor's defaults).
BLIP_MEAN = OPENAI_CLIP_MEAN
BLIP_STD = OPENAI_CLIP_STD


def check_images(images: torch.Tensor) -> None:
    """Raise ValueError unless `images` is a floating tensor of shape (B, 3, H, W)."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W) with 3 colour channels, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")


def resize_shorter_side(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H', W') with min(H', W') == size, aspect ratio kept (bicubic, antialiased).

    The longer side is int(size * long / short), truncated, as torchvision's Resize(int) and transformers'
    CLIPImageProcessor compute it. Output clamped to [0, 1] (see the module docstring).
    """
    _check_size(size)
    height, width = images.shape[-2:]
    if height <= width:
        new_height, new_width = size, int(size * width / height)
    else:
        new_height, new_width = int(size * height / width), size
    if (new_height, new_width) == (height, width):
        return images
    resized = F.interpolate(images, size=(new_height, new_width), mode="bicubic", antialias=True, align_corners=False)
    return resized.clamp(0.0, 1.0)


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size), aspect ratio not kept (bicubic, antialiased, clamped to [0, 1])."""
    _check_size(size)
    if tuple(images.shape[-2:]) == (size, size):
        return images
    resized = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return resized.clamp(0.0, 1.0)


def resize_longer_side_and_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size): open_clip's `ResizeMaxSize`, the evaluation transform HPSv2 builds (its
    `light_augmentation=True`). The longer side is resized to `size` and the shorter to round(side * size / longer),
    bicubic and antialiased, not clamped (HPSv2's open_clip resizes the float tensor, after ToTensor); the image is
    then padded with zeros (black) to a square, centered, the left and top getting the smaller half of an odd pad.
    Departure: an image whose longer side is already `size` is padded too, where the original passes it on
    unpadded, and a non-square one then fails in the ViT."""
    _check_size(size)
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    new_height, new_width = round(height * scale), round(width * scale)
    if (new_height, new_width) != (height, width):
        images = F.interpolate(
            images, size=(new_height, new_width), mode="bicubic", antialias=True, align_corners=False
        )
    pad_height, pad_width = size - new_height, size - new_width
    padding = (pad_width // 2, pad_width - pad_width // 2, pad_height // 2, pad_height - pad_height // 2)
    return F.pad(images, padding, value=0.0)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) with H, W >= size -> the central (B, C, size, size) window.

    The offset rounds as torchvision's CenterCrop does (int(round((H - size) / 2))), the crop OpenAI CLIP,
    open_clip and ImageReward use; transformers' processor floors instead, which differs by one pixel only
    when H - size is odd.
    """
    _check_size(size)
    height, width = images.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot center-crop {size}x{size} from an image of {height}x{width}: resize first")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, C, H, W) -> (images - mean) / std per channel; mean and std have C entries."""
    channels = images.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need {channels} entries (one per channel), got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def clip_preprocess(
    images: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """CLIP-style encoder input: (B, 3, H, W) in [0, 1] -> (B, 3, size, size) normalised, differentiable.

    Shorter side resized to `size`, center crop `size` x `size`, normalised with mean/std. Computed in
    float32 whatever the input dtype (resampling in half precision loses visible detail); cast to the
    encoder's dtype afterwards.
    """
    check_images(images)
    pixels = images.float()
    return normalize(center_crop(resize_shorter_side(pixels, size), size), mean, std)


def hpsv2_preprocess(
    images: torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """HPSv2's encoder input: (B, 3, H, W) in [0, 1] -> (B, 3, size, size) normalised, differentiable: the longer
    side resized to `size` and the image padded to a square (`resize_longer_side_and_pad`), then normalised."""
    check_images(images)
    return normalize(resize_longer_side_and_pad(images.float(), size), mean, std)


def blip_preprocess(
    images: torch.Tensor, size: int = 384, mean: Sequence[float] = BLIP_MEAN, std: Sequence[float] = BLIP_STD
) -> torch.Tensor:
    """BLIP-style encoder input: (B, 3, H, W) in [0, 1] -> (B, 3, size, size) normalised, differentiable.

    Resized straight to `size` x `size` (BLIP's `Resize((size, size))`, no crop), normalised, float32.
    """
    check_images(images)
    return normalize(resize_square(images.float(), size), mean, std)
