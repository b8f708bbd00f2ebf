"""How much of a factor grid's pixel signal each factor carries: what a denoising loss can reward a unit for.

    python benchmarks/factor_signal.py --factor_sizes 3 3 3 3 3 3 --resolution 32

For each factor: the share of the pixel variance (images in [-1, 1]) explained by the factor's values alone
(between-value variance of the mean image, averaged over pixels); the share left unexplained when every other factor
is known (variance over the factor's values with the others fixed, averaged over the grid): what a unit holding the
factor adds once the other units are right; and the share of pixels that a change of the factor alone moves by more
than 20/255. A perfect unit for a factor lowers the x0 denoising MSE at pure noise by the first share when no other
factor is known, by the second when all others are.
"""

import argparse
from pathlib import Path

import numpy as np
from common import print_table, write_json

from diffusers_dyga.data import grid_factors
from diffusers_dyga.data.shapes import SHAPES_FACTOR_NAMES, render_shapes

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factor_sizes", type=int, nargs=6, default=[3, 3, 3, 3, 3, 3])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "factor_signal.json"))
    options = parser.parse_args()

    sizes = tuple(options.factor_sizes)
    factors = grid_factors(sizes)
    images = render_shapes(factors, sizes, options.resolution)
    pixels = images.astype(np.float32) / 127.5 - 1.0
    total = float(pixels.var(axis=0).mean())
    grid = pixels.reshape(*sizes, -1)
    rows, results = [], {}
    for index, name in enumerate(SHAPES_FACTOR_NAMES):
        if sizes[index] < 2:
            continue
        means = np.stack([pixels[factors[:, index] == value].mean(axis=0) for value in range(sizes[index])])
        explained = float(means.var(axis=0).mean())
        conditional = float(grid.var(axis=index).mean())
        changed = []
        for row in factors[:: max(1, len(factors) // 200)]:
            variants = np.repeat(row[None], sizes[index], axis=0)
            variants[:, index] = np.arange(sizes[index])
            rendered = render_shapes(variants, sizes, options.resolution).astype(np.int16)
            changed.append((np.abs(rendered - rendered[:1]).max(axis=-1) > 20).any(axis=0).mean())
        results[name] = {
            "explained_variance": explained,
            "share": explained / total,
            "conditional_variance": conditional,
            "conditional_share": conditional / total,
            "pixels_changed": float(np.mean(changed)),
        }
        rows.append(
            [name, f"{100 * explained / total:.1f}%", f"{100 * conditional / total:.2f}%", f"{100 * np.mean(changed):.1f}%"]
        )
    headers = ["factor", "share of pixel variance", "share with the other factors known", "pixels a change moves (> 20/255)"]
    print_table(headers, rows)
    print(f"total pixel variance {total:.4f}; explained by the factors' main effects: "
          f"{100 * sum(r['share'] for r in results.values()):.1f}%")
    write_json(options.output, {"options": vars(options), "total_variance": total, "factors": results})


if __name__ == "__main__":
    main()
