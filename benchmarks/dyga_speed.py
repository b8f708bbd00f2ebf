"""DyGAAnchorer.fit vs scikit-learn's BayesianGaussianMixture fitted per unit, on the same token features.

    python benchmarks/dyga_speed.py --output benchmarks/results/dyga_speed.json

Features: 20 units x 32 dims x 50,000 points by default, either planted (each unit a mixture of 5 Gaussians) or
one Gaussian per unit. scikit-learn fits one unit at a time (the choice a user would make); `--sklearn_units`
limits how many units it fits, and its time is reported per unit and scaled to all units (marked as such).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import BayesianGaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, print_table, write_json  # noqa: E402

from diffusers_dyga import DyGAAnchorer  # noqa: E402


def features(kind: str, num_points: int, num_units: int, dim: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(num_points, num_units, dim, generator=generator), None
    centers = torch.randn(num_units, 5, dim, generator=generator) * 4
    labels = torch.randint(5, (num_points, num_units), generator=generator)
    points = centers[torch.arange(num_units), labels] + torch.randn(num_points, num_units, dim, generator=generator)
    return points, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_points", type=int, default=50000)
    parser.add_argument("--num_units", type=int, default=20)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--sklearn_units", type=int, default=20)
    parser.add_argument("--max_components", type=int, default=10)
    parser.add_argument("--output", default=str(RESULTS_DIR / "dyga_speed.json"))
    args = parser.parse_args()
    rows, results = [], {}
    for kind in ("planted", "gaussian"):
        points, labels = features(kind, args.num_points, args.num_units, args.dim)
        anchorer = DyGAAnchorer(num_units=args.num_units, unit_dim=args.dim, max_components=args.max_components)
        start = time.perf_counter()
        anchorer.fit(points)
        ours_seconds = time.perf_counter() - start
        ours_components = anchorer.num_components.tolist()
        assigned = anchorer.assign(points)

        sk_units = min(args.sklearn_units, args.num_units)
        sk_seconds, sk_components, sk_ari, ours_ari = 0.0, [], [], []
        for unit in range(sk_units):
            mixture = BayesianGaussianMixture(n_components=args.max_components, covariance_type="diag", random_state=0)
            start = time.perf_counter()
            mixture.fit(points[:, unit].numpy())
            sk_seconds += time.perf_counter() - start
            predicted = mixture.predict(points[:, unit].numpy())
            sk_components.append(int((mixture.weights_ > 0.01).sum()))
            if labels is not None:
                sk_ari.append(adjusted_rand_score(labels[:, unit], predicted))
                ours_ari.append(adjusted_rand_score(labels[:, unit], assigned[:, unit]))
        sk_all_units = sk_seconds / sk_units * args.num_units
        results[kind] = {
            "ours_seconds": ours_seconds,
            "ours_components": ours_components,
            "sklearn_units_fitted": sk_units,
            "sklearn_seconds_measured": sk_seconds,
            "sklearn_seconds_all_units": sk_all_units,
            "sklearn_components_weight_over_0.01": sk_components,
            "speedup": sk_all_units / ours_seconds,
            "ours_min_ari": min(ours_ari) if ours_ari else None,
            "sklearn_min_ari": min(sk_ari) if sk_ari else None,
        }
        scaled = "" if sk_units == args.num_units else f" (scaled from {sk_units} units)"
        rows.append([
            kind, ours_seconds, f"{sk_all_units:.4g}{scaled}", sk_all_units / ours_seconds,
            f"{np.mean(ours_components):.2f}", f"{np.mean(sk_components):.2f}",
            "-" if not ours_ari else f"{min(ours_ari):.3f}", "-" if not sk_ari else f"{min(sk_ari):.3f}",
        ])  # fmt: skip
    print(f"{args.num_units} units x {args.dim} dims x {args.num_points} points")
    print_table(
        ["features", "ours s", "sklearn BGMM s", "ratio", "ours mean K", "BGMM mean K", "ours min ARI", "BGMM min ARI"],
        rows,
    )
    write_json(args.output, {"settings": vars(args), "results": results})


if __name__ == "__main__":
    main()
