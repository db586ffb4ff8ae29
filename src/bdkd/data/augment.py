"""Tensor-level augmentation that runs on whatever device the batch is on.

Every function takes a batch (N, C, H, W) and a ``torch.Generator`` on the batch's device,
so a run is reproducible and a step never leaves the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop(
    x: Tensor, padding: int, generator: torch.Generator | None = None, offsets: Tensor | None = None
) -> Tensor:
    """Pad each side by ``padding`` with zeros and crop back to (H, W) at a random offset
    per sample (RandomCrop(size, padding)); ``offsets`` (2, N) in [0, 2 padding] replays
    given offsets instead of drawing them."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    if offsets is None:
        offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(
    x: Tensor, generator: torch.Generator | None = None, p: float = 0.5, flips: Tensor | None = None
) -> Tensor:
    """Flip each sample horizontally with probability ``p`` (or where ``flips`` is True)."""
    if flips is None and p <= 0:
        return x
    flip = (
        flips
        if flips is not None
        else torch.rand(x.shape[0], generator=generator, device=x.device) < p
    )
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def hflip(x: Tensor) -> Tensor:
    """Flip every sample horizontally."""
    return x.flip(-1)


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 (or [0, 255] float) images to float32 ``(x / 255 - mean) / std`` per channel."""
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {x.shape[1]} channels")
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.float() / 255.0 - m) / s


class Augment:
    """Crop with padding and flip (training only), then normalisation."""

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        crop_padding: int = 0,
        flip: bool = False,
    ) -> None:
        self.mean, self.std, self.crop_padding, self.flip = mean, std, crop_padding, flip

    def epoch_params(
        self, n: int, seed: int, epoch: int, device: str | torch.device = "cpu"
    ) -> dict[str, Tensor]:
        """Augmentation parameters of every sample of an epoch, drawn from (seed, epoch).

        Sample i of epoch e is augmented the same way whatever the batch, process or run it
        lands in: what makes distributed training match one process and what lets a
        teacher-logit cache replay the teacher's input exactly.
        """
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        offsets = torch.randint(0, 2 * self.crop_padding + 1, (2, n), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        return {"offsets": offsets.to(device), "flips": flips.to(device)}

    def apply(self, images: Tensor, params: dict[str, Tensor], index: Tensor) -> Tensor:
        """Augment a training batch of samples ``index`` with their epoch parameters."""
        x = random_crop(images, self.crop_padding, offsets=params["offsets"][:, index])
        if self.flip:
            x = random_flip(x, flips=params["flips"][index])
        return normalize(x, self.mean, self.std)

    def __call__(
        self, images: Tensor, *, train: bool, generator: torch.Generator | None = None
    ) -> Tensor:
        x = images
        if train:
            x = random_crop(x, self.crop_padding, generator)
            if self.flip:
                x = random_flip(x, generator)
        return normalize(x, self.mean, self.std)
