"""A factor classifier that reads rendered images, independent of the model under test.

Trained on a ground-truth dataset's own images with blur, noise and small colour shifts, so that it also reads the
imperfect renders of a diffusion decoder. Cached per dataset: the first call trains it (seconds on a small grid),
later calls load it.
"""

import hashlib
import json
import os

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..data.grid import default_cache_dir, factor_names, factor_sizes, factors_array, write_aside
from .suite import dataset_images

CLASSIFIER_VERSION = 1
HELD_OUT_DEGRADATION = {"blur_sigma": 1.0, "noise_std": 0.05}


class FactorClassifier(ModelMixin, ConfigMixin):
    """
    A small CNN with one softmax head per factor: images `(batch, in_channels, sample_size, sample_size)` in [-1, 1]
    -> logits `(batch, sum(factor_sizes))`.

    Args:
        sample_size (`int`): height and width of the images.
        in_channels (`int`): channels of the images.
        factor_sizes (`tuple[int]`): number of values of each factor.
        block_out_channels (`tuple[int]`): widths of the conv blocks; each block halves the resolution.
        hidden_dim (`int`): width of the layer before the heads.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        factor_sizes: tuple[int, ...] = (3, 3, 3, 3, 3, 3),
        block_out_channels: tuple[int, ...] = (16, 32, 64),
        hidden_dim: int = 128,
    ):
        super().__init__()
        layers, channels = [], in_channels
        for out_channels in block_out_channels:
            layers += [
                nn.Conv2d(channels, out_channels, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(out_channels, out_channels, 4, stride=2, padding=1),
                nn.SiLU(),
            ]
            channels = out_channels
        spatial = sample_size // 2 ** len(block_out_channels)
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * spatial * spatial, hidden_dim), nn.SiLU())
        self.heads = nn.Linear(hidden_dim, sum(factor_sizes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = (self.config.in_channels, self.config.sample_size, self.config.sample_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"FactorClassifier expects images of shape (batch, {', '.join(map(str, expected))}), got {tuple(images.shape)}.")
        return self.heads(self.features(images))

    def split_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`(batch, sum(factor_sizes))` -> one `(batch, size)` tensor per factor."""
        return torch.split(logits, list(self.config.factor_sizes), dim=1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Images `(batch, C, H, W)` in [-1, 1] -> `(batch, num_factors)` int64 factor readings."""
        was_training = self.training
        self.eval()
        readings = []
        for start in range(0, len(images), batch_size):
            logits = self(images[start : start + batch_size].to(self.device, self.dtype))
            readings.append(torch.stack([part.argmax(dim=1) for part in self.split_logits(logits)], dim=1).cpu())
        self.train(was_training)
        return torch.cat(readings).numpy().astype(np.int64)


def degrade(images: torch.Tensor, blur_sigma: torch.Tensor, noise_std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image Gaussian blur (`blur_sigma` `(batch,)`, pixels) then Gaussian noise (`noise_std` `(batch,)`) on
    `(batch, C, H, W)` images in [-1, 1]."""
    batch, channels, height, width = images.shape
    offsets = torch.arange(-3, 4, dtype=images.dtype)
    sigma = blur_sigma.to(images.dtype).clamp_min(1e-3)[:, None]
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.conv2d(F.pad(flat, (3, 3, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=batch * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, 3, 3), mode="replicate"), kernel[:, None, :, None], groups=batch * channels)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return flat.reshape(images.shape) + noise_std.to(images.dtype)[:, None, None, None] * noise


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur (sigma up to 1.5 px), noise (std up to 0.15) and colour shift (up to 0.05 per channel)."""
    batch = images.shape[0]
    blur_sigma = torch.rand(batch, generator=generator) * 1.5
    noise_std = torch.rand(batch, generator=generator) * 0.15
    shift = (torch.rand(batch, images.shape[1], 1, 1, generator=generator) * 2 - 1) * 0.05
    return degrade(images, blur_sigma, noise_std, generator) + shift


def factor_accuracy(readings: np.ndarray, factors: np.ndarray, names: list[str]) -> dict[str, float]:
    """`{name: share of rows whose reading equals the factor}` for `(n, num_factors)` readings and factors."""
    return {name: float(np.mean(readings[:, j] == factors[:, j])) for j, name in enumerate(names)}


def train_factor_classifier(
    images: torch.Tensor,
    factors: np.ndarray,
    sizes: list[int],
    names: list[str],
    num_steps: int = 1000,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    held_out_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[FactorClassifier, dict]:
    """
    Trains a [`FactorClassifier`] on `images` `(n, C, H, W)` in [-1, 1] with `factors` `(n, num_factors)`, holding
    out `held_out_fraction` of the rows.

    Returns:
        The classifier (eval mode) and its held-out accuracy per factor, on clean images and on images degraded by
        `HELD_OUT_DEGRADATION` (blur sigma 1 px, noise std 0.05).
    """
    if len(images) != len(factors):
        raise ValueError(f"Got {len(images)} images but {len(factors)} factor rows.")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    order = np.random.RandomState(seed).permutation(len(images))
    num_held_out = int(round(held_out_fraction * len(images)))
    held_out, train = order[:num_held_out], order[num_held_out:]
    if len(train) == 0:
        raise ValueError(f"No training rows left: {len(images)} images with held_out_fraction {held_out_fraction}.")
    classifier = FactorClassifier(sample_size=images.shape[-1], in_channels=images.shape[1], factor_sizes=tuple(sizes))
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, num_steps)
    targets = torch.from_numpy(factors)
    classifier.train()
    for _ in range(num_steps):
        rows = torch.from_numpy(train[torch.randint(len(train), (batch_size,), generator=generator).numpy()])
        logits = classifier(augment(images[rows], generator))
        loss = sum(F.cross_entropy(part, targets[rows, j]) for j, part in enumerate(classifier.split_logits(logits)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    classifier.eval()
    report = {"num_train": len(train), "num_held_out": len(held_out), "num_steps": num_steps}
    if len(held_out):
        clean = images[held_out]
        count = len(held_out)
        degraded = degrade(
            clean,
            torch.full((count,), HELD_OUT_DEGRADATION["blur_sigma"]),
            torch.full((count,), HELD_OUT_DEGRADATION["noise_std"]),
            generator,
        )
        report["held_out_accuracy"] = factor_accuracy(classifier.predict(clean), factors[held_out], names)
        report["held_out_degraded_accuracy"] = factor_accuracy(classifier.predict(degraded), factors[held_out], names)
        report["degradation"] = HELD_OUT_DEGRADATION
    return classifier, report


def load_or_train_factor_classifier(
    dataset: datasets.Dataset, cache_dir: str | None = None, seed: int = 0, **training
) -> tuple[FactorClassifier, dict]:
    """
    The factor classifier of a ground-truth `dataset` (an `image` column and `ClassLabel` factor columns): loaded
    from `cache_dir/factor_classifiers/` when one was trained on this dataset with the same settings, trained (see
    [`train_factor_classifier`]) and cached otherwise. The cache entry is written aside and moved into place.

    Returns:
        The classifier and its report (held-out accuracy on clean and degraded images).
    """
    names = factor_names(dataset)
    if not names:
        raise ValueError("The factor classifier needs a dataset with factor (ClassLabel) columns; this one has none.")
    key = json.dumps(
        {"dataset": dataset._fingerprint, "version": CLASSIFIER_VERSION, "seed": seed, **training}, sort_keys=True
    )
    cache_dir = os.path.join(cache_dir or default_cache_dir(), "factor_classifiers")
    path = os.path.join(cache_dir, hashlib.sha256(key.encode()).hexdigest()[:16])
    if os.path.isfile(os.path.join(path, "report.json")):
        with open(os.path.join(path, "report.json")) as file:
            return FactorClassifier.from_pretrained(path).eval(), json.load(file)
    classifier, report = train_factor_classifier(
        dataset_images(dataset), factors_array(dataset), factor_sizes(dataset), names, seed=seed, **training
    )

    def write(folder: str) -> None:
        classifier.save_pretrained(folder)
        with open(os.path.join(folder, "report.json"), "w") as file:
            json.dump(report, file, indent=2)

    write_aside(path, write)
    return classifier, report
