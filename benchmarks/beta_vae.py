"""A β-VAE baseline: what a user would train instead, for the same minutes on the same cores, scored with our metrics.

    python benchmarks/beta_vae.py --dataset builtin:shapes --factor_sizes 3 3 3 3 3 3 --minutes 11 --seeds 0 1 2

The model is disentanglement_lib's β-VAE at our resolution: four 4x4 stride-2 convolutions (32, 32, 64, 64), a
256-unit layer and `--num_latents` Gaussian latents; the decoder mirrors it; Bernoulli reconstruction loss on pixels in
[0, 1] plus β times the KL divergence, Adam, batch 64. It trains for `--minutes` of wall clock (or `--max_steps`),
then the posterior means of every grid image are scored by `evaluate_representation` at disentanglement_lib's sizes
(10,000 / 5,000 rows drawn with replacement). One JSON per seed under `results/beta_vae/`.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS_DIR, print_table, write_json
from torch import nn

from diffusers_dyga.data import factor_names, factors_array, load_builtin
from diffusers_dyga.evaluation import evaluate_representation
from diffusers_dyga.evaluation.suite import dataset_images


class BetaVAE(nn.Module):
    """`(B, C, H, W)` images in [0, 1] -> posterior means and log-variances `(B, num_latents)` -> pixel logits."""

    def __init__(self, in_channels: int, resolution: int, num_latents: int = 10, channels=(32, 32, 64, 64)):
        super().__init__()
        layers, previous = [], in_channels
        for width in channels:
            layers += [nn.Conv2d(previous, width, 4, stride=2, padding=1), nn.ReLU()]
            previous = width
        self.spatial = resolution // 2 ** len(channels)
        flat = channels[-1] * self.spatial**2
        self.encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, 256), nn.ReLU(), nn.Linear(256, 2 * num_latents))
        self.from_latents = nn.Sequential(nn.Linear(num_latents, 256), nn.ReLU(), nn.Linear(256, flat), nn.ReLU())
        layers = []
        widths = list(reversed(channels))
        for width, following in zip(widths, widths[1:] + [in_channels]):
            layers += [nn.ConvTranspose2d(width, following, 4, stride=2, padding=1), nn.ReLU()]
        self.decoder = nn.Sequential(*layers[:-1])
        self.top_channels = channels[-1]

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_variance = self.encoder(images).chunk(2, dim=1)
        return mean, log_variance

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        hidden = self.from_latents(latents).view(-1, self.top_channels, self.spatial, self.spatial)
        return self.decoder(hidden)

    def loss(self, images: torch.Tensor, beta: float) -> torch.Tensor:
        mean, log_variance = self.encode(images)
        latents = mean + torch.randn_like(mean) * (0.5 * log_variance).exp()
        reconstruction = F.binary_cross_entropy_with_logits(self.decode(latents), images, reduction="sum") / len(images)
        kl = 0.5 * (mean.square() + log_variance.exp() - 1 - log_variance).sum(1).mean()
        return reconstruction + beta * kl


def train_and_score(images: torch.Tensor, factors: np.ndarray, sizes: list[int], names: list[str], seed: int, options) -> dict:
    torch.manual_seed(seed)
    model = BetaVAE(images.shape[1], images.shape[2], options.num_latents)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < options.minutes * 60 and (options.max_steps is None or step < options.max_steps):
        batch = images[torch.randint(len(images), (options.batch_size,), generator=generator)]
        loss = model.loss(batch, options.beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
    minutes = (time.perf_counter() - start) / 60
    model.eval()
    with torch.no_grad():
        codes = torch.cat([model.encode(part)[0] for part in images.split(512)]).numpy()
    metrics = evaluate_representation(codes, factors, sizes, factor_names=names, random_state=seed)
    return {"seed": seed, "steps": step, "train_minutes": minutes, "final_loss": loss.item(), "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="builtin:shapes", choices=["builtin:shapes", "builtin:dsprites"])
    parser.add_argument("--factor_sizes", type=int, nargs="+", default=[3, 3, 3, 3, 3, 3])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=11.0, help="Wall-clock training budget per seed.")
    parser.add_argument("--max_steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--beta", type=float, default=4.0)
    parser.add_argument("--num_latents", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--output_dir", default=str(RESULTS_DIR / "beta_vae"))
    options = parser.parse_args()

    name = options.dataset.removeprefix("builtin:")
    dataset = load_builtin(name, resolution=options.resolution, factor_sizes=tuple(options.factor_sizes))
    images = (dataset_images(dataset) + 1) / 2
    factors, names = factors_array(dataset), factor_names(dataset)
    rows = []
    for seed in options.seeds:
        result = train_and_score(images, factors, options.factor_sizes, names, seed, options)
        tag = f"{name}-{'x'.join(map(str, options.factor_sizes))}-beta{options.beta:g}-seed{seed}"
        write_json(str(Path(options.output_dir) / f"{tag}.json"), {"options": vars(options), **result})
        metrics = result["metrics"]
        rows.append(
            [
                seed,
                result["steps"],
                result["train_minutes"],
                metrics["factor_vae"]["eval_accuracy"],
                metrics["dci"]["disentanglement"],
                metrics["mig"]["mig"],
                metrics["downstream"]["mean_accuracy"],
            ]
        )
    print_table(["seed", "steps", "minutes", "FactorVAE", "DCI-D", "MIG", "downstream"], rows)


if __name__ == "__main__":
    main()
