"""DCI disentanglement, completeness and informativeness (Eastwood & Williams, 2018), as in disentanglement_lib."""

import importlib.util

import numpy as np
from joblib import Parallel, delayed
from sklearn.ensemble import GradientBoostingClassifier

from .utils import as_random_state, check_codes_and_factors, sample_rows


def _normalised_entropy(probabilities: np.ndarray, axis: int) -> np.ndarray:
    """Entropy along `axis` in base `probabilities.shape[axis]`, in [0, 1]; 0 when that axis has length 1."""
    size = probabilities.shape[axis]
    if size == 1:
        return np.zeros(probabilities.shape[1 - axis])
    p = probabilities + 1e-11
    p = p / p.sum(axis=axis, keepdims=True)
    return -(p * np.log(p)).sum(axis=axis) / np.log(size)


def disentanglement(importance: np.ndarray) -> float:
    """`importance` `(num_codes, num_factors)`: 1 - entropy over factors per code, weighted by code importance."""
    per_code = 1.0 - _normalised_entropy(importance, axis=1)
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    return float(np.sum(per_code * weights.sum(axis=1) / weights.sum()))


def completeness(importance: np.ndarray) -> float:
    """1 - entropy over codes per factor, weighted by factor importance."""
    per_factor = 1.0 - _normalised_entropy(importance, axis=0)
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    return float(np.sum(per_factor * weights.sum(axis=0) / weights.sum()))


DCI_BOOSTERS = ("exact", "histogram")


def _histogram_booster(seed: int):
    """LightGBM with scikit-learn's `GradientBoostingClassifier` defaults (100 stages of depth-3 trees, learning rate
    0.1, leaves of one row), features binned into 255 histogram bins; importances are split gains."""
    from lightgbm import LGBMClassifier

    return LGBMClassifier(
        n_estimators=100,
        learning_rate=0.1,
        max_depth=3,
        num_leaves=8,
        min_child_samples=1,
        importance_type="gain",
        random_state=seed,
        n_jobs=1,
        verbose=-1,
    )


def _fit_factor(x_train, y_train, x_test, y_test, seed: int, booster: str) -> tuple[np.ndarray, float, float]:
    if len(np.unique(y_train)) < 2:
        constant = y_train[0]
        return np.zeros(x_train.shape[1]), float(np.mean(y_train == constant)), float(np.mean(y_test == constant))
    if booster == "histogram":
        model = _histogram_booster(seed).fit(x_train, y_train)
        gains = np.abs(np.asarray(model.feature_importances_, dtype=np.float64))
        importance = gains / gains.sum() if gains.sum() > 0 else gains
    else:
        model = GradientBoostingClassifier(random_state=seed).fit(x_train, y_train)
        importance = np.abs(model.feature_importances_)
    return (
        importance,
        float(np.mean(model.predict(x_train) == y_train)),
        float(np.mean(model.predict(x_test) == y_test)),
    )


def dci(
    codes: np.ndarray,
    factors: np.ndarray,
    num_train: int = 10000,
    num_test: int = 5000,
    random_state: int | np.random.RandomState = 0,
    n_jobs: int | None = None,
    booster: str = "exact",
) -> dict[str, float]:
    """
    DCI with disentanglement_lib's settings: `num_train` / `num_test` random rows; one scikit-learn
    `GradientBoostingClassifier` (defaults, seeded from `random_state` so ties break reproducibly) per factor gives
    code importances `(num_codes, num_factors)`.
    Disentanglement is 1 - entropy over factors per code (base num_factors), weighted by code importance;
    completeness is 1 - entropy over codes per factor (base num_codes), weighted by factor importance;
    informativeness is the classifiers' mean accuracy. A factor with one value gets zero importances and the
    trivial accuracy. `n_jobs` fits the factors' classifiers in parallel (joblib; -1: one process per core, `None`:
    in this process), the factors with most classes first; the values do not depend on it.

    `booster="histogram"` (opt-in, needs `lightgbm`: `pip install -e ".[fast-dci]"`) fits LightGBM's histogram
    boosting with the same stage count, depth and learning rate instead, and takes its split gains (normalised per
    factor) as importances: several times faster, values close to but not equal to disentanglement_lib's (the measured
    agreement is in `docs/benchmarks.md`). Report which booster a figure used.

    Returns:
        `disentanglement`, `completeness`, `informativeness_train`, `informativeness_test` (the reported one).
    """
    if booster not in DCI_BOOSTERS:
        raise ValueError(f"dci booster must be one of {', '.join(DCI_BOOSTERS)}, got {booster!r}.")
    if booster == "histogram" and importlib.util.find_spec("lightgbm") is None:
        raise ImportError(
            'dci(booster="histogram") needs lightgbm: pip install -e ".[fast-dci]" (or pip install lightgbm).'
        )
    codes, factors = check_codes_and_factors(codes, factors)
    random_state = as_random_state(random_state)
    train = sample_rows(len(codes), num_train, random_state)
    test = sample_rows(len(codes), num_test, random_state)
    seeds = random_state.randint(2**31 - 1, size=factors.shape[1])
    largest_first = np.argsort([-len(np.unique(factors[train, j])) for j in range(factors.shape[1])], kind="stable")
    fitted = Parallel(n_jobs=n_jobs)(
        delayed(_fit_factor)(codes[train], factors[train, j], codes[test], factors[test, j], seeds[j], booster)
        for j in largest_first
    )
    results = [fitted[position] for position in np.argsort(largest_first)]
    importance = np.stack([r[0] for r in results], axis=1)
    return {
        "disentanglement": disentanglement(importance),
        "completeness": completeness(importance),
        "informativeness_train": float(np.mean([r[1] for r in results])),
        "informativeness_test": float(np.mean([r[2] for r in results])),
    }
