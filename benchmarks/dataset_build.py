"""Times rendering the full default procedural grids (numpy arrays only) and building the cached `datasets`
(PNG encoding and `save_to_disk` included).

    python benchmarks/dataset_build.py --output benchmarks/results/dataset_build.json
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, print_table, write_json  # noqa: E402

from diffusers_dyga.data import (  # noqa: E402
    DSPRITES_FACTOR_SIZES,
    SHAPES_FACTOR_SIZES,
    grid_factors,
    load_dsprites,
    load_shapes,
    render_dsprites,
    render_shapes,
)

DATASETS = {
    "shapes": (render_shapes, load_shapes, SHAPES_FACTOR_SIZES),
    "dsprites": (render_dsprites, load_dsprites, DSPRITES_FACTOR_SIZES),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=sorted(DATASETS), choices=sorted(DATASETS))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--output", default=str(RESULTS_DIR / "dataset_build.json"))
    args = parser.parse_args()
    rows, results = [], {}
    for name in args.datasets:
        render, load, sizes = DATASETS[name]
        factors = grid_factors(sizes)
        start = time.perf_counter()
        for begin in range(0, len(factors), args.batch_size):
            render(factors[begin : begin + args.batch_size], sizes, args.resolution)
        render_seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as cache_dir:
            start = time.perf_counter()
            dataset = load(resolution=args.resolution, cache_dir=cache_dir)
            build_seconds = time.perf_counter() - start
            start = time.perf_counter()
            load(resolution=args.resolution, cache_dir=cache_dir)
            reload_seconds = time.perf_counter() - start
        results[name] = {
            "images": len(dataset),
            "resolution": args.resolution,
            "render_seconds": render_seconds,
            "build_and_cache_seconds": build_seconds,
            "cached_load_seconds": reload_seconds,
        }
        rows.append([name, len(dataset), render_seconds, build_seconds, reload_seconds])
    print_table(["dataset", "images", "render s", "build+cache s", "cached load s"], rows)
    write_json(args.output, {"results": results})


if __name__ == "__main__":
    main()
