"""Heatmaps and patch coverage from boxes (frozen harness).

Boxes are normalised to [0, 1] by the record's original width and height *before* any resizing,
so a heatmap at any resolution matches the squashed (not cropped) image.

* `box_heatmaps`: the seed's heatmap. One Gaussian per box, centred on the box centre, with
  sigma_x = half the box width and sigma_y = half the box height (each floored at 0.02, in
  normalised units), evaluated at pixel centres (i + 0.5) / size; the union of boxes is the
  elementwise max. A record without a valid box gives an all-zero map.
* `patch_coverage`: the exact share of each patch (grid x grid) covered by a box, max over boxes.
"""
from __future__ import annotations

import torch

SIGMA_FLOOR = 0.02


def box_heatmaps(boxes: torch.Tensor, valid: torch.Tensor, size: int, sigma_floor: float = SIGMA_FLOOR) -> torch.Tensor:
    """boxes [B, M, 4] (x1, y1, x2, y2 in [0, 1]), valid [B, M] bool -> heatmaps [B, size, size] in [0, 1]."""
    boxes = boxes.float()
    c = (torch.arange(size, device=boxes.device, dtype=torch.float32) + 0.5) / size  # pixel centres
    cx = (boxes[..., 0] + boxes[..., 2]) / 2
    cy = (boxes[..., 1] + boxes[..., 3]) / 2
    sx = ((boxes[..., 2] - boxes[..., 0]) / 2).clamp_min(sigma_floor)
    sy = ((boxes[..., 3] - boxes[..., 1]) / 2).clamp_min(sigma_floor)
    gx = torch.exp(-0.5 * ((c[None, None, :] - cx[..., None]) / sx[..., None]) ** 2)  # [B, M, W]
    gy = torch.exp(-0.5 * ((c[None, None, :] - cy[..., None]) / sy[..., None]) ** 2)  # [B, M, H]
    g = gy[..., :, None] * gx[..., None, :]                                            # [B, M, H, W]
    g = g * valid[..., None, None].to(g.dtype)
    if g.shape[1] == 0:
        return g.new_zeros(g.shape[0], size, size)
    return g.amax(dim=1)


def patch_coverage(boxes: torch.Tensor, valid: torch.Tensor, grid: int) -> torch.Tensor:
    """boxes [B, M, 4] in [0, 1], valid [B, M] -> [B, grid, grid]: covered share of each patch (max over boxes)."""
    boxes = boxes.float()
    edges = torch.arange(grid + 1, device=boxes.device, dtype=torch.float32) / grid
    lo, hi = edges[:-1], edges[1:]                                                     # [G]

    def overlap(a, b):  # [B, M] interval vs every cell -> [B, M, G] as a share of the cell
        return (torch.minimum(b[..., None], hi) - torch.maximum(a[..., None], lo)).clamp_min(0) * grid

    ox = overlap(boxes[..., 0], boxes[..., 2])
    oy = overlap(boxes[..., 1], boxes[..., 3])
    cov = oy[..., :, None] * ox[..., None, :] * valid[..., None, None].to(ox.dtype)   # [B, M, G, G]
    if cov.shape[1] == 0:
        return cov.new_zeros(cov.shape[0], grid, grid)
    return cov.amax(dim=1).clamp(0, 1)
