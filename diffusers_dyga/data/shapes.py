"""Procedural Shapes3D-like scenes: an object on the floor of a room corner, rendered vectorised and antialiased."""

import numpy as np

from .grid import procedural_dataset

SHAPES_FACTOR_NAMES = ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
SHAPES_FACTOR_SIZES = (10, 10, 10, 8, 4, 15)
SHAPE_KINDS = ("cube", "cylinder", "sphere", "capsule")


def _values(size: int, low: float, high: float) -> np.ndarray:
    return np.linspace(low, high, size, dtype=np.float32) if size > 1 else np.full(1, (low + high) / 2, np.float32)


def hsv_to_rgb(hue: np.ndarray, saturation: float = 0.8, value: float = 0.95) -> np.ndarray:
    """`(...)` hues in [0, 1) -> `(..., 3)` RGB in [0, 1]."""
    k = (np.asarray([5.0, 3.0, 1.0], np.float32) + hue[..., None] * 6.0) % 6.0
    return value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _coverage(signed_distance: np.ndarray, pixel: float | np.ndarray) -> np.ndarray:
    """Antialiased coverage of the inside (`signed_distance <= 0`) of a shape, one pixel wide ramp."""
    return np.clip(0.5 - signed_distance / pixel, 0.0, 1.0)


def _object_shape(kind: np.ndarray, u: np.ndarray, v: np.ndarray, tilt: np.ndarray):
    """Signed distance and shading of the object in its own frame (half-width 1), for each image's `kind`."""
    distance = np.empty_like(u)
    shade = np.empty_like(u)

    cube = kind == 0
    if cube.any():
        cu, cv, ct = u[cube], v[cube], tilt[cube]
        front = np.maximum(np.abs(cu) - 1.0, np.abs(cv) - 1.0)
        skewed = cu + (cv + 1.0) * 0.5
        top = np.maximum(np.abs(skewed) - 1.0, np.abs(cv + 1.225) - 0.225)
        edge = 0.7 * ct
        face = np.where(cu < edge, 0.68 + 0.1 * ct, 0.9 - 0.1 * ct)
        distance[cube] = np.minimum(front, top)
        shade[cube] = np.where(top < front, 1.08, face)

    cylinder = kind == 1
    if cylinder.any():
        cu, cv, ct = u[cylinder], v[cylinder], tilt[cylinder]
        body = np.maximum(np.abs(cu) - 0.9, np.abs(cv) - 1.0)
        bottom = np.sqrt((cu / 0.9) ** 2 + ((cv - 1.0) / 0.3) ** 2) - 1.0
        top = np.sqrt((cu / 0.9) ** 2 + ((cv + 1.0) / 0.3) ** 2) - 1.0
        distance[cylinder] = np.minimum(np.minimum(body, bottom), top) * 0.9
        side = 0.6 + 0.35 * np.cos(np.clip(cu / 0.9, -1, 1) * np.pi / 2 - 0.5 * ct)
        shade[cylinder] = np.where(top < 0, 1.08, side)

    sphere = kind == 2
    if sphere.any():
        cu, cv, ct = u[sphere], v[sphere], tilt[sphere]
        radius = np.sqrt(cu**2 + cv**2)
        distance[sphere] = radius - 1.0
        normal_z = np.sqrt(np.clip(1.0 - radius**2, 0.0, 1.0))
        light = np.stack([-0.4 + 0.3 * ct, np.full_like(ct, -0.6), np.full_like(ct, 0.7)])
        light /= np.linalg.norm(light, axis=0, keepdims=True)
        lambert = cu * light[0] + cv * light[1] + normal_z * light[2]
        shade[sphere] = 0.35 + 0.7 * np.clip(lambert, 0.0, 1.0)

    capsule = kind == 3
    if capsule.any():
        cu, cv, ct = u[capsule], v[capsule], tilt[capsule]
        distance[capsule] = np.sqrt(cu**2 + (cv - np.clip(cv, -0.4, 0.4)) ** 2) - 0.6
        shade[capsule] = 0.6 + 0.35 * np.cos(np.clip(cu / 0.6, -1, 1) * np.pi / 2 - 0.5 * ct)
    return distance, shade


