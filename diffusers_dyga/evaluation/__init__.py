"""Disentanglement metrics from their definitions, with disentanglement_lib's standard settings as defaults.

Every metric takes `codes` `(n, num_codes)` and `factors` `(n, num_factors)` for the rows of a full factor grid
and returns a dict of named floats.
"""

from .controllability import controllability, evaluate_controllability, unit_factor_shares
from .dci import DCI_BOOSTERS, completeness, dci, disentanglement
from .downstream import downstream_accuracy
from .factor_classifier import FactorClassifier, load_or_train_factor_classifier, train_factor_classifier
from .factor_vae import factor_vae_score
from .mig import mig
from .modularity_explicitness import modularity, modularity_explicitness
from .representations import REPRESENTATIONS, encode_representation, evaluate_pipeline, token_pca
from .sap import sap
from .suite import dataset_images, encode_dataset, evaluate_representation, flatten_metrics

__all__ = [
    "REPRESENTATIONS",
    "FactorClassifier",
    "completeness",
    "controllability",
    "dataset_images",
    "DCI_BOOSTERS",
    "dci",
    "disentanglement",
    "downstream_accuracy",
    "encode_dataset",
    "encode_representation",
    "evaluate_controllability",
    "evaluate_pipeline",
    "evaluate_representation",
    "factor_vae_score",
    "flatten_metrics",
    "load_or_train_factor_classifier",
    "mig",
    "modularity",
    "modularity_explicitness",
    "sap",
    "token_pca",
    "train_factor_classifier",
    "unit_factor_shares",
]
