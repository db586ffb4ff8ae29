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


def resized_crop_boxes(
    n: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> Tensor:
    """RandomResizedCrop boxes ``(x0, y0, w, h)`` as fractions of a square image, (N, 4).

    As torchvision draws them: area fraction uniform in ``scale``, aspect ratio log-uniform
    in ``ratio``, up to ``attempts`` tries for a box that fits; a sample whose tries all fail
    gets the whole image. The position is uniform where the box fits.
    """
    area = torch.empty(n, attempts).uniform_(*scale, generator=generator)
    log_r = torch.empty(n, attempts).uniform_(
        float(torch.tensor(ratio[0]).log()),
        float(torch.tensor(ratio[1]).log()),
        generator=generator,
    )
    r = log_r.exp()
    w, h = (area * r).sqrt(), (area / r).sqrt()
    fits = (w <= 1.0) & (h <= 1.0)
    first = torch.where(fits.any(1), fits.float().argmax(1), -1)
    rows = torch.arange(n)
    pick = first.clamp_min(0)
    w = torch.where(first >= 0, w[rows, pick], torch.ones(n))
    h = torch.where(first >= 0, h[rows, pick], torch.ones(n))
    x0 = torch.rand(n, generator=generator) * (1.0 - w)
    y0 = torch.rand(n, generator=generator) * (1.0 - h)
    return torch.stack([x0, y0, w, h], dim=1)


def resized_crop(x: Tensor, boxes: Tensor) -> Tensor:
    """Crop each image of ``x`` (N, C, H, W) to its box (fractions ``x0, y0, w, h``) and
    resize back to (H, W) bilinearly, on the batch's device; returns float in x's range."""
    n = x.shape[0]
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    x0, y0, w, h = boxes.unbind(1)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = w, h
    theta[:, 0, 2] = 2 * x0 + w - 1  # box centre in [-1, 1] coordinates
    theta[:, 1, 2] = 2 * y0 + h - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(
        x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )


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


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in epoch (or step) ``epoch`` of a run with ``seed``."""
    return seed * 1_000_003 + epoch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of everything random in epoch ``epoch`` of a run with ``seed`` (data
    order, augmentation): the same in every process, batch and run."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


class Augment:
    """Training: RandomResizedCrop (``resized_crop``) or a crop with padding, and a flip;
    then (always) normalisation."""

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        crop_padding: int = 0,
        flip: bool = False,
        resized_crop: bool = False,
    ) -> None:
        self.mean, self.std, self.crop_padding, self.flip = mean, std, crop_padding, flip
        self.resized_crop = resized_crop

    def epoch_params(
        self, n: int, seed: int, epoch: int, device: str | torch.device = "cpu"
    ) -> dict[str, Tensor]:
        """Augmentation parameters of every sample of an epoch, drawn from (seed, epoch).

        Sample i of epoch e is augmented the same way whatever the batch, process or run it
        lands in: what makes distributed training match one process and what lets a
        teacher-logit cache replay the teacher's input exactly.
        """
        g = epoch_generator(seed, epoch)
        offsets = torch.randint(0, 2 * self.crop_padding + 1, (2, n), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        params = {"offsets": offsets.to(device), "flips": flips.to(device)}
        if self.resized_crop:
            params["boxes"] = resized_crop_boxes(n, g).to(device)
        return params

    def apply(self, images: Tensor, params: dict[str, Tensor], index: Tensor) -> Tensor:
        """Augment a training batch of samples ``index`` with their epoch parameters."""
        if self.resized_crop:
            x = resized_crop(images, params["boxes"][index])
        else:
            x = random_crop(images, self.crop_padding, offsets=params["offsets"][:, index])
        if self.flip:
            x = random_flip(x, flips=params["flips"][index])
        return normalize(x, self.mean, self.std)

    def apply_pair(
        self, images: Tensor, labels: Tensor, params: dict[str, Tensor], index: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`apply` with the labels passed through (the interface the engine uses for
        every task; segmentation's :class:`~bdkd.data.SegAugment` moves its label maps)."""
        return self.apply(images, params, index), labels

    def __call__(
        self, images: Tensor, *, train: bool, generator: torch.Generator | None = None
    ) -> Tensor:
        x = images
        if train:
            x = random_crop(x, self.crop_padding, generator)
            if self.flip:
                x = random_flip(x, generator)
        return normalize(x, self.mean, self.std)
