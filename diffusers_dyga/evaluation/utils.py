"""Shared pieces of the disentanglement metrics: input checks, row sampling, discretisation, entropy and MI."""

import numpy as np
from sklearn.metrics import mutual_info_score


def as_random_state(random_state: int | np.random.RandomState) -> np.random.RandomState:
    return random_state if isinstance(random_state, np.random.RandomState) else np.random.RandomState(random_state)


def check_codes_and_factors(codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validates `codes` `(n, num_codes)` float and `factors` `(n, num_factors)` int; returns them as arrays."""
    codes = np.asarray(codes, dtype=np.float64)
    factors = np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2:
        raise ValueError(f"Expected codes (n, num_codes) and factors (n, num_factors), got {codes.shape} and {factors.shape}.")
    if codes.shape[0] != factors.shape[0]:
        raise ValueError(f"codes has {codes.shape[0]} rows but factors has {factors.shape[0]}.")
    if not np.issubdtype(factors.dtype, np.integer):
        raise ValueError(f"factors must be integer class indices, got dtype {factors.dtype}.")
    if not np.isfinite(codes).all():
        raise ValueError("codes contain NaN or infinite values.")
    return codes, factors.astype(np.int64)


def sample_rows(num_rows: int, num_samples: int, random_state: np.random.RandomState) -> np.ndarray:
    """Uniform rows with replacement: on a full factor grid, the same as sampling each factor uniformly."""
    return random_state.randint(num_rows, size=num_samples)


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """`(n, num_codes)` -> `(n, num_codes)` bin ids of `num_bins` equal-width bins per code (disentanglement_lib)."""
    discretized = np.zeros(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):
        edges = np.histogram(codes[:, i], num_bins)[1][:-1]
        discretized[:, i] = np.digitize(codes[:, i], edges)
    return discretized


def discrete_mutual_info(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """`(num_codes, num_factors)` mutual information in nats between each discrete code and each factor."""
    return np.array(
        [[mutual_info_score(factors[:, j], discrete_codes[:, i]) for j in range(factors.shape[1])] for i in range(discrete_codes.shape[1])]
    )


def discrete_entropy(factors: np.ndarray) -> np.ndarray:
    """`(num_factors,)` entropy in nats of each discrete factor."""
    return np.array([mutual_info_score(factors[:, j], factors[:, j]) for j in range(factors.shape[1])])


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardises both by the train statistics; constant codes are centred, not divided by zero."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std
