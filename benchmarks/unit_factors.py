"""What each latent unit of a trained pipeline holds: the share of its variance explained by each factor.

    python benchmarks/unit_factors.py benchmarks/results/ablation/SD-DyGA-seed0 --factor_sizes 3 3 3 3 3 3
    python benchmarks/unit_factors.py outputs/dsprites --dataset dsprites --factor_sizes 3 3 4 8 8

Encodes the whole built-in grid and, for each unit and factor, takes the share of the unit's variance that the factor
explains (`diffusers_dyga.evaluation.unit_factor_shares`: 1 for a unit that is a function of that factor alone, 0
for a unit that ignores it). Also prints each unit's kurtosis, its spread (standard deviation over the grid: 1 for
whitened units, less where `whitening_shrinkage` lets a unit fall silent; and its gate, for an encoder with
`unit_gates`) and the mean absolute correlation between units. For an encoder with a Gaussian posterior on whitened
units, it also prints each unit's mean posterior standard deviation ("width": near 0 for a unit read precisely, near
1, the prior's, for a unit that carries little).

`--joint x y` adds the share that two factors explain together (the unit's mean over every pair of their values):
near 1 for a unit that is a function of the two, even where each alone explains little of it (a unit holding
x·y, or x² with x's linear part whitened away).

For every factor that two or more units hold (the factor explains at least half of each one's variance), it takes
the two that hold it most, whitens that pair and prints the kurtosis of its projections on directions around half a
turn: a flat curve means that the kurtosis term cannot prefer one rotation of the pair (one unit per factor) over
another; a curve with deep minima at the axes means it splits the factor into two two-valued units.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from common import print_table, write_json

from diffusers_dyga import DisentangledDiffusionPipeline
from diffusers_dyga.data import factor_names, factors_array, load_builtin
from diffusers_dyga.evaluation import encode_dataset, unit_factor_shares

ROOT = Path(__file__).resolve().parents[1]
HELD_SHARE = 0.5


def rotation_kurtosis(pair: np.ndarray, num_angles: int = 36) -> np.ndarray:
    """Kurtosis of the whitened `(rows, 2)` codes projected on `num_angles` directions over half a turn."""
    centred = pair - pair.mean(axis=0)
    white = centred @ np.linalg.inv(np.linalg.cholesky(np.cov(centred.T))).T
    angles = np.linspace(0, np.pi, num_angles, endpoint=False)
    projections = white @ np.stack([np.cos(angles), np.sin(angles)])
    return (projections**4).mean(axis=0) / (projections**2).mean(axis=0) ** 2


@torch.no_grad()
def posterior_widths(encoder, images: torch.Tensor) -> torch.Tensor:
    """`(batch, num_units)` posterior standard deviations of an encoder with `unit_posterior="gaussian"`."""
    return encoder.eval()(images.to(encoder.device, encoder.dtype)).unit_log_variance.mul(0.5).exp()


def pair_shares(codes: np.ndarray, factors: np.ndarray, sizes: list[int], pair: list[int]) -> np.ndarray:
    """`(num_codes,)` share of each code's variance explained by the two factors of `pair` together."""
    first, second = pair
    combined = factors[:, first] * sizes[second] + factors[:, second]
    return unit_factor_shares(codes, combined[:, None], [sizes[first] * sizes[second]])[:, 0]


