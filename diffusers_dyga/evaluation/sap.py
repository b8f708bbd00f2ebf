"""Separated Attribute Predictability (Kumar et al., 2018), as in disentanglement_lib."""

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from .utils import as_random_state, check_codes_and_factors, sample_rows


def sap(
    codes: np.ndarray,
    factors: np.ndarray,
    num_train: int = 10000,
    num_test: int = 5000,
    random_state: int | np.random.RandomState = 0,
) -> dict[str, float]:
    """
    SAP with disentanglement_lib's settings for discrete factors: for each (code, factor) pair, a
    `LinearSVC(C=0.01, class_weight="balanced")` (seeded from `random_state`) on that code alone, scored by test accuracy; per factor, the gap
    between the two best codes, averaged over factors. Factors with one value are left out.

    Returns:
        `sap`.
    """
    codes, factors = check_codes_and_factors(codes, factors)
    random_state = as_random_state(random_state)
    train = sample_rows(len(codes), num_train, random_state)
    test = sample_rows(len(codes), num_test, random_state)
    gaps = []
    for j in range(factors.shape[1]):
        y_train, y_test = factors[train, j], factors[test, j]
        if len(np.unique(y_train)) < 2:
            continue
        scores = []
        seed = random_state.randint(2**31 - 1)
        for i in range(codes.shape[1]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                classifier = LinearSVC(C=0.01, class_weight="balanced", random_state=seed).fit(codes[train, i : i + 1], y_train)
            scores.append(np.mean(classifier.predict(codes[test, i : i + 1]) == y_test))
        ranked = np.sort(scores)[::-1]
        gaps.append(ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0))
    return {"sap": float(np.mean(gaps)) if gaps else 0.0}
