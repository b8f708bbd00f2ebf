"""Downstream task: predict each factor from the representation."""

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from .utils import as_random_state, check_codes_and_factors, sample_rows, standardize


def downstream_accuracy(
    codes: np.ndarray,
    factors: np.ndarray,
    num_train: int = 10000,
    num_test: int = 5000,
    classifier: str = "logistic",
    factor_names: list[str] | None = None,
    random_state: int | np.random.RandomState = 0,
) -> dict[str, float]:
    """
    Test accuracy of predicting each factor from standardised codes, trained on `num_train` random rows and tested
    on `num_test` others: `classifier="logistic"` (a linear probe, scikit-learn defaults) or `"mlp"` (one hidden
    layer of 100 units).

    Returns:
        `accuracy_<factor name>` per factor (names default to `factor_<i>`) and `mean_accuracy`.
    """
    codes, factors = check_codes_and_factors(codes, factors)
    if classifier not in ("logistic", "mlp"):
        raise ValueError(f"classifier must be 'logistic' or 'mlp', got {classifier!r}.")
    names = factor_names or [f"factor_{j}" for j in range(factors.shape[1])]
    if len(names) != factors.shape[1]:
        raise ValueError(f"Got {len(names)} factor names for {factors.shape[1]} factors.")
    random_state = as_random_state(random_state)
    train = sample_rows(len(codes), num_train, random_state)
    test = sample_rows(len(codes), num_test, random_state)
    x_train, x_test = standardize(codes[train], codes[test])
    scores = {}
    for j, name in enumerate(names):
        y_train, y_test = factors[train, j], factors[test, j]
        if len(np.unique(y_train)) < 2:
            scores[f"accuracy_{name}"] = float(np.mean(y_test == y_train[0]))
            continue
        if classifier == "logistic":
            model = LogisticRegression()
        else:
            model = MLPClassifier(random_state=random_state.randint(2**31 - 1), max_iter=300)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x_train, y_train)
        scores[f"accuracy_{name}"] = float(np.mean(model.predict(x_test) == y_test))
    scores["mean_accuracy"] = float(np.mean(list(scores.values())))
    return scores
