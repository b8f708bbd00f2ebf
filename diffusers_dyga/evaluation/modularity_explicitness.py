"""Modularity and explicitness (Ridgeway & Zemel, 2018), as in disentanglement_lib."""

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from .utils import (
    as_random_state,
    check_codes_and_factors,
    discrete_mutual_info,
    histogram_discretize,
    sample_rows,
    standardize,
)


def modularity(mutual_info: np.ndarray) -> float:
    """`mutual_info` `(num_codes, num_factors)`: per code, 1 - (sum of squared MI but the max) / (max * (F - 1)),
    averaged; a code carrying no information scores 0."""
    squared = np.square(mutual_info)
    top = squared.max(axis=1)
    if squared.shape[1] == 1:
        return float(np.mean(top > 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = (squared.sum(axis=1) - top) / (top * (squared.shape[1] - 1.0))
    scores = np.where(top > 0, 1.0 - delta, 0.0)
    return float(np.mean(scores))


def _macro_auc(y: np.ndarray, probabilities: np.ndarray, classes: np.ndarray) -> float:
    """One-vs-rest ROC AUC averaged over the classes present with both labels."""
    aucs = []
    for k, label in enumerate(classes):
        positives = y == label
        if positives.any() and not positives.all():
            aucs.append(roc_auc_score(positives, probabilities[:, k]))
    return float(np.mean(aucs)) if aucs else 1.0


def modularity_explicitness(
    codes: np.ndarray,
    factors: np.ndarray,
    num_train: int = 10000,
    num_test: int = 5000,
    num_bins: int = 20,
    random_state: int | np.random.RandomState = 0,
) -> dict[str, float]:
    """
    Modularity and explicitness with disentanglement_lib's settings: modularity from the mutual information of
    `num_bins`-bin discretised codes on `num_train` rows; explicitness as the one-vs-rest ROC AUC of a default
    `LogisticRegression` per factor on standardised codes (train statistics), on train and on `num_test` rows.

    Returns:
        `modularity`, `explicitness_train`, `explicitness_test`.
    """
    codes, factors = check_codes_and_factors(codes, factors)
    random_state = as_random_state(random_state)
    train = sample_rows(len(codes), num_train, random_state)
    test = sample_rows(len(codes), num_test, random_state)
    mutual_info = discrete_mutual_info(histogram_discretize(codes[train], num_bins), factors[train])
    x_train, x_test = standardize(codes[train], codes[test])
    explicit_train, explicit_test = [], []
    for j in range(factors.shape[1]):
        y_train, y_test = factors[train, j], factors[test, j]
        if len(np.unique(y_train)) < 2:
            explicit_train.append(1.0)
            explicit_test.append(1.0)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier = LogisticRegression().fit(x_train, y_train)
        explicit_train.append(_macro_auc(y_train, classifier.predict_proba(x_train), classifier.classes_))
        explicit_test.append(_macro_auc(y_test, classifier.predict_proba(x_test), classifier.classes_))
    return {
        "modularity": modularity(mutual_info),
        "explicitness_train": float(np.mean(explicit_train)),
        "explicitness_test": float(np.mean(explicit_test)),
    }
