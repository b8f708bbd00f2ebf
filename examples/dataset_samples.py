"""Writes a PNG grid of random samples of each procedural dataset (rows: random factor combinations).

    python examples/dataset_samples.py --output_dir outputs/samples
"""

import argparse
import os

import numpy as np
import PIL.Image
from diffusers.utils import make_image_grid

from diffusers_dyga.data import DSPRITES_FACTOR_SIZES, SHAPES_FACTOR_SIZES, render_dsprites, render_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/samples")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--cols", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.RandomState(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    count = args.rows * args.cols
    for name, render, sizes in (
        ("shapes", render_shapes, SHAPES_FACTOR_SIZES),
        ("dsprites", render_dsprites, DSPRITES_FACTOR_SIZES),
    ):
        factors = np.stack([rng.randint(size, size=count) for size in sizes], axis=1)
        images = [PIL.Image.fromarray(image) for image in render(factors, sizes, args.resolution)]
        path = os.path.join(args.output_dir, f"{name}_samples.png")
        make_image_grid(images, rows=args.rows, cols=args.cols).save(path)
        print("wrote", path)


if __name__ == "__main__":
    main()
