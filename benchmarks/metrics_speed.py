"""Times the full metric suite with disentanglement_lib's settings on the default `shapes` grid (480,000 rows):
each metric draws its own 10,000 training rows (and 5,000 test rows / evaluation votes).

    python benchmarks/metrics_speed.py --output benchmarks/results/metrics_speed.json

Three synthetic representations of the grid cover easy and hard inputs for the classifiers: the factors plus
noise codes, a mixing rotation of the factors, and pure noise. DCI (most of the suite's time) runs twice in the same
run: its per-factor classifiers fitted one after the other (`n_jobs=None`) and in parallel over every core
(`n_jobs=-1`, what the training script's final validation and the evaluation CLI use); the two must give the same
values, and the suite's total is reported with each. A third DCI fit uses the opt-in approximate booster
(`booster="histogram"`, LightGBM, parallel over every core): its time, its values and the suite's total with it.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, print_table, write_json  # noqa: E402

from diffusers_dyga.data import SHAPES_FACTOR_SIZES, grid_factors  # noqa: E402
from diffusers_dyga.evaluation import dci, downstream_accuracy, factor_vae_score, mig, modularity_explicitness, sap  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(RESULTS_DIR / "metrics_speed.json"))
    parser.add_argument(
        "--representations", nargs="+", default=["factors+noise", "rotated", "noise"], help="Which of the three to time."
    )
    args = parser.parse_args()
    sizes = SHAPES_FACTOR_SIZES
    factors = grid_factors(sizes)
    rng = np.random.RandomState(0)
    scaled = factors / np.asarray(sizes, dtype=float)
    representations = {
        "factors+noise": np.concatenate([scaled + 0.01 * rng.randn(*scaled.shape), rng.randn(len(factors), 4)], 1),
        "rotated": scaled @ np.linalg.qr(rng.randn(len(sizes), len(sizes)))[0],
        "noise": rng.randn(len(factors), 10),
    }
    metrics = {
        "factor_vae": lambda codes: factor_vae_score(codes, factors, sizes),
        "dci": lambda codes: dci(codes, factors, n_jobs=None),
        "dci_parallel": lambda codes: dci(codes, factors, n_jobs=-1),
        "dci_histogram": lambda codes: dci(codes, factors, n_jobs=-1, booster="histogram"),
        "mig": lambda codes: mig(codes, factors),
        "sap": lambda codes: sap(codes, factors),
        "modularity_explicitness": lambda codes: modularity_explicitness(codes, factors),
        "downstream": lambda codes: downstream_accuracy(codes, factors),
    }
    rows, results = [], {}
    for kind in args.representations:
        codes = representations[kind]
        results[kind] = {}
        for name, metric in metrics.items():
            start = time.perf_counter()
            scores = metric(codes)
            seconds = time.perf_counter() - start
            results[kind][name] = {"seconds": seconds, "scores": scores}
            rows.append([kind, name, seconds, ", ".join(f"{k}={v:.3f}" for k, v in scores.items())])
        if results[kind]["dci"]["scores"] != results[kind]["dci_parallel"]["scores"]:
            raise AssertionError(f"{kind}: parallel DCI differs from sequential DCI")
        seconds = {name: result["seconds"] for name, result in results[kind].items()}
        others = sum(seconds.values()) - seconds["dci"] - seconds["dci_parallel"] - seconds["dci_histogram"]
        sequential, parallel, histogram = (others + seconds[name] for name in ("dci", "dci_parallel", "dci_histogram"))
        results[kind].update(
            total_seconds=sequential, total_seconds_parallel_dci=parallel, total_seconds_histogram_dci=histogram
        )
        rows.append([kind, "TOTAL (sequential DCI)", sequential, ""])
        rows.append([kind, "TOTAL (parallel DCI, same values)", parallel, ""])
        rows.append([kind, "TOTAL (histogram DCI, approximate)", histogram, ""])
    print_table(["representation", "metric", "seconds", "scores"], rows)
    write_json(args.output, {"grid_rows": len(factors), "factor_sizes": list(sizes), "results": results})


if __name__ == "__main__":
    main()
