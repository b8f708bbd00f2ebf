"""What the metrics score: the scalar units, or the official protocol's first principal component of each unit's
conditioning token."""

import datasets
import numpy as np
import torch
from sklearn.decomposition import PCA

from .suite import encode_dataset

REPRESENTATIONS = ("units", "token_pca")


def token_pca(tokens: np.ndarray) -> np.ndarray:
    """`(n, num_units, unit_dim)` tokens -> `(n, num_units)` codes: each unit's tokens projected on their first
    principal component (fitted on these `n` rows), as the official evaluation scores its anchored tokens."""
    if tokens.ndim != 3:
        raise ValueError(f"token_pca expects tokens of shape (n, num_units, unit_dim), got {tokens.shape}.")
    return np.concatenate([PCA(n_components=1).fit_transform(tokens[:, unit]) for unit in range(tokens.shape[1])], axis=1)


def encode_representation(pipeline, dataset: datasets.Dataset, representation: str, batch_size: int = 256) -> np.ndarray:
    """`(len(dataset), num_units)` codes of every row: `"units"` (`pipeline.encode`) or `"token_pca"` (PCA(1) per
    unit of the tokens the U-Net is conditioned on, anchored when the pipeline's anchorer is fitted)."""
    if representation not in REPRESENTATIONS:
        raise ValueError(f"Unknown representation {representation!r}; choose one of {', '.join(REPRESENTATIONS)}.")
    if representation == "units":
        return encode_dataset(pipeline.encode, dataset, batch_size)
    with torch.no_grad():
        flat = encode_dataset(lambda images: pipeline.condition(pipeline.encode(images)).flatten(1), dataset, batch_size)
    config = pipeline.encoder.config
    return token_pca(flat.reshape(len(flat), config.num_units, config.unit_dim))
