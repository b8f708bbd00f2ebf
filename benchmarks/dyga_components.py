"""Does DyGA find the number of values of the factor each unit holds? Components found against factor cardinalities.

    python benchmarks/dyga_components.py outputs/shapes-tiny --dataset builtin:shapes --factor_sizes 3 3 3 3 3 3

Encodes a trained pipeline's tokens for `--num_samples` distinct rows of a built-in grid (as the training script's
refits do), fits a `DyGAAnchorer` with `--max_components` under each fit space and selection criterion, and prints,
for every unit: its dominant factor, the share of the unit's variance that factor explains
(`diffusers_dyga.evaluation.unit_factor_shares`, on the whole grid), the factor's number of values and the components
each variant finds. The last row gives, per variant, the fraction of units with a share of at least `--share` whose
count equals the cardinality. When the folder holds a `training_report.json`, its last refit's counts are shown too.

A unit can hold all of a factor and still not separate all its values: a hue is a circle, and a unit that holds one
coordinate of it puts opposite hues at the same level. So the table also gives the levels the unit separates: its
mean for each value of the factor, sorted, counted as distinct where neighbours are more than `--level_gap` pooled
within-value standard deviations apart; "matched levels" scores the counts against those.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import RESULTS_DIR, print_table, write_json

from diffusers_dyga import DisentangledDiffusionPipeline, DyGAAnchorer
from diffusers_dyga.data import factor_names, factors_array, load_builtin
from diffusers_dyga.evaluation import encode_dataset, unit_factor_shares

VARIANTS = [("tokens", "bic"), ("tokens", "icl"), ("principal", "bic"), ("principal", "icl")]


def separable_levels(unit: np.ndarray, factor: np.ndarray, size: int, gap: float) -> int:
    """How many of the factor's `size` values the `(n,)` unit values tell apart: per-value means, sorted, counted as
    distinct where neighbours differ by more than `gap` pooled within-value standard deviations."""
    values = [value for value in range(size) if (factor == value).any()]
    means = np.sort([unit[factor == value].mean() for value in values])
    spread = np.sqrt(np.mean([unit[factor == value].var() for value in values]))
    return int(1 + (np.diff(means) > gap * max(spread, 1e-12)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="A saved DisentangledDiffusionPipeline folder.")
    parser.add_argument("--dataset", default="builtin:shapes", choices=["builtin:shapes", "builtin:dsprites"])
    parser.add_argument("--factor_sizes", type=int, nargs="+", default=[3, 3, 3, 3, 3, 3])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--num_samples", type=int, default=2000, help="Distinct rows each fit sees.")
    parser.add_argument("--max_components", type=int, default=10)
    parser.add_argument("--share", type=float, default=0.8, help="Units whose dominant factor explains this much.")
    parser.add_argument("--level_gap", type=float, default=2.0, help="In pooled within-value standard deviations.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON path (default: results/dyga_components/<folder>.json).")
    options = parser.parse_args()

    dataset = load_builtin(
        options.dataset.removeprefix("builtin:"), resolution=options.resolution, factor_sizes=tuple(options.factor_sizes)
    )
    pipeline = DisentangledDiffusionPipeline.from_pretrained(options.pipeline)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.encoder.eval()
    codes, factors = encode_dataset(pipeline.encode, dataset), factors_array(dataset)
    shares = unit_factor_shares(codes, factors, options.factor_sizes)
    names = factor_names(dataset)
    dominant = shares.argmax(axis=1)
    cardinality = np.array(options.factor_sizes)[dominant]
    levels = np.array(
        [
            separable_levels(codes[:, unit], factors[:, dominant[unit]], cardinality[unit], options.level_gap)
            for unit in range(codes.shape[1])
        ]
    )

    rows = np.random.RandomState(options.seed).choice(len(dataset), min(options.num_samples, len(dataset)), replace=False)
    num_units, unit_dim = pipeline.encoder.config.num_units, pipeline.encoder.config.unit_dim
    with torch.no_grad():
        flat = encode_dataset(lambda images: pipeline.encoder(images).tokens.flatten(1), dataset.select(np.sort(rows)))
    tokens = torch.from_numpy(flat).view(-1, num_units, unit_dim)
    found = {}
    for fit_space, criterion in VARIANTS:
        anchorer = DyGAAnchorer(
            num_units=num_units,
            unit_dim=unit_dim,
            max_components=options.max_components,
            init_components=1,
            fit_space=fit_space,
            selection_criterion=criterion,
            seed=options.seed,
        )
        found[f"{fit_space}/{criterion}"] = anchorer.fit(tokens).num_components.tolist()
    report = Path(options.pipeline) / "training_report.json"
    if report.exists():
        fits = json.loads(report.read_text()).get("dyga_fits") or []
        if fits:
            found["training (last refit)"] = fits[-1]["num_components"]

    held = shares.max(axis=1) >= options.share
    rows_out = [
        [
            unit,
            names[dominant[unit]],
            f"{shares[unit].max():.2f}",
            int(cardinality[unit]),
            int(levels[unit]),
            *(counts[unit] for counts in found.values()),
        ]
        for unit in range(num_units)
    ]

    def matched_fraction(target: np.ndarray) -> dict[str, float | None]:
        units = np.flatnonzero(held)
        return {
            name: float(np.mean([counts[unit] == target[unit] for unit in units])) if len(units) else None
            for name, counts in found.items()
        }

    matched, matched_levels = matched_fraction(cardinality), matched_fraction(levels)
    for label, fractions in ((f"matched values (share >= {options.share})", matched), ("matched levels", matched_levels)):
        cells = ["-" if value is None else f"{value:.2f}" for value in fractions.values()]
        rows_out.append([label, "", "", int(held.sum()), "", *cells])
    print_table(["unit", "dominant factor", "share", "values", "levels", *found], rows_out)
    output = options.output or str(RESULTS_DIR / "dyga_components" / f"{Path(options.pipeline).name}.json")
    write_json(
        output,
        {
            "options": vars(options),
            "factor_names": names,
            "shares": shares.tolist(),
            "dominant_factor": [names[index] for index in dominant],
            "cardinality": cardinality.tolist(),
            "separable_levels": levels.tolist(),
            "components_found": found,
            "matched_values": matched,
            "matched_levels": matched_levels,
        },
    )


if __name__ == "__main__":
    main()
