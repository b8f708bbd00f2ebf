"""Training-only terms on the latent units, in the spirit of `diffusers.training_utils`."""

import torch


def unit_kurtosis(units: torch.Tensor) -> torch.Tensor:
    """Mean kurtosis of the units over a batch: `(batch, num_units)` -> scalar.

    Each unit is standardised over the batch, and the fourth moment is averaged over batch and units. A Gaussian unit
    scores 3, a unit taking 3 equally likely values 1.5, two such values 1. A unit that mixes several independent
    factors tends toward the Gaussian (central limit theorem), so minimising this term, as in kurtosis-based ICA,
    rotates whitened units toward single factors with few values. It assumes such sub-Gaussian factors; it would push
    a unit away from a factor with a heavy-tailed distribution.
    """
    if units.ndim != 2 or units.shape[0] < 2:
        raise ValueError(f"unit_kurtosis expects units of shape (batch >= 2, num_units), got {tuple(units.shape)}.")
    units = units.float()
    standardised = (units - units.mean(dim=0)) / units.std(dim=0).clamp_min(1e-6)
    return standardised.pow(4).mean()
