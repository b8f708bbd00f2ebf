"""The whole metric suite on one representation, and encoding a dataset into representations."""

import logging
import time
from collections.abc import Callable

import datasets
import numpy as np
import torch

from ..data.tensors import images_to_tensor
from ..training_data import prepare_images
from .dci import dci
from .downstream import downstream_accuracy
from .factor_vae import factor_vae_score
from .mig import mig
from .modularity_explicitness import modularity_explicitness
from .sap import sap

logger = logging.getLogger(__name__)


def evaluate_representation(
    codes: np.ndarray,
    factors: np.ndarray,
    factor_sizes: list[int] | tuple[int, ...],
    num_train: int = 10000,
    num_test: int = 5000,
    factor_names: list[str] | None = None,
    random_state: int = 0,
    n_jobs: int | None = None,
    dci_booster: str = "exact",
) -> dict[str, dict[str, float]]:
    """
    Every metric on `codes` `(n, num_codes)` for the rows of a full factor grid with `factors` `(n, num_factors)`.

    `num_train` / `num_test` set every metric's train and test sizes (FactorVAE: training votes and variance
    estimate / evaluation votes); the defaults are disentanglement_lib's. Each metric starts from
    `RandomState(random_state)`. `n_jobs` fits DCI's per-factor classifiers in parallel (-1: every core; same values);
    `dci_booster="histogram"` swaps disentanglement_lib's booster for an approximate, faster one (see `dci`).

    Returns:
        `{"factor_vae": {...}, "dci": {...}, "mig": {...}, "sap": {...}, "modularity_explicitness": {...},
        "downstream": {...}}`.
    """
    splits = {"num_train": num_train, "num_test": num_test, "random_state": random_state}
    metrics = {
        "factor_vae": lambda: factor_vae_score(
            codes,
            factors,
            factor_sizes,
            num_train=num_train,
            num_eval=num_test,
            num_variance_estimate=num_train,
            random_state=random_state,
        ),
        "dci": lambda: dci(codes, factors, n_jobs=n_jobs, booster=dci_booster, **splits),
        "mig": lambda: mig(codes, factors, num_train=num_train, random_state=random_state),
        "sap": lambda: sap(codes, factors, **splits),
        "modularity_explicitness": lambda: modularity_explicitness(codes, factors, **splits),
        "downstream": lambda: downstream_accuracy(codes, factors, factor_names=factor_names, **splits),
    }
    scores = {}
    for name, compute in metrics.items():
        start = time.perf_counter()
        scores[name] = compute()
        logger.info(f"{name}: {time.perf_counter() - start:.1f} s")
    return scores


def flatten_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """`{"dci": {"disentanglement": x}}` -> `{"dci/disentanglement": x}`, for loggers."""
    return {f"{group}/{name}": value for group, values in metrics.items() for name, value in values.items()}


def dataset_images(
    dataset: datasets.Dataset,
    rows: list[int] | np.ndarray | range | None = None,
    size: int | None = None,
    channels: int = 3,
) -> torch.Tensor:
    """`(len(rows), C, H, W)` images in [-1, 1] of the dataset's `rows` (default: every row); with `size`, brought
    to `(channels, size, size)` as the training script brings them (centre crop and resize where needed)."""
    if "image" not in dataset.column_names:
        raise ValueError(f"The dataset has no 'image' column; its columns are {dataset.column_names}.")
    images = dataset.select_columns(["image"])
    if rows is not None:
        images = images.select(rows)
    if size is not None:
        return prepare_images(images["image"], size, channels)
    return images_to_tensor(images["image"])


@torch.no_grad()
def encode_dataset(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: datasets.Dataset,
    batch_size: int = 256,
    size: int | None = None,
    channels: int = 3,
) -> np.ndarray:
    """Representations `(num_rows, num_codes)` of every row, from `encode`: `(B, C, H, W)` images in [-1, 1] ->
    `(B, num_codes)`; `size` and `channels` as in `dataset_images`."""
    codes = []
    for start in range(0, len(dataset), batch_size):
        batch = dataset_images(dataset, range(start, min(start + batch_size, len(dataset))), size, channels)
        codes.append(encode(batch).float().cpu().numpy())
    return np.concatenate(codes)