def shared_factors(codes: np.ndarray, shares: np.ndarray, names: list[str]) -> list[dict]:
    """The factors held by two or more units, with the kurtosis of their two strongest units' rotations."""
    shared = []
    for factor, name in enumerate(names):
        holders = [unit for unit in np.argsort(-shares[:, factor]) if shares[unit].argmax() == factor]
        holders = [int(unit) for unit in holders if shares[unit, factor] >= HELD_SHARE]
        if len(holders) < 2:
            continue
        kurtosis = rotation_kurtosis(codes[:, holders[:2]])
        shared.append(
            {"factor": name, "units": holders, "rotation_kurtosis_min": float(kurtosis.min()),
             "rotation_kurtosis_max": float(kurtosis.max()), "rotation_kurtosis_at_axes": float(kurtosis[0])}
        )  # fmt: skip
    return shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="A saved DisentangledDiffusionPipeline folder.")
    parser.add_argument("--dataset", default="shapes", help="Built-in grid: shapes or dsprites.")
    parser.add_argument("--factor_sizes", type=int, nargs="+", default=[3, 3, 3, 3, 3, 3])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--joint", nargs=2, metavar="FACTOR", help="Two factor names: also their joint share.")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "unit_factors.json"))
    options = parser.parse_args()

    dataset = load_builtin(options.dataset, resolution=options.resolution, factor_sizes=tuple(options.factor_sizes))
    pipeline = DisentangledDiffusionPipeline.from_pretrained(options.pipeline)
    pipeline.set_progress_bar_config(disable=True)
    codes = encode_dataset(pipeline.encode, dataset)
    factors, names = factors_array(dataset), factor_names(dataset)
    if options.joint and not set(options.joint) <= set(names):
        parser.error(f"--joint takes two of the grid's factors {names}, got {options.joint}.")
    shares = unit_factor_shares(codes, factors, options.factor_sizes)
    standardised = (codes - codes.mean(axis=0)) / codes.std(axis=0).clip(min=1e-12)
    kurtosis = (standardised**4).mean(axis=0)
    skewness = (standardised**3).mean(axis=0)
    mean_absolute_correlation = float(np.abs(np.corrcoef(standardised.T)[np.triu_indices(codes.shape[1], 1)]).mean())
    gates = pipeline.encoder.gates
    gates = None if gates is None else gates.detach().cpu().tolist()
    spreads = codes.std(axis=0)
    rows = [
        [unit, *(f"{share:.2f}" for share in shares[unit]), f"{kurtosis[unit]:.2f}", f"{skewness[unit]:+.2f}", f"{spreads[unit]:.2f}"]
        for unit in range(codes.shape[1])
    ]  # fmt: skip
    if gates is not None:
        rows = [[*row, f"{gate:.2f}"] for row, gate in zip(rows, gates)]
    widths = None
    if pipeline.encoder.config.unit_posterior == "gaussian":
        widths = encode_dataset(lambda images: posterior_widths(pipeline.encoder, images), dataset).mean(axis=0).tolist()
        rows = [[*row, f"{width:.2f}"] for row, width in zip(rows, widths)]
    extra_columns = (["gate"] if gates is not None else []) + (["width"] if widths is not None else [])
    joint_shares = None
    if options.joint:
        joint_shares = pair_shares(codes, factors, options.factor_sizes, [names.index(name) for name in options.joint])
        rows = [[*row, f"{share:.2f}"] for row, share in zip(rows, joint_shares)]
        extra_columns.append(f"{options.joint[0]} and {options.joint[1]} together")
    print_table(["unit", *names, "kurtosis", "skewness", "spread", *extra_columns], rows)
    print(f"mean absolute correlation between units: {mean_absolute_correlation:.3f}")
    shared = shared_factors(codes, shares, names)
    if not shared:
        print("no factor explains at least half of the variance of two units")
    else:
        print_table(
            ["factor held by several units", "units", "pair's kurtosis: min", "max", "at the units' own axes"],
            [[entry["factor"], " ".join(map(str, entry["units"])), f"{entry['rotation_kurtosis_min']:.2f}",
              f"{entry['rotation_kurtosis_max']:.2f}", f"{entry['rotation_kurtosis_at_axes']:.2f}"] for entry in shared],
        )  # fmt: skip
    write_json(
        options.output,
        {
            "options": vars(options),
            "factor_names": names,
            "shares": shares.tolist(),
            "kurtosis": kurtosis.tolist(),
            "skewness": skewness.tolist(),
            "spreads": spreads.tolist(),
            "gates": gates,
            "posterior_widths": widths,
            "mean_absolute_correlation": mean_absolute_correlation,
            "joint_shares": None if joint_shares is None else joint_shares.tolist(),
            "shared_factors": shared,
        },
    )


if __name__ == "__main__":
    main()
