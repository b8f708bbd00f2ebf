"""Ground-truth factor grids as Hugging Face `datasets`: one `image` column and one `ClassLabel` column per factor."""

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

import datasets
import numpy as np
import PIL.Image

FORMAT_VERSION = 1


def default_cache_dir() -> str:
    """`$DIFFUSERS_DYGA_CACHE`, else `~/.cache/diffusers_dyga`."""
    return os.environ.get("DIFFUSERS_DYGA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "diffusers_dyga"))


def factor_names(dataset: datasets.Dataset) -> list[str]:
    """Names of the `ClassLabel` (factor) columns, in grid order."""
    return [name for name, feature in dataset.features.items() if isinstance(feature, datasets.ClassLabel)]


def factor_sizes(dataset: datasets.Dataset) -> list[int]:
    """Number of values of each factor, in grid order."""
    return [dataset.features[name].num_classes for name in factor_names(dataset)]


def factors_array(dataset: datasets.Dataset) -> np.ndarray:
    """`(num_rows, num_factors)` int64 factor indices of every row."""
    names = factor_names(dataset)
    if not names:
        raise ValueError("This dataset has no factor (ClassLabel) columns.")
    table = dataset.with_format("numpy").select_columns(names)[:]
    return np.stack([np.asarray(table[name], dtype=np.int64) for name in names], axis=1)


def is_full_grid(dataset: datasets.Dataset) -> bool:
    """Whether the `ClassLabel` columns hold every combination of their values exactly once (a factor grid), as
    opposed to, say, the `label` column of an image folder with class subfolders."""
    names = factor_names(dataset)
    if not names:
        return False
    sizes = factor_sizes(dataset)
    if len(dataset) != int(np.prod(sizes)):
        return False
    factors = factors_array(dataset)
    if (factors < 0).any() or (factors >= np.asarray(sizes)).any():
        return False
    return len(np.unique(np.ravel_multi_index(tuple(factors.T), tuple(sizes)))) == len(dataset)


def factor_row_index(factor_indices: np.ndarray, sizes: list[int] | tuple[int, ...]) -> np.ndarray:
    """Rows of a full grid (in C order, last factor fastest) holding the factor-index vectors `(n, num_factors)`."""
    factor_indices = np.asarray(factor_indices, dtype=np.int64)
    if factor_indices.ndim != 2 or factor_indices.shape[1] != len(sizes):
        raise ValueError(f"Expected factor indices of shape (n, {len(sizes)}), got {factor_indices.shape}.")
    if (factor_indices < 0).any() or (factor_indices >= np.asarray(sizes)).any():
        raise ValueError(f"Factor indices out of range for factor sizes {list(sizes)}.")
    return np.ravel_multi_index(tuple(factor_indices.T), tuple(sizes))


def grid_factors(sizes: list[int] | tuple[int, ...]) -> np.ndarray:
    """`(prod(sizes), num_factors)` every factor combination, in row order."""
    return np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), tuple(sizes)), axis=1).astype(np.int64)


def png_rows(images: np.ndarray) -> list[dict]:
    """`(n, H, W)` or `(n, H, W, C)` uint8 images -> PNG-encoded `Image()` cells."""
    cells = []
    for image in images:
        buffer = io.BytesIO()
        PIL.Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
        cells.append({"bytes": buffer.getvalue(), "path": None})
    return cells


def build_dataset(
    names: list[str],
    sizes: list[int],
    render_batches: Iterator[tuple[np.ndarray, np.ndarray]],
    description: str,
) -> datasets.Dataset:
    """Builds a dataset from batches of `(uint8 images, (n, num_factors) factor indices)`."""
    features = datasets.Features(
        {"image": datasets.Image(), **{name: datasets.ClassLabel(num_classes=size) for name, size in zip(names, sizes)}}
    )
    parts = []
    for images, factors in render_batches:
        columns = {"image": png_rows(images), **{name: factors[:, i].tolist() for i, name in enumerate(names)}}
        parts.append(datasets.Dataset.from_dict(columns, features=features))
    dataset = datasets.concatenate_datasets(parts)
    dataset.info.description = description
    return dataset


def cached(name: str, parameters: dict, build: Callable[[], datasets.Dataset], cache_dir: str | None) -> datasets.Dataset:
    """Loads `name` from the cache keyed by `parameters` and the format version, building and saving it if absent.

    The cache entry is written to a temporary folder and moved into place, so an interrupted build leaves none.
    """
    cache_dir = cache_dir or default_cache_dir()
    key = json.dumps({"name": name, "format": FORMAT_VERSION, **parameters}, sort_keys=True)
    path = os.path.join(cache_dir, f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}")
    if os.path.isdir(path):
        return datasets.load_from_disk(path)
    dataset = build()

    def write(staging: str) -> None:
        dataset.save_to_disk(staging)
        with open(os.path.join(staging, "generation.json"), "w") as file:
            file.write(key)

    write_aside(path, write)
    return datasets.load_from_disk(path)


def write_aside(path: str, write: Callable[[str], None]) -> None:
    """Calls `write(folder)` on a temporary folder beside `path`, then moves the folder to `path`, so an interrupted
    write leaves nothing there. A folder that another process moved to `path` meanwhile is kept."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}-")
    try:
        write(staging)
        os.replace(staging, path)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.isdir(path):
            raise


def procedural_dataset(
    name: str,
    names: list[str],
    factor_sizes: tuple[int, ...],
    render: Callable[[np.ndarray, tuple[int, ...], int], np.ndarray],
    resolution: int,
    description: str,
    cache_dir: str | None,
    batch_size: int,
) -> datasets.Dataset:
    """Renders the full grid of `factor_sizes` with `render(factors, factor_sizes, resolution)` in batches, as a
    cached dataset keyed by the resolution and the factor sizes."""
    factor_sizes = tuple(int(s) for s in factor_sizes)
    if len(factor_sizes) != len(names) or min(factor_sizes) < 1:
        raise ValueError(f"{name} needs {len(names)} positive factor sizes, got {factor_sizes}.")

    def batches():
        factors = grid_factors(factor_sizes)
        for start in range(0, len(factors), batch_size):
            chunk = factors[start : start + batch_size]
            yield render(chunk, factor_sizes, resolution), chunk

    full_description = f"{description}, {resolution}x{resolution}, factor sizes {factor_sizes}."
    return cached(
        name,
        {"resolution": resolution, "factor_sizes": factor_sizes},
        lambda: build_dataset(names, list(factor_sizes), batches(), full_description),
        cache_dir,
    )
