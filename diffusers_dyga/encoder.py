"""The feature extractor: images -> scalar latent units -> one token per unit."""

import math
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .coordinates import append_coordinates
from .loading import StrictLoadingMixin


@dataclass
class DisentangledEncoderOutput(BaseOutput):
    """
    Args:
        units (`torch.Tensor` of shape `(batch, num_units)`): one scalar per latent unit.
        tokens (`torch.Tensor` of shape `(batch, num_units, unit_dim)`): the units' tokens, read by the U-Net's
            cross-attention.
        unit_log_variance (`torch.Tensor` of shape `(batch, num_units)`, *optional*): with
            `unit_posterior="gaussian"`, the log-variance of each unit's posterior (`units` is its mean).
    """

    units: torch.Tensor
    tokens: torch.Tensor = None  # a default lets accelerate's fp32 cast rebuild the output from a dict
    unit_log_variance: torch.Tensor | None = None


def as_widths(widths: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """A width or a sequence of widths -> a tuple of widths."""
    return (widths,) if isinstance(widths, int) else tuple(widths)


def mlp_layers(in_features: int, widths: tuple[int, ...], act_fn: str) -> list[nn.Module]:
    """Linear layers of the given widths, each followed by the activation."""
    layers = []
    for width in widths:
        layers += [nn.Linear(in_features, width), get_activation(act_fn)]
        in_features = width
    return layers


class ConvTrunk(nn.Module):
    """The paper-style conv stack: an optional 7x7 stride-1 stem, 4x4 stride-2 convolutions (each optionally
    batch-normalised), then a flat MLP. `(B, C, H, W) -> (B, hidden_dims[-1])`."""

    def __init__(
        self,
        in_channels: int,
        sample_size: int,
        block_out_channels: tuple[int, ...],
        hidden_dims: tuple[int, ...],
        stem_channels: int | None = None,
        norm_type: str = "none",
        act_fn: str = "silu",
    ):
        super().__init__()

        def conv_block(channels: int, out_channels: int, **conv) -> list[nn.Module]:
            norm = [nn.BatchNorm2d(out_channels)] if norm_type == "batch" else []
            return [nn.Conv2d(channels, out_channels, **conv), *norm, get_activation(act_fn)]

        channels = in_channels
        if stem_channels is not None:
            self.stem = nn.Sequential(*conv_block(channels, stem_channels, kernel_size=7, stride=1, padding=3))
            channels = stem_channels
        layers = []
        for out_channels in block_out_channels:
            layers += conv_block(channels, out_channels, kernel_size=4, stride=2, padding=1)
            channels = out_channels
        self.convs = nn.Sequential(*layers)
        spatial = sample_size // 2 ** len(block_out_channels)
        self.proj = nn.Sequential(nn.Flatten(), *mlp_layers(channels * spatial * spatial, hidden_dims, act_fn))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "stem"):
            images = self.stem(images)
        return self.proj(self.convs(images))


class BackboneTrunk(nn.Module):
    """A `transformers` vision backbone (ResNet, ConvNeXt, ...), globally pooled. `(B, C, H, W) -> (B, hidden)`."""

    def __init__(self, backbone_config: dict[str, Any], in_channels: int, hidden_dims: tuple[int, ...], act_fn: str):
        super().__init__()
        from transformers import AutoBackbone, AutoConfig

        config = AutoConfig.for_model(**{**backbone_config, "num_channels": in_channels})
        self.backbone = AutoBackbone.from_config(config)
        self.proj = nn.Sequential(*mlp_layers(self.backbone.channels[-1], hidden_dims, act_fn))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(pixel_values=images).feature_maps[-1]
        return self.proj(features.mean(dim=(2, 3)))


