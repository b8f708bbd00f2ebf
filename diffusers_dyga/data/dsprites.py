"""Procedural dSprites-like binary sprites with the published factor values."""

import numpy as np

from .grid import procedural_dataset

DSPRITES_FACTOR_NAMES = ["shape", "scale", "orientation", "pos_x", "pos_y"]
DSPRITES_FACTOR_SIZES = (3, 6, 40, 32, 32)


def render_dsprites(
    factors: np.ndarray, factor_sizes: tuple[int, ...] = DSPRITES_FACTOR_SIZES, resolution: int = 64
) -> np.ndarray:
    """Renders `(n, 5)` factor indices (shape: square/ellipse/heart, scale 0.5-1, orientation 0-2pi, x, y in
    [0, 1]) to `(n, resolution, resolution)` uint8 binary images (0 or 255)."""
    factors = np.asarray(factors)
    if factors.ndim != 2 or factors.shape[1] != 5:
        raise ValueError(f"render_dsprites expects factors of shape (n, 5), got {factors.shape}.")
    if factor_sizes[0] > 3:
        raise ValueError(f"dsprites has 3 shapes (square, ellipse, heart), got {factor_sizes[0]}.")
    scale = np.linspace(0.5, 1.0, factor_sizes[1], dtype=np.float32)[factors[:, 1]]
    angle = np.linspace(0.0, 2 * np.pi, factor_sizes[2], dtype=np.float32)[factors[:, 2]]
    pos_x = np.linspace(0.0, 1.0, factor_sizes[3], dtype=np.float32)[factors[:, 3]]
    pos_y = np.linspace(0.0, 1.0, factor_sizes[4], dtype=np.float32)[factors[:, 4]]

    axis = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
    half_size = (0.12 * scale)[:, None, None]
    dx = (axis[None, None, :] - (0.2 + 0.6 * pos_x)[:, None, None]) / half_size
    dy = (axis[None, :, None] - (0.2 + 0.6 * pos_y)[:, None, None]) / half_size
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy

    shape = np.broadcast_to(factors[:, 0][:, None, None], u.shape)
    square = np.maximum(np.abs(u), np.abs(v)) <= 1.0
    ellipse = u**2 + (v / 0.5) ** 2 <= 1.0
    hu, hv = u / 1.05, -v / 1.05 + 0.1
    heart = (hu**2 + hv**2 - 1.0) ** 3 - hu**2 * hv**3 <= 0.0
    inside = np.where(shape == 0, square, np.where(shape == 1, ellipse, heart))
    return inside.astype(np.uint8) * 255


def load_dsprites(
    resolution: int = 64,
    factor_sizes: tuple[int, ...] = DSPRITES_FACTOR_SIZES,
    cache_dir: str | None = None,
    batch_size: int = 8192,
):
    """The full factor grid of dSprites-like sprites as a `datasets.Dataset` (cached on disk). Factors, in row
    order: shape, scale, orientation, pos_x, pos_y; smaller sizes take evenly spaced values over the same ranges."""
    return procedural_dataset(
        "dsprites",
        DSPRITES_FACTOR_NAMES,
        factor_sizes,
        render_dsprites,
        resolution,
        "Procedural dSprites-like sprites",
        cache_dir,
        batch_size,
    )
