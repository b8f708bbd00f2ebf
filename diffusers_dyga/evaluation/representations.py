"""What the metrics score: the scalar units, or the official protocol's first principal component of each unit's
conditioning token."""

import logging

import datasets
import numpy as np
import torch
from sklearn.decomposition import PCA

from ..data.grid import factor_names, factor_sizes, factors_array
from .suite import encode_dataset, evaluate_representation

logger = logging.getLogger(__name__)

REPRESENTATIONS = ("units", "token_pca")


def token_pca(tokens: np.ndarray) -> np.ndarray:
    """`(n, num_units, unit_dim)` tokens -> `(n, num_units)` codes: each unit's tokens projected on their first
    principal component (fitted on these `n` rows), as the official evaluation scores its anchored tokens."""
    if tokens.ndim != 3:
        raise ValueError(f"token_pca expects tokens of shape (n, num_units, unit_dim), got {tokens.shape}.")
    return np.concatenate([PCA(n_components=1).fit_transform(tokens[:, unit]) for unit in range(tokens.shape[1])], axis=1)


def encode_representation(pipeline, dataset: datasets.Dataset, representation: str, batch_size: int = 256) -> np.ndarray:
    """`(len(dataset), num_units)` codes of every row: `"units"` (`pipeline.encode`) or `"token_pca"` (PCA(1) per
    unit of the tokens the U-Net is conditioned on, anchored when the pipeline's anchorer is fitted). Images of
    another size are centre-cropped and resized to the encoder's, as the training script does."""
    if representation not in REPRESENTATIONS:
        raise ValueError(f"Unknown representation {representation!r}; choose one of {', '.join(REPRESENTATIONS)}.")
    config = pipeline.encoder.config
    shape = {"size": config.sample_size, "channels": config.in_channels}
    if representation == "units":
        return encode_dataset(pipeline.encode, dataset, batch_size, **shape)
    with torch.no_grad():
        flat = encode_dataset(
            lambda images: pipeline.condition(pipeline.encode(images)).flatten(1), dataset, batch_size, **shape
        )
    return token_pca(flat.reshape(len(flat), config.num_units, config.unit_dim))


def evaluate_pipeline(
    pipeline, dataset: datasets.Dataset, representations=REPRESENTATIONS, batch_size: int = 256, **metric_options
) -> tuple[dict[str, dict[str, float]], np.ndarray | None]:
    """The metric suite (`evaluate_representation` with `metric_options`) on each of `representations` of a factor
    grid: groups named as the suite names them for `"units"`, prefixed `token_pca/` for `"token_pca"`. Returns the
    metrics and the units' codes `(len(dataset), num_units)` (`None` when `"units"` is not among them)."""
    metrics, unit_codes = {}, None
    for representation in representations:
        logger.info(f"encoding {len(dataset)} images as {representation}")
        codes = encode_representation(pipeline, dataset, representation, batch_size)
        scores = evaluate_representation(
            codes, factors_array(dataset), factor_sizes(dataset), factor_names=factor_names(dataset), **metric_options
        )
        prefix = "" if representation == "units" else f"{representation}/"
        metrics.update({f"{prefix}{group}": values for group, values in scores.items()})
        if representation == "units":
            unit_codes = codes
    return metrics, unit_codes
