"""FactorVAE score (Kim & Mnih, 2018), as in disentanglement_lib."""

import numpy as np

from ..data.grid import factor_row_index
from .utils import as_random_state, check_codes_and_factors, sample_rows


def grid_lookup(factors: np.ndarray, factor_sizes: list[int] | tuple[int, ...]) -> np.ndarray:
    """`(prod(factor_sizes),)` row holding each factor combination; raises unless every combination has a row."""
    sizes = tuple(int(s) for s in factor_sizes)
    lookup = np.full(int(np.prod(sizes)), -1, dtype=np.int64)
    lookup[factor_row_index(factors, sizes)] = np.arange(len(factors))
    missing = int((lookup < 0).sum())
    if missing:
        raise ValueError(
            f"factor_vae_score samples images that share one factor, so it needs codes for every factor combination; "
            f"{missing} of {len(lookup)} combinations have no row."
        )
    return lookup


def factor_vae_score(
    codes: np.ndarray,
    factors: np.ndarray,
    factor_sizes: list[int] | tuple[int, ...],
    batch_size: int = 64,
    num_train: int = 10000,
    num_eval: int = 5000,
    num_variance_estimate: int = 10000,
    prune_threshold: float = 0.05,
    random_state: int | np.random.RandomState = 0,
) -> dict[str, float]:
    """
    FactorVAE score with disentanglement_lib's settings.

    Codes whose standard deviation (over `num_variance_estimate` random rows, ddof=1) is below `prune_threshold`
    are pruned. Each vote fixes one random factor to one value, takes `batch_size` rows sharing it (other factors
    uniform), normalises the codes' variances by their global variances and votes (factor, code of least
    variance). The majority-vote classifier maps each code to a factor; `num_train` votes build it and `num_eval`
    fresh votes test it.

    Args:
        codes: `(n, num_codes)` representations of the rows of a full factor grid.
        factors: `(n, num_factors)` factor indices of the same rows.
        factor_sizes: number of values of each factor.

    Returns:
        `train_accuracy`, `eval_accuracy` (the reported score) and `num_active_dims`.
    """
    codes, factors = check_codes_and_factors(codes, factors)
    lookup = grid_lookup(factors, factor_sizes)
    random_state = as_random_state(random_state)
    sizes = np.asarray(factor_sizes)
    global_variances = np.var(codes[sample_rows(len(codes), num_variance_estimate, random_state)], axis=0, ddof=1)
    active = np.sqrt(global_variances) >= prune_threshold
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0.0}

    def votes(num_votes: int) -> np.ndarray:
        counts = np.zeros((len(sizes), codes.shape[1]), dtype=np.int64)
        active_ids = np.flatnonzero(active)
        for _ in range(num_votes):
            index = random_state.randint(len(sizes))
            sampled = np.stack([random_state.randint(size, size=batch_size) for size in sizes], axis=1)
            sampled[:, index] = sampled[0, index]
            batch = codes[lookup[factor_row_index(sampled, sizes)]]
            local = np.var(batch, axis=0, ddof=1)
            counts[index, active_ids[np.argmin(local[active] / global_variances[active])]] += 1
        return counts

    train_votes = votes(num_train)
    classifier = np.argmax(train_votes, axis=0)
    columns = np.arange(train_votes.shape[1])
    eval_votes = votes(num_eval)
    return {
        "train_accuracy": float(train_votes[classifier, columns].sum() / train_votes.sum()),
        "eval_accuracy": float(eval_votes[classifier, columns].sum() / eval_votes.sum()),
        "num_active_dims": float(active.sum()),
    }
