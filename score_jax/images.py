"""Sample grids: arrays of images in [0, 1] to a tiled uint8 picture, saved as PNG with an .npz."""

from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image
from score_jax import paths
from score_jax.errors import InvalidInputError


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images [N, H, W, C] in [0, 1] (clipped) -> uint8 [N, H, W, C], rounding like torchvision."""
    return np.clip(np.asarray(images, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, *, ncol: int | None = None, padding: int = 2,
               min_tile: int = 32) -> np.ndarray:
    """Tile images [N, H, W, C] in [0, 1] into one uint8 picture [rows, cols, C].

    Tiles smaller than `min_tile` pixels are enlarged by an integer nearest-neighbour factor, so an
    8x8 digit stays readable in an image viewer.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise InvalidInputError(f"images: expected shape [N, H, W, C] with C in (1, 3), got {images.shape}.")
    n, h, w, c = images.shape
    scale = max(1, math.ceil(min_tile / max(h, w)))
    tiles = to_uint8(images).repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    ncol = ncol or max(1, int(math.ceil(math.sqrt(n))))
    nrow = int(math.ceil(n / ncol))
    grid = np.zeros((nrow * (h + padding) + padding, ncol * (w + padding) + padding, c), np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y:y + h, x:x + w] = tiles[i]
    return grid


def png_bytes(grid: np.ndarray) -> bytes:
    """Encode a uint8 picture [H, W, C] as PNG bytes."""
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_samples(directory: str | os.PathLike, name: str, samples: np.ndarray) -> paths.Path:
    """Write `<name>.png` (a grid) and `<name>.npz` (uint8 `samples` [N, H, W, C]); returns the PNG path.

    Both are written whole (score_jax.paths), so a reader never sees half a file, on a bucket too.
    """
    directory = paths.make_dir(directory)
    png = directory / f"{name}.png"
    paths.write_bytes(png, png_bytes(image_grid(samples)))
    paths.save_npz(directory / f"{name}.npz", {"samples": to_uint8(samples)}, compressed=True)
    return png
