"""Image corruptions for measuring calibration under shift, deterministic and on tensors.

Each corruption maps a batch of uint8 images (N, C, H, W) to another of the same shape, at one
of five severities, drawing whatever it draws from a ``torch.Generator`` seeded by the
caller, so the same call gives the same images on any machine. The parameters follow
CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019) where it has the corruption: Gaussian noise σ,
shot noise (Poisson) photon counts, Gaussian blur σ, contrast and brightness factors, JPEG
quality; rotation and translation (not in CIFAR-10-C) turn by up to 30 degrees and move by up
to a fifth of the side, in a random direction per image. "JPEG-like" is the JPEG
quantization of every channel's 8 x 8 DCT blocks with the standard luminance table at that
quality (no colour transform, no entropy coding: the loss, not the file format).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt"]

SEVERITIES = (1, 2, 3, 4, 5)

_JPEG_LUMA = torch.tensor(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=torch.float64,
)


def _dct_matrix(n: int = 8) -> Tensor:
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def _gaussian_noise(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    return x + level * torch.randn(x.shape, generator=g, dtype=x.dtype)


def _shot_noise(x: Tensor, level: float, g: torch.Generator) -> Tensor:
    return torch.poisson(x.clamp(0, 1) * level, generator=g) / level


def _blur(x: Tensor, sigma: float, g: torch.Generator) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _contrast(x: Tensor, factor: float, g: torch.Generator) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor + mean


def _brightness(x: Tensor, shift: float, g: torch.Generator) -> Tensor:
    return x + shift


def _jpeg(x: Tensor, quality: float, g: torch.Generator) -> Tensor:
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2 * quality
    table = torch.clamp(torch.floor((_JPEG_LUMA * scale + 50) / 100), min=1)
    n, c, h, w = x.shape
    ph, pw = -h % 8, -w % 8
    y = F.pad(x * 255.0 - 128.0, (0, pw, 0, ph), mode="replicate")
    blocks = y.unfold(2, 8, 8).unfold(3, 8, 8)  # (N, C, H/8, W/8, 8, 8)
    d = _dct_matrix()
    coeffs = d @ blocks @ d.T
    restored = d.T @ (torch.round(coeffs / table) * table) @ d
    restored = restored.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h + ph, w + pw)
    return (restored[:, :, :h, :w] + 128.0) / 255.0


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _rotation(x: Tensor, degrees: float, g: torch.Generator) -> Tensor:
    flip = torch.rand(x.shape[0], generator=g, dtype=x.dtype) < 0.5
    a = (1.0 - 2.0 * flip.to(x.dtype)) * math.radians(degrees)
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return _affine(x, theta)


def _translation(x: Tensor, fraction: float, g: torch.Generator) -> Tensor:
    angle = 2 * math.pi * torch.rand(x.shape[0], generator=g, dtype=x.dtype)
    dx, dy = 2 * fraction * torch.cos(angle), 2 * fraction * torch.sin(angle)
    one, zero = torch.ones_like(dx), torch.zeros_like(dx)
    theta = torch.stack([torch.stack([one, zero, dx], 1), torch.stack([zero, one, dy], 1)], 1)
    return _affine(x, theta)


Corruption = Callable[[Tensor, float, torch.Generator], Tensor]

CORRUPTIONS: dict[str, tuple[Corruption, tuple[float, ...]]] = {
    "gaussian_noise": (_gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),
    "shot_noise": (_shot_noise, (500.0, 250.0, 100.0, 75.0, 50.0)),
    "gaussian_blur": (_blur, (0.4, 0.6, 0.7, 0.8, 1.0)),
    "contrast": (_contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
    "brightness": (_brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
    "jpeg": (_jpeg, (80.0, 65.0, 58.0, 50.0, 40.0)),
    "rotation": (_rotation, (5.0, 10.0, 15.0, 20.0, 30.0)),
    "translation": (_translation, (0.04, 0.08, 0.12, 0.16, 0.2)),
}
"""Every corruption: its function and its parameter at severities 1 to 5."""


def corrupt(images: Tensor, name: str, severity: int, seed: int) -> Tensor:
    """``images`` (uint8, (N, C, H, W)) corrupted by ``name`` at ``severity`` (1-5), with the
    random draws of ``seed``; uint8 out, values clipped to [0, 255]."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {list(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {list(SEVERITIES)}, got {severity!r}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    fn, levels = CORRUPTIONS[name]
    g = torch.Generator().manual_seed(int(seed))
    x = images.detach().cpu().double() / 255.0
    out = fn(x, levels[severity - 1], g)
    return torch.round(out.clamp(0.0, 1.0) * 255.0).to(torch.uint8).to(images.device)