def render_shapes(
    factors: np.ndarray, factor_sizes: tuple[int, ...] = SHAPES_FACTOR_SIZES, resolution: int = 64
) -> np.ndarray:
    """Renders `(n, 6)` factor indices (floor hue, wall hue, object hue, scale, shape, orientation) to `(n,
    resolution, resolution, 3)` uint8 images."""
    factors = np.asarray(factors)
    if factors.ndim != 2 or factors.shape[1] != 6:
        raise ValueError(f"render_shapes expects factors of shape (n, 6), got {factors.shape}.")
    if factor_sizes[4] > len(SHAPE_KINDS):
        raise ValueError(f"At most {len(SHAPE_KINDS)} shapes ({', '.join(SHAPE_KINDS)}), got {factor_sizes[4]}.")
    floor_hue = factors[:, 0].astype(np.float32) / factor_sizes[0]
    wall_hue = factors[:, 1].astype(np.float32) / factor_sizes[1]
    object_hue = factors[:, 2].astype(np.float32) / factor_sizes[2]
    scale = _values(factor_sizes[3], 0.75, 1.25)[factors[:, 3]]
    kind = factors[:, 4]
    tilt = _values(factor_sizes[5], -1.0, 1.0)[factors[:, 5]]

    pixel = 1.0 / resolution
    axis = (np.arange(resolution, dtype=np.float32) + 0.5) * pixel
    y, x = axis[None, :, None], axis[None, None, :]
    corner = (0.5 + 0.35 * tilt)[:, None, None]
    horizon = 0.58 + 0.12 * np.abs(x - corner)

    right_wall = _coverage(corner - x, pixel)
    wall_shade = (0.76 + 0.1 * tilt)[:, None, None] * (1 - right_wall) + (0.95 - 0.1 * tilt)[:, None, None] * right_wall
    floor = _coverage(horizon - y, pixel)
    floor_shade = 0.7 + 0.3 * np.clip((y - horizon) / (1.0 - horizon), 0.0, 1.0)

    size = (0.13 * scale)[:, None, None]
    base = 0.86
    shadow = np.clip(1.0 - ((x - 0.53) / (1.4 * size)) ** 2 - ((y - base) / (0.35 * size)) ** 2, 0.0, 1.0)
    floor_shade = floor_shade * (1.0 - 0.45 * np.sqrt(shadow))

    u, v = (x - 0.5) / size, (y - (base - size)) / size
    u, v = np.broadcast_to(u, floor.shape), np.broadcast_to(v, floor.shape)
    kinds = np.broadcast_to(kind[:, None, None], floor.shape)
    tilts = np.broadcast_to(tilt[:, None, None], floor.shape)
    distance, object_shade = _object_shape(kinds, u, v, tilts)
    covered = _coverage(distance, pixel / size)

    wall_rgb = hsv_to_rgb(wall_hue)[:, None, None, :] * wall_shade[..., None]
    floor_rgb = hsv_to_rgb(floor_hue)[:, None, None, :] * floor_shade[..., None]
    object_rgb = hsv_to_rgb(object_hue)[:, None, None, :] * object_shade[..., None]
    scene = wall_rgb * (1 - floor[..., None]) + floor_rgb * floor[..., None]
    scene = scene * (1 - covered[..., None]) + object_rgb * covered[..., None]
    return (np.clip(scene, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def load_shapes(
    resolution: int = 64,
    factor_sizes: tuple[int, ...] = SHAPES_FACTOR_SIZES,
    cache_dir: str | None = None,
    batch_size: int = 4096,
):
    """The full factor grid of procedural Shapes3D-like scenes as a `datasets.Dataset` (cached on disk).

    Factors, in row order (last fastest): floor_hue, wall_hue, object_hue, scale (0.75-1.25), shape (cube,
    cylinder, sphere, capsule), orientation (-30 to 30 degrees of camera azimuth). Default sizes mirror Shapes3D.
    """
    return procedural_dataset(
        "shapes",
        SHAPES_FACTOR_NAMES,
        factor_sizes,
        render_shapes,
        resolution,
        "Procedural Shapes3D-like scenes",
        cache_dir,
        batch_size,
    )