class DisentangledEncoder(StrictLoadingMixin, ModelMixin, ConfigMixin):
    """
    Maps images to `num_units` scalar latent units and embeds each unit with its own small MLP into a token.

    Images `(batch, in_channels, sample_size, sample_size)` in [-1, 1] -> units `(batch, num_units)` -> tokens
    `(batch, num_units, unit_dim)`. The per-unit MLPs (1 -> `token_hidden_dim` -> `unit_dim`) are batched over units.

    The defaults are this package's compact encoder. The official one (Jun et al., `FeatureExtractor`) is
    `stem_channels=64, block_out_channels=(128, 256, 256, 256), norm_type="batch", act_fn="relu",
    hidden_dim=(4096, 256), token_hidden_dim=(256, 512), token_output_act=True` at `sample_size=64`.

    Args:
        sample_size (`int`): height and width of the input images.
        in_channels (`int`): channels of the input images.
        num_units (`int`): number of scalar latent units (the paper uses 20).
        unit_dim (`int`): dimension of each unit's token (the paper uses 32).
        block_out_channels (`tuple[int]`): widths of the conv trunk's stride-2 convolutions.
        hidden_dim (`int` or `tuple[int]`): width(s) of the layer(s) between the trunk and the units.
        token_hidden_dim (`int` or `tuple[int]`): hidden width(s) of each unit's token MLP.
        stem_channels (`int`, *optional*): width of a 7x7 stride-1 convolution before the stride-2 ones.
        norm_type (`str`, defaults to `"none"`): `"batch"` puts BatchNorm after every trunk convolution.
        act_fn (`str`, defaults to `"silu"`): activation of the trunk and the token MLPs (diffusers' `get_activation`).
        token_output_act (`bool`, defaults to `False`): apply the activation to the tokens too.
        unit_posterior (`str`, defaults to `"deterministic"`): `"gaussian"` makes each unit the mean of a Gaussian
            posterior whose log-variance the encoder also predicts, as in a VAE: in training mode the tokens are
            made from a sample, and the training loss can add the posterior's KL divergence from N(0, 1)
            ([`unit_kl_divergence`]), which charges every unit for what it carries so that unneeded units fall
            silent and no factor is copied onto several units. Replaces `unit_noise`. On raw units the posterior
            starts narrow (standard deviation 0.05): started at the prior's 1, its noise drowned the untrained means
            and the units collapsed at every KL weight tried. With `unit_whitening` the whitened units are the means,
            whose spread the whitening fixes, so the KL charges only each image's posterior width: a learned,
            per-image and per-unit version of `unit_noise` (ours), starting at 0.3 (the `tiny` preset's noise).
        coordinate_input (`bool`, defaults to `False`): append two channels holding each pixel's x and y coordinate
            to the images (CoordConv), so that the trunk can read an object's position as a weighted sum.
        unit_noise (`float`, defaults to 0.0): in training mode, Gaussian noise of this many batch standard deviations
            (per unit, not differentiated) is added to each unit before its token is made; it caps how much each
            unit can carry. No effect in eval mode.
        unit_whitening (`bool`, defaults to `False`): whiten the units (zero mean, identity covariance; Cholesky
            whitening of the batch in training, of running statistics otherwise), so that no two units can carry the
            same signal. Training batches must then be larger than `num_units`.
        whitening_momentum (`float`, defaults to 0.1): update rate of the running mean and covariance.
        whitening_shrinkage (`float`, defaults to 0.0): whiten with the covariance plus this fraction of its mean
            variance on the diagonal (ours). At 0 every unit leaves the whitening at unit variance, so the units a
            factor does not need are filled with something (a second coordinate of a factor, a function of a
            position); above 0 a direction whose variance is small against the others stays small, so a unit can
            fall silent, which the posterior's KL divergence (`unit_posterior="gaussian"`, whose mean term charges
            each unit's spread) then asks of the units the denoiser does not need. Needs `unit_whitening`.
        unit_gates (`bool`, defaults to `False`): multiply each whitened unit by a learned gate in (0, 1)
            ([`~DisentangledEncoder.gates`]), and make the training noise absolute (`unit_noise` standard deviations of
            a whitened unit) instead of relative to each unit's spread, so that a gate sets how much its unit can carry
            through the noise. Charged in the loss (the training script's `--unit_gate_weight`), a gate stays open only
            where its unit pays for itself, and the units a factor does not need fall silent (ours). Needs
            `unit_whitening` and `unit_noise > 0`.
        backbone_config (`dict`, *optional*): a `transformers` backbone config as a dict (`config.to_dict()`, e.g. of
            a `ResNetConfig` or `ConvNextConfig`); replaces the conv trunk. See [`~DisentangledEncoder.from_backbone`]
            to start from pretrained backbone weights.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        num_units: int = 20,
        unit_dim: int = 32,
        block_out_channels: tuple[int, ...] = (32, 32, 64, 64),
        hidden_dim: int | tuple[int, ...] = 256,
        token_hidden_dim: int | tuple[int, ...] = 64,
        unit_noise: float = 0.0,
        unit_whitening: bool = False,
        whitening_momentum: float = 0.1,
        whitening_shrinkage: float = 0.0,
        backbone_config: dict[str, Any] | None = None,
        stem_channels: int | None = None,
        norm_type: str = "none",
        act_fn: str = "silu",
        token_output_act: bool = False,
        coordinate_input: bool = False,
        unit_posterior: str = "deterministic",
        unit_gates: bool = False,
    ):
        super().__init__()
        if unit_noise < 0:
            raise ValueError(f"unit_noise must be non-negative, got {unit_noise}.")
        if unit_posterior not in ("deterministic", "gaussian"):
            raise ValueError(f"unit_posterior must be 'deterministic' or 'gaussian', got {unit_posterior!r}.")
        if unit_posterior == "gaussian" and unit_noise > 0:
            raise ValueError("unit_posterior='gaussian' replaces unit_noise: set unit_noise=0.")
        if unit_gates and not (unit_whitening and unit_noise > 0):
            raise ValueError(
                "unit_gates scales whitened units against absolute training noise: set unit_whitening=True and "
                f"unit_noise > 0 (got unit_whitening={unit_whitening}, unit_noise={unit_noise})."
            )
        if whitening_shrinkage < 0 or (whitening_shrinkage > 0 and not unit_whitening):
            raise ValueError(
                f"whitening_shrinkage must be non-negative and needs unit_whitening=True, got {whitening_shrinkage} "
                f"with unit_whitening={unit_whitening}."
            )
        if norm_type not in ("none", "batch"):
            raise ValueError(f"norm_type must be 'none' or 'batch', got {norm_type!r}.")
        hidden_dims, token_hidden_dims = as_widths(hidden_dim), as_widths(token_hidden_dim)
        trunk_channels = in_channels + 2 if coordinate_input else in_channels
        if backbone_config is None:
            if sample_size % 2 ** len(block_out_channels) != 0:
                raise ValueError(
                    f"sample_size={sample_size} must be divisible by 2**len(block_out_channels)="
                    f"{2 ** len(block_out_channels)}."
                )
            self.trunk = ConvTrunk(
                trunk_channels, sample_size, tuple(block_out_channels), hidden_dims, stem_channels, norm_type, act_fn
            )
        else:
            self.trunk = BackboneTrunk(backbone_config, trunk_channels, hidden_dims, act_fn)
        self.to_units = nn.Linear(hidden_dims[-1], num_units)
        if unit_posterior == "gaussian":
            self.to_unit_log_variance = nn.Linear(hidden_dims[-1], num_units)
            nn.init.zeros_(self.to_unit_log_variance.weight)
            initial_std = 0.3 if unit_whitening else 0.05
            nn.init.constant_(self.to_unit_log_variance.bias, 2 * math.log(initial_std))
        if unit_whitening:
            self.register_buffer("running_mean", torch.zeros(num_units))
            self.register_buffer("running_covariance", torch.eye(num_units))
        if unit_gates:
            self.unit_gate_logits = nn.Parameter(torch.full((num_units,), 4.0))

        self.token_act = get_activation(act_fn)
        self.token_in_weight = nn.Parameter(torch.randn(num_units, token_hidden_dims[0]))
        self.token_in_bias = nn.Parameter(torch.zeros(num_units, token_hidden_dims[0]))
        self.token_hidden_weights = nn.ParameterList(
            nn.Parameter(torch.randn(num_units, width, next_width) / width**0.5)
            for width, next_width in zip(token_hidden_dims[:-1], token_hidden_dims[1:])
        )
        self.token_hidden_biases = nn.ParameterList(
            nn.Parameter(torch.zeros(num_units, width)) for width in token_hidden_dims[1:]
        )
        self.token_out_weight = nn.Parameter(
            torch.randn(num_units, token_hidden_dims[-1], unit_dim) / token_hidden_dims[-1] ** 0.5
        )
        self.token_out_bias = nn.Parameter(torch.zeros(num_units, unit_dim))

    @classmethod
    def from_backbone(cls, backbone_name_or_path: str, **config) -> "DisentangledEncoder":
        """Builds an encoder whose trunk starts from a local pretrained `transformers` backbone checkpoint."""
        from transformers import MODEL_FOR_BACKBONE_MAPPING, AutoConfig

        backbone_config = AutoConfig.from_pretrained(backbone_name_or_path, local_files_only=True)
        backbone_class = MODEL_FOR_BACKBONE_MAPPING[type(backbone_config)]
        backbone = backbone_class.from_pretrained(backbone_name_or_path, local_files_only=True)
        encoder = cls(backbone_config=backbone.config.to_dict(), **config)
        encoder.trunk.backbone.load_state_dict(backbone.state_dict())
        return encoder

    def check_images(self, images: torch.Tensor) -> None:
        expected = (self.config.in_channels, self.config.sample_size, self.config.sample_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"DisentangledEncoder expects images of shape (batch, {', '.join(map(str, expected))}), "
                f"got {tuple(images.shape)}."
            )

    def check_units(self, units: torch.Tensor) -> None:
        if units.ndim != 2 or units.shape[1] != self.config.num_units:
            raise ValueError(
                f"Expected units of shape (batch, {self.config.num_units}), got {tuple(units.shape)}."
            )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """`(batch, in_channels, H, W)` images in [-1, 1] -> `(batch, hidden_dim)` trunk features."""
        self.check_images(images)
        if self.config.coordinate_input:
            images = append_coordinates(images)
        return self.trunk(images)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """`(batch, in_channels, H, W)` images in [-1, 1] -> `(batch, num_units)` units (posterior means)."""
        return self.units_from_features(self.features(images))

    @property
    def gates(self) -> torch.Tensor | None:
        """`(num_units,)` gates in (0, 1) that scale the whitened units, or `None` without `unit_gates`."""
        return torch.sigmoid(self.unit_gate_logits) if self.config.unit_gates else None

    def units_from_features(self, features: torch.Tensor, running_statistics: bool | None = None) -> torch.Tensor:
        """`(batch, hidden_dim)` features -> `(batch, num_units)` units; `running_statistics` whitens with the running
        mean and covariance even in training, and updates neither (default: in eval mode only)."""
        units = self.to_units(features)
        if self.config.unit_whitening:
            units = self.whiten(units, running_statistics)
        if self.config.unit_gates:
            units = units * self.gates.to(units.dtype)
        return units

    def whiten(self, units: torch.Tensor, running_statistics: bool | None = None) -> torch.Tensor:
        """Decorrelates `(batch, num_units)` units to zero mean and identity covariance (Cholesky whitening): batch
        statistics in training, running statistics otherwise or when `running_statistics` is True. With
        `whitening_shrinkage` the covariance gets that fraction of its mean variance added to the diagonal first,
        so directions of small variance come out below unit variance."""
        if running_statistics is None:
            running_statistics = not self.training
        if running_statistics:
            mean, covariance = self.running_mean, self.running_covariance
        else:
            if units.shape[0] <= self.config.num_units:
                raise ValueError(
                    f"Unit whitening needs training batches larger than num_units={self.config.num_units}, got a "
                    f"batch of {units.shape[0]}."
                )
            if not torch.isfinite(units).all():
                raise FloatingPointError(
                    "The units are not finite (NaN or inf): the input or the encoder's weights diverged. The "
                    "whitening's running statistics were left as they were."
                )
            mean, covariance = units.mean(dim=0), torch.cov(units.T)
            with torch.no_grad():
                momentum = self.config.whitening_momentum
                self.running_mean.lerp_(mean.detach().float(), momentum)
                self.running_covariance.lerp_(covariance.detach().float(), momentum)
        centered = units - mean
        covariance = covariance.float()
        eye = torch.eye(covariance.shape[0], device=covariance.device)
        ridge = 1e-4 + self.config.whitening_shrinkage
        jitter = ridge * covariance.diagonal().mean().clamp_min(1e-8) * eye
        cholesky = torch.linalg.cholesky(covariance + jitter)
        white = torch.linalg.solve_triangular(cholesky, centered.float().T, upper=False).T
        return white.to(units.dtype)

    def embed(self, units: torch.Tensor) -> torch.Tensor:
        """`(batch, num_units)` units -> `(batch, num_units, unit_dim)` tokens, one MLP per unit."""
        self.check_units(units)
        hidden = self.token_act(units.unsqueeze(-1) * self.token_in_weight + self.token_in_bias)
        for weight, bias in zip(self.token_hidden_weights, self.token_hidden_biases):
            hidden = self.token_act(torch.einsum("bnh,nhk->bnk", hidden, weight) + bias)
        tokens = torch.einsum("bnh,nhd->bnd", hidden, self.token_out_weight) + self.token_out_bias
        return self.token_act(tokens) if self.config.token_output_act else tokens

    def forward(self, images: torch.Tensor, return_dict: bool = True) -> DisentangledEncoderOutput | tuple:
        features = self.features(images)
        units = self.units_from_features(features)
        log_variance = None
        if self.config.unit_posterior == "gaussian":
            log_variance = self.to_unit_log_variance(features).clamp(-12.0, 6.0)
            sampled = units + (0.5 * log_variance).exp() * torch.randn_like(units) if self.training else units
            tokens = self.embed(sampled)
        elif self.training and self.config.unit_noise > 0 and units.shape[0] > 1:
            spread = 1.0 if self.config.unit_gates else units.detach().std(dim=0, keepdim=True)
            tokens = self.embed(units + self.config.unit_noise * spread * torch.randn_like(units))
        else:
            tokens = self.embed(units)
        output = DisentangledEncoderOutput(units=units, tokens=tokens, unit_log_variance=log_variance)
        return output if return_dict else output.to_tuple()
