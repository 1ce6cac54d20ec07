"""A judge of another design than the embedded worlds' CNN judges: a kernel machine that matches raw pixels.

The CNN judges learn stroke features by gradient descent; this one learns no feature at all. It is kernel ridge
classification (the least-squares SVM of Suykens and Vandewalle, 1999) with a Gaussian kernel on an image's pixels:

    f(x) = sum_i alpha_i k(x, x_i),   k(x, y) = exp(-gamma ||x - y||^2),   alpha = (K + ridge I)^-1 Y,

over the training images x_i (K their kernel matrix, Y their labels one-hot in {-1, +1}, one column a class), with
gamma = 1 / the mean squared distance between training images, so the kernel's width is the data's own. The read
class is argmax f(x). Fitted in closed form in float64, so its build draws nothing at random and is exact up to the
solver's rounding.

A pixel matcher reads what lies near a training digit in pixel space as that digit: where a fine-tuned generator
draws ambiguous blobs, it tends to side with readers of the same kind (the rewards' MLPs) against the CNN judges,
which is what makes it a second opinion rather than a copy of the first (worlds/*: judges_agree, reader_only).
"""

from __future__ import annotations

import torch
from torch import nn

from models.networks import slots_of

RIDGE = 1e-2
"""The ridge added to the kernel matrix: small against its unit diagonal, so the fit nearly interpolates its data."""


class KernelClassifier(nn.Module):
    """f(x) = k(x, prototypes) @ coefficients (see the module docstring). Its buffers take the shapes of the weights it
    is given (its size is its training set's), so an empty one loads any fitted one."""

    prototypes: torch.Tensor
    coefficients: torch.Tensor
    gamma: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("coefficients", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("gamma", torch.zeros((), dtype=torch.float64))

    @classmethod
    def fit(cls, images: torch.Tensor, labels: torch.Tensor, classes: int, ridge: float = RIDGE) -> KernelClassifier:
        """Fitted to images (N, C, H, W) and their labels (N,) in [0, classes)."""
        model = cls()
        points = images.flatten(1).double()
        squared = torch.cdist(points, points).square()
        gamma = 1 / squared.mean()
        targets = nn.functional.one_hot(labels, classes).double() * 2 - 1
        system = torch.exp(-gamma * squared) + ridge * torch.eye(len(points), dtype=torch.float64)
        model.prototypes, model.gamma = points, gamma
        model.coefficients = torch.linalg.solve(system, targets)
        return model

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in ("prototypes", "coefficients", "gamma"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores (B, classes) of images (B, C, H, W) in [0, 1]."""
        distances = torch.cdist(images.flatten(1).double(), self.prototypes).square()
        return torch.exp(-self.gamma * distances) @ self.coefficients


class KernelSlotJudge(nn.Module):
    """A scene judge of the kernel design: per slot, presence by ink mass (a slot whose most inked channel holds less
    than half the least ink of any training digit is empty), the colour by the channel with the most ink, and the
    digit by a KernelClassifier on that channel's pixels. Its reading is SlotReader.read's: (digit, colour) per slot
    in reading order, the digit `empty` (the class after the digits) where the slot is empty."""

    ink_threshold: torch.Tensor

    def __init__(self, patch: int, empty: int) -> None:
        super().__init__()
        self.patch, self.empty = patch, empty
        self.digits = KernelClassifier()
        self.register_buffer("ink_threshold", torch.zeros((), dtype=torch.float64))

    @classmethod
    def fit(cls, images: torch.Tensor, labels: torch.Tensor, patch: int, empty: int) -> KernelSlotJudge:
        """Fitted to single digits (N, 1, patch, patch) and their labels (N,) in [0, empty)."""
        judge = cls(patch, empty)
        judge.digits = KernelClassifier.fit(images, labels, empty)
        judge.ink_threshold = images.double().sum((1, 2, 3)).min() / 2
        return judge

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> list[list[tuple[int, int]]]:
        """Each image's (B, C, H, W) in [0, 1] scene: (digit, colour) per slot, in reading order."""
        slots = slots_of(images, self.patch)
        ink = slots.double().sum((3, 4))  # (B, S, C)
        colours = ink.argmax(2)
        channel = slots.gather(2, colours[:, :, None, None, None].expand(-1, -1, 1, self.patch, self.patch))
        digits = self(channel.flatten(0, 1)).argmax(1).view(colours.shape)
        digits = torch.where(ink.amax(2) < self.ink_threshold, self.empty, digits)
        return torch.stack([digits, colours], dim=2).tolist()

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        """Digit scores (N, empty) of single-channel slots (N, 1, patch, patch)."""
        return self.digits(slots)
