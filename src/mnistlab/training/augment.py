"""On-device augmentation: random affine transforms (shift, rotation, scale) of a whole batch at once.

`RandomAffine(**cfg.augment)` is called by the engine on every normalised training batch (N, 1, 28, 28):
one `F.affine_grid` + `F.grid_sample` for the batch, parameters drawn from torch's global RNG on the batch's
device, so seeded runs (and resumed ones, which restore the RNG state) see the same augmentations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mnistlab.errors import ConfigError


def affine(
    x: torch.Tensor,
    shift: torch.Tensor,
    angle: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Move each image of `x` (N, C, H, W): rotate by `angle` degrees and zoom by `scale` about the centre,
    then shift by `shift` (N, 2) pixels (+x right, +y down). Pixels coming from outside repeat the border."""
    n, _, h, w = x.shape
    dtype = x.dtype if x.is_floating_point() else torch.float32
    angle = torch.zeros(n, device=x.device, dtype=dtype) if angle is None else angle.to(dtype)
    scale = torch.ones(n, device=x.device, dtype=dtype) if scale is None else scale.to(dtype)
    rad = angle * (math.pi / 180.0)
    cos, sin = torch.cos(rad) / scale, torch.sin(rad) / scale
    # grid_sample maps output -> input coordinates, so theta is the inverse transform in [-1, 1] units.
    tx, ty = shift[:, 0].to(dtype) * (2.0 / w), shift[:, 1].to(dtype) * (2.0 / h)
    theta = torch.stack([
        torch.stack([cos, sin, -(cos * tx + sin * ty)], 1),
        torch.stack([-sin, cos, -(-sin * tx + cos * ty)], 1),
    ], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class RandomAffine:
    """Random shift of up to `translate` pixels per axis, rotation of up to `rotate` degrees and zoom by a
    factor in [1 - scale, 1 + scale], applied to each image with probability `p`."""

    def __init__(self, translate: float = 0.0, rotate: float = 0.0, scale: float = 0.0, p: float = 1.0) -> None:
        if translate < 0 or rotate < 0 or not 0 <= scale < 1 or not 0 <= p <= 1:
            raise ConfigError(f"bad augment settings: translate={translate}, rotate={rotate}, scale={scale}, "
                              f"p={p} (need translate, rotate >= 0, 0 <= scale < 1, 0 <= p <= 1)")
        self.translate, self.rotate, self.scale, self.p = float(translate), float(rotate), float(scale), float(p)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.translate or self.rotate or self.scale) or self.p == 0:
            return x
        n = x.shape[0]
        u = torch.rand(n, 5, device=x.device) * 2 - 1  # one draw for the whole batch
        on = (u[:, 4] < 2 * self.p - 1).float() if self.p < 1 else 1.0
        shift = u[:, :2] * self.translate * (on if self.p == 1 else on[:, None])
        angle = u[:, 2] * self.rotate * on
        scale = 1 + u[:, 3] * self.scale * on
        return affine(x, shift, angle, scale)

    def __repr__(self) -> str:
        return f"RandomAffine(translate={self.translate}, rotate={self.rotate}, scale={self.scale}, p={self.p})"
