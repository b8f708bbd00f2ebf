"""Training-only terms on the latent units and the loss, in the spirit of `diffusers.training_utils`."""

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler


def standardised_over_batch(units: torch.Tensor) -> torch.Tensor:
    """Each unit centred and scaled to unit standard deviation over the batch, in float32: `(batch, num_units)`."""
    units = units.float()
    return (units - units.mean(dim=0)) / units.std(dim=0).clamp_min(1e-6)


def unit_kurtosis(units: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """Mean kurtosis of the units over a batch: `(batch, num_units)` -> scalar.

    Each unit is standardised over the batch, and its fourth moment taken over the batch. A Gaussian unit scores 3, a
    unit taking 3 equally likely values 1.5, two such values 1. A unit that mixes several independent factors tends
    toward the Gaussian (central limit theorem), so minimising this term, as in kurtosis-based ICA, rotates whitened
    units toward single factors with few values. It assumes such sub-Gaussian factors; it would push a unit away from
    a factor with a heavy-tailed distribution.

    With `floor` above 0, each unit counts only by how far its kurtosis exceeds the floor (`max(kurtosis - floor, 0)`,
    averaged over units): a floor of 1.8, a uniform factor's kurtosis, still charges mixtures (two uniform factors
    mixed at 45° score 2.4) but no longer rewards splitting a many-valued factor into two-valued bits (1.0).
    """
    if units.ndim != 2 or units.shape[0] < 2:
        raise ValueError(f"unit_kurtosis expects units of shape (batch >= 2, num_units), got {tuple(units.shape)}.")
    if floor < 0:
        raise ValueError(f"unit_kurtosis floor must be non-negative, got {floor}.")
    standardised = standardised_over_batch(units)
    kurtosis = standardised.pow(4).mean(dim=0)
    return (kurtosis - floor).clamp_min(0.0).mean()


def unit_skewness(units: torch.Tensor) -> torch.Tensor:
    """Mean squared skewness of the units over a batch: `(batch, num_units)` -> scalar.

    Each unit is standardised over the batch, and its third moment taken over the batch and squared. A factor with
    evenly spread values, held by one unit, is symmetric and scores 0. A three-valued factor held as a triangle by
    two whitened units (the shape whitening and the kurtosis term leave it in: its kurtosis is 1.5 in every direction)
    scores 0.5 summed over the two whatever their rotation, and no two uncorrelated units can both hold such a factor
    with zero skewness, so minimising this term asks for one unit per odd-valued factor. It assumes symmetric
    factors; it would push a unit away from a factor whose values are unevenly spread.
    """
    if units.ndim != 2 or units.shape[0] < 2:
        raise ValueError(f"unit_skewness expects units of shape (batch >= 2, num_units), got {tuple(units.shape)}.")
    standardised = standardised_over_batch(units)
    return standardised.pow(3).mean(dim=0).pow(2).mean()


def unit_dependence(units: torch.Tensor, bandwidth: float = 1.0) -> torch.Tensor:
    """Mean statistical dependence between pairs of units over a batch: `(batch, num_units)` -> scalar in [0, 1].

    For each pair of units, the normalised Hilbert-Schmidt independence criterion (kernel CKA) of Gaussian kernels of
    width `bandwidth` on the standardised units: near 0 for independent units (up to a bias of order 1 / batch), 1 for
    units that are functions of each other. Unlike the kurtosis, it does not favour units with few values: two
    units that split one many-valued factor into bits stay independent, a unit that mixes two factors does not.
    """
    if units.ndim != 2 or units.shape[0] < 2 or units.shape[1] < 2:
        raise ValueError(
            f"unit_dependence expects units of shape (batch >= 2, num_units >= 2), got {tuple(units.shape)}."
        )
    standardised = standardised_over_batch(units)
    columns = standardised.T.unsqueeze(-1)
    kernels = torch.exp(-(columns - columns.transpose(1, 2)).pow(2) / (2 * bandwidth**2))
    centred = kernels - kernels.mean(dim=1, keepdim=True) - kernels.mean(dim=2, keepdim=True)
    centred = centred + kernels.mean(dim=(1, 2), keepdim=True)
    flat = centred.flatten(1)
    gram = flat @ flat.T
    scale = gram.diagonal().clamp_min(1e-12).sqrt()
    alignment = gram / (scale[:, None] * scale[None, :])
    num_units = units.shape[1]
    off_diagonal = ~torch.eye(num_units, dtype=torch.bool, device=units.device)
    return alignment[off_diagonal].mean()


def unit_kl_divergence(units: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """KL divergence of the units' Gaussian posteriors from N(0, 1), summed over units, averaged over the batch:
    `(batch, num_units)` means and log-variances -> scalar (nats per image), as in a VAE."""
    if units.shape != log_variance.shape or units.ndim != 2:
        raise ValueError(
            f"unit_kl_divergence expects means and log-variances of the same shape (batch, num_units), got "
            f"{tuple(units.shape)} and {tuple(log_variance.shape)}."
        )
    units, log_variance = units.float(), log_variance.float()
    return 0.5 * (units.pow(2) + log_variance.exp() - log_variance - 1.0).sum(dim=1).mean()


def swap_one_unit(units: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row with one unit, drawn at random, taken from the next row (the last from the first): the single-unit
    edits of a latent interchange. `(batch, num_units)` -> `(batch, num_units)` edited units and the `(batch,)` index
    of the unit each row took."""
    if units.ndim != 2 or units.shape[0] < 2:
        raise ValueError(f"swap_one_unit expects units of shape (batch >= 2, num_units), got {tuple(units.shape)}.")
    swapped = torch.randint(units.shape[1], (units.shape[0],), generator=generator).to(units.device)
    taken = F.one_hot(swapped, units.shape[1]).bool()
    return torch.where(taken, units.roll(-1, dims=0), units), swapped


def predicted_original_sample(
    scheduler: DDPMScheduler, noisy: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The clean sample a denoiser's output implies at each row's timestep, for the scheduler's `prediction_type`
    (`epsilon`, `sample` or `v_prediction`): `(batch, ...)` noisy samples and predictions, `(batch,)` timesteps."""
    alphas = scheduler.alphas_cumprod.to(device=noisy.device, dtype=torch.float32)[timesteps.long()]
    alphas = alphas.view(-1, *([1] * (noisy.ndim - 1)))
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "sample":
        return prediction
    if prediction_type == "epsilon":
        return ((noisy.float() - (1 - alphas).sqrt() * prediction.float()) / alphas.sqrt()).to(prediction.dtype)
    if prediction_type == "v_prediction":
        return (alphas.sqrt() * noisy.float() - (1 - alphas).sqrt() * prediction.float()).to(prediction.dtype)
    raise ValueError(f"Unknown prediction_type {prediction_type!r}: expected epsilon, sample or v_prediction.")


def detail_weights(images: torch.Tensor, strength: float, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-pixel loss weights that favour the images' edges: `(batch, channels, H, W)` -> `(batch, 1, h, w)`.

    The weight is `1 - strength + strength * g / mean(g)`, where `g` is each image's Sobel gradient magnitude (averaged
    over channels) and the mean is taken over that image, so every image's weights average 1. Small objects are mostly
    edge at low resolution, and their contours carry shape, size and position, which a plain pixel loss leaves to a
    few percent of its pixels. `size` resamples the weights (area average) to a latent grid's `(h, w)`.
    """
    if images.ndim != 4:
        raise ValueError(f"detail_weights expects images of shape (batch, channels, H, W), got {tuple(images.shape)}.")
    if not 0 <= strength <= 1:
        raise ValueError(f"detail_weights strength must be in [0, 1], got {strength}.")
    gray = images.float().mean(dim=1, keepdim=True)
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=images.device) / 8
    kernels = torch.stack([sobel_x, sobel_x.T]).unsqueeze(1)
    gradients = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = gradients.pow(2).sum(dim=1, keepdim=True).sqrt()
    if size is not None and tuple(magnitude.shape[-2:]) != tuple(size):
        magnitude = F.adaptive_avg_pool2d(magnitude, size)
    mean = magnitude.mean(dim=(2, 3), keepdim=True)
    relative = torch.where(mean > 1e-8, magnitude / mean.clamp_min(1e-8), torch.ones_like(magnitude))
    return 1 - strength + strength * relative
