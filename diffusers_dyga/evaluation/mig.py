"""Mutual Information Gap (Chen et al., 2018), as in disentanglement_lib."""

import numpy as np

from .utils import (
    as_random_state,
    check_codes_and_factors,
    discrete_entropy,
    discrete_mutual_info,
    histogram_discretize,
    sample_rows,
)


def mig(
    codes: np.ndarray,
    factors: np.ndarray,
    num_train: int = 10000,
    num_bins: int = 20,
    random_state: int | np.random.RandomState = 0,
) -> dict[str, float]:
    """
    MIG with disentanglement_lib's settings: `num_train` random rows, each code discretised into `num_bins`
    equal-width bins, mutual information in nats; per factor, the gap between the two most informative codes
    divided by the factor's entropy, averaged over factors. Factors with one value (zero entropy) are left out; a
    single code has a gap to zero.

    Returns:
        `mig`.
    """
    codes, factors = check_codes_and_factors(codes, factors)
    rows = sample_rows(len(codes), num_train, as_random_state(random_state))
    mutual_info = discrete_mutual_info(histogram_discretize(codes[rows], num_bins), factors[rows])
    entropy = discrete_entropy(factors[rows])
    ranked = np.sort(mutual_info, axis=0)[::-1]
    second = ranked[1] if len(ranked) > 1 else np.zeros(ranked.shape[1])
    informative = entropy > 0
    if not informative.any():
        return {"mig": 0.0}
    return {"mig": float(np.mean((ranked[0] - second)[informative] / entropy[informative]))}
