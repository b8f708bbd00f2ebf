"""Adapters for the real ground-truth files a user has locally, and for any image dataset without factors."""

import logging
import os

import datasets
import numpy as np

from .dsprites import DSPRITES_FACTOR_NAMES
from .grid import build_dataset, cached, factor_names, factor_row_index, grid_factors, is_full_grid
from .shapes import SHAPES_FACTOR_NAMES

logger = logging.getLogger(__name__)

MPI3D_FACTOR_NAMES = [
    "object_color",
    "object_shape",
    "object_size",
    "camera_height",
    "background_color",
    "horizontal_axis",
    "vertical_axis",
]
MPI3D_FACTOR_SIZES = (6, 6, 2, 3, 3, 40, 40)


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")


def _file_key(path: str) -> dict:
    return {"path": os.path.abspath(path), "size": os.path.getsize(path), "mtime": int(os.path.getmtime(path))}


def _grid_sizes(factors: np.ndarray, path: str) -> tuple[int, ...]:
    """The factor sizes of `factors` `(n, num_factors)`, checked to list a full grid in row order."""
    sizes = tuple(int(size) for size in factors.max(axis=0) + 1)
    if not np.array_equal(factor_row_index(factors, sizes), np.arange(len(factors))):
        raise ValueError(f"{path}: rows are not a full factor grid in C order with sizes {sizes}.")
    return sizes


def _chunks(images, factors: np.ndarray, batch_size: int = 8192):
    for start in range(0, len(factors), batch_size):
        yield np.asarray(images[start : start + batch_size]), factors[start : start + batch_size]


def load_3dshapes_h5(path: str, cache_dir: str | None = None) -> datasets.Dataset:
    """DeepMind's `3dshapes.h5` (keys `images` `(480000, 64, 64, 3)` uint8 and `labels` `(480000, 6)`) as a factor
    dataset; label values are mapped to indices. Needs `h5py` (`pip install -e ".[h5]"` in a clone)."""
    _require_file(path, "3dshapes.h5")
    import h5py

    def build():
        with h5py.File(path, "r") as file:
            missing = {"images", "labels"} - set(file.keys())
            if missing:
                raise ValueError(f"{path} is not a 3dshapes.h5 file: it lacks {sorted(missing)}.")
            labels = np.asarray(file["labels"])
            factors = np.stack([np.unique(c, return_inverse=True)[1] for c in labels.T], axis=1)
            sizes = _grid_sizes(factors, path)
            return build_dataset(SHAPES_FACTOR_NAMES, list(sizes), _chunks(file["images"], factors), "3dshapes")

    return cached("3dshapes", _file_key(path), build, cache_dir)


def load_dsprites_npz(path: str, cache_dir: str | None = None) -> datasets.Dataset:
    """The dSprites `.npz` (`imgs` `(737280, 64, 64)` in {0, 1}, `latents_classes` `(737280, 6)` whose first,
    constant column is colour) as a factor dataset of 0/255 grayscale images."""
    _require_file(path, "dSprites .npz")

    def build():
        with np.load(path) as archive:
            missing = {"imgs", "latents_classes"} - set(archive.files)
            if missing:
                raise ValueError(f"{path} is not a dSprites .npz: it lacks {sorted(missing)}.")
            factors = archive["latents_classes"][:, 1:].astype(np.int64)
            sizes = _grid_sizes(factors, path)
            images = archive["imgs"].astype(np.uint8) * 255
        return build_dataset(DSPRITES_FACTOR_NAMES, list(sizes), _chunks(images, factors), "dSprites")

    return cached("dsprites-npz", _file_key(path), build, cache_dir)


def load_mpi3d_npz(path: str, cache_dir: str | None = None) -> datasets.Dataset:
    """An MPI3D `.npz` (`images` `(1036800, 64, 64, 3)` uint8, rows a full grid of sizes 6,6,2,3,3,40,40, e.g.
    `mpi3d_toy.npz`) as a factor dataset."""
    _require_file(path, "MPI3D .npz")

    def build():
        with np.load(path) as archive:
            if "images" not in archive.files:
                raise ValueError(f"{path} is not an MPI3D .npz: it lacks 'images'.")
            images = archive["images"]
        expected = int(np.prod(MPI3D_FACTOR_SIZES))
        if images.shape[0] != expected:
            raise ValueError(f"{path}: expected {expected} images (a full {MPI3D_FACTOR_SIZES} grid), got {images.shape[0]}.")
        factors = grid_factors(MPI3D_FACTOR_SIZES)
        return build_dataset(MPI3D_FACTOR_NAMES, list(MPI3D_FACTOR_SIZES), _chunks(images, factors), "MPI3D")

    return cached("mpi3d", _file_key(path), build, cache_dir)


def load_image_dataset(
    name_or_path: str, image_column: str = "image", split: str = "train", **load_kwargs
) -> datasets.Dataset:
    """Any Hub or local image dataset (a `datasets` repo id, a `save_to_disk` folder, or an image folder), with
    its images in an `image` column; other columns are kept. Its `ClassLabel` columns stay factors (scored by the
    metrics) only when they form a full grid; an image folder's class `label`, for one, does not."""
    saved = ("state.json", "dataset_dict.json")
    if os.path.isdir(name_or_path) and any(os.path.isfile(os.path.join(name_or_path, f)) for f in saved):
        dataset = datasets.load_from_disk(name_or_path)
    else:
        dataset = datasets.load_dataset(name_or_path, split=split, **load_kwargs)
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"{name_or_path} has no split {split!r}; it has {sorted(dataset)}.")
        dataset = dataset[split]
    if image_column not in dataset.column_names:
        raise ValueError(
            f"{name_or_path} has no image column {image_column!r}; its columns are {dataset.column_names}. "
            "Pass the right one with image_column."
        )
    if image_column != "image":
        if "image" in dataset.column_names:
            dataset = dataset.remove_columns("image")
        dataset = dataset.rename_column(image_column, "image")
    if not isinstance(dataset.features["image"], datasets.Image):
        dataset = dataset.cast_column("image", datasets.Image())
    labels = factor_names(dataset)
    if labels and not is_full_grid(dataset):
        logger.warning(
            f"{name_or_path}: the label columns {labels} are not a full factor grid (every combination of their values "
            "exactly once), so they are kept as plain integers and not scored as factors."
        )
        for name in labels:
            dataset = dataset.cast_column(name, datasets.Value("int64"))
    return dataset
