"""Disentanglement metrics from their definitions, with disentanglement_lib's standard settings as defaults.

Every metric takes `codes` `(n, num_codes)` and `factors` `(n, num_factors)` for the rows of a full factor grid
and returns a dict of named floats.
"""

from .dci import completeness, dci, disentanglement
from .downstream import downstream_accuracy
from .factor_vae import factor_vae_score
from .mig import mig
from .modularity_explicitness import modularity, modularity_explicitness
from .sap import sap
from .suite import encode_dataset, evaluate_representation, flatten_metrics

__all__ = [
    "completeness",
    "dci",
    "disentanglement",
    "downstream_accuracy",
    "encode_dataset",
    "evaluate_representation",
    "factor_vae_score",
    "flatten_metrics",
    "mig",
    "modularity",
    "modularity_explicitness",
    "sap",
]
