"""Datasets with known factors, as Hugging Face `datasets` (an `image` column and one `ClassLabel` per factor)."""

from .decoded import DecodedImages, fit_images, to_model_range
from .dsprites import DSPRITES_FACTOR_NAMES, DSPRITES_FACTOR_SIZES, load_dsprites, render_dsprites
from .files import load_3dshapes_h5, load_dsprites_npz, load_image_dataset, load_mpi3d_npz
from .grid import factor_names, factor_row_index, factor_sizes, factors_array, grid_factors, is_full_grid
from .shapes import SHAPES_FACTOR_NAMES, SHAPES_FACTOR_SIZES, load_shapes, render_shapes
from .tensors import image_channels, images_to_tensor

BUILTIN_DATASETS = {"shapes": load_shapes, "dsprites": load_dsprites}


def load_builtin(name: str, **options):
    """`load_builtin("shapes", resolution=32, factor_sizes=(...))`: a procedural dataset by name."""
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"Unknown built-in dataset {name!r}; choose one of {sorted(BUILTIN_DATASETS)}.")
    return BUILTIN_DATASETS[name](**options)


__all__ = [
    "BUILTIN_DATASETS",
    "DSPRITES_FACTOR_NAMES",
    "DSPRITES_FACTOR_SIZES",
    "SHAPES_FACTOR_NAMES",
    "SHAPES_FACTOR_SIZES",
    "DecodedImages",
    "factor_names",
    "factor_row_index",
    "factor_sizes",
    "factors_array",
    "fit_images",
    "grid_factors",
    "image_channels",
    "images_to_tensor",
    "is_full_grid",
    "load_3dshapes_h5",
    "load_builtin",
    "load_dsprites",
    "load_dsprites_npz",
    "load_image_dataset",
    "load_mpi3d_npz",
    "load_shapes",
    "render_dsprites",
    "render_shapes",
    "to_model_range",
]
