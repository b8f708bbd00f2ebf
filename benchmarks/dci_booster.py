"""How far the opt-in histogram booster moves DCI on trained models, against disentanglement_lib's exact one.

    python benchmarks/dci_booster.py docs/results/ablation/shapes --runs benchmarks/results/ablation/shapes

Reads the committed ablation records (whose DCI is the exact one, at disentanglement_lib's sizes, drawn with the
run's seed), loads each record's trained pipeline from `--runs`, encodes the grid as the training script's final
validation does (units and `token_pca`) and scores DCI with `booster="histogram"` from the same rows. For the
`--timed` models the exact DCI is computed again and must equal the record (same codes, same rows), and the whole
suite is timed with each booster. Prints per-model values and differences, then, per variant, the mean paired
difference of DCI-D from the variant's reference in the ablation under each booster, and writes JSON.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import VARIANTS  # noqa: E402
from common import RESULTS_DIR, print_table, write_json  # noqa: E402

from diffusers_dyga import DisentangledDiffusionPipeline  # noqa: E402
from diffusers_dyga.data import factor_names, factor_sizes, factors_array, load_builtin  # noqa: E402
from diffusers_dyga.evaluation import dci, encode_representation, evaluate_representation  # noqa: E402

REPRESENTATIONS = {"units": "dci", "token_pca": "token_pca/dci"}
VALUES = ("disentanglement", "completeness", "informativeness_test")


def record_grid(arguments: list[str]) -> tuple[str, int, tuple[int, ...]]:
    """The built-in grid a record's run trained on: `(name, resolution, factor_sizes)` from its arguments."""
    start = arguments.index("--factor_sizes") + 1
    end = next((i for i in range(start, len(arguments)) if arguments[i].startswith("--")), len(arguments))
    name = arguments[arguments.index("--dataset") + 1].removeprefix("builtin:")
    return name, int(arguments[arguments.index("--resolution") + 1]), tuple(int(size) for size in arguments[start:end])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", help="A folder of ablation records (JSON).")
    parser.add_argument("--runs", required=True, help="The folder holding each record's trained pipeline, by name.")
    parser.add_argument(
        "--timed", nargs="*", default=["baseline-seed0", "sd-dyga-seed0"], help="Models whose suite is timed both ways."
    )
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--output", default=str(RESULTS_DIR / "dci_booster.json"))
    args = parser.parse_args()

    records = sorted(Path(args.records).glob("*.json"))
    rows, models, timings, datasets = [], [], [], {}
    for path in records:
        record = json.loads(path.read_text())
        folder = Path(args.runs) / path.stem
        if not (folder / "model_index.json").is_file():
            print(f"skipping {path.stem}: no pipeline in {folder}")
            continue
        grid = record_grid(record["arguments"])
        if grid not in datasets:
            grid_name, resolution, grid_sizes = grid
            datasets[grid] = load_builtin(
                grid_name, resolution=resolution, factor_sizes=grid_sizes, cache_dir=args.cache_dir
            )
        dataset = datasets[grid]
        factors = factors_array(dataset)
        pipe = DisentangledDiffusionPipeline.from_pretrained(folder)
        sizes = record["metric_sizes"]
        model = {"name": path.stem, "variant": record["variant"], "seed": record["seed"], "dci": {}}
        for representation, prefix in REPRESENTATIONS.items():
            codes = encode_representation(pipe, dataset, representation, batch_size=256)
            exact = {name: record["metrics"][f"{prefix}/{name}"] for name in VALUES}
            histogram = dci(codes, factors, booster="histogram", random_state=record["seed"], n_jobs=-1, **sizes)
            model["dci"][representation] = {"exact": exact, "histogram": {name: histogram[name] for name in VALUES}}
            rows.append(
                [path.stem, representation]
                + [value for name in VALUES for value in (exact[name], histogram[name] - exact[name])]
            )
            if path.stem in args.timed and representation == "units":
                suite_options = {"factor_names": factor_names(dataset), "random_state": record["seed"], **sizes}
                seconds = {}
                for booster in ("exact", "histogram"):
                    start = time.perf_counter()
                    suite = evaluate_representation(
                        codes, factors, factor_sizes(dataset), n_jobs=-1, dci_booster=booster, **suite_options
                    )
                    seconds[booster] = time.perf_counter() - start
                    if booster == "exact" and any(suite["dci"][name] != exact[name] for name in VALUES):
                        raise AssertionError(f"{path.stem}: the exact DCI recomputed differs from the record")
                timings.append({"name": path.stem, "suite_seconds": seconds})
        models.append(model)

    print_table(
        ["model", "representation"]
        + [f"{label} {name[:14]}" for name in VALUES for label in ("exact", "hist - exact")],
        rows,
    )
    summary = {}
    for representation in REPRESENTATIONS:
        for name in VALUES:
            exact = np.array([m["dci"][representation]["exact"][name] for m in models])
            histogram = np.array([m["dci"][representation]["histogram"][name] for m in models])
            difference = histogram - exact
            summary[f"{representation}/{name}"] = {
                "mean_difference": float(difference.mean()),
                "max_abs_difference": float(np.abs(difference).max()),
                "pearson": float(np.corrcoef(exact, histogram)[0, 1]),
            }
    print_table(
        ["value", "mean hist - exact", "max |hist - exact|", "correlation over models"],
        [[key, s["mean_difference"], s["max_abs_difference"], s["pearson"]] for key, s in summary.items()],
    )
    paired = {}
    by_variant = {}
    for m in models:
        by_variant.setdefault(m["variant"], {})[m["seed"]] = m
    for variant, seeds in by_variant.items():
        reference = by_variant.get(VARIANTS[variant].reference, {})
        pairs = [(m, reference[seed]) for seed, m in sorted(seeds.items()) if seed in reference]
        if not pairs:
            continue
        for representation in REPRESENTATIONS:
            entry = {}
            for booster in ("exact", "histogram"):
                gaps = [
                    m["dci"][representation][booster]["disentanglement"]
                    - base["dci"][representation][booster]["disentanglement"]
                    for m, base in pairs
                ]
                entry[booster] = {"mean": float(np.mean(gaps)), "higher": int(np.sum(np.array(gaps) > 0))}
            paired[f"{variant} - {VARIANTS[variant].reference}, {representation}"] = {"seeds": len(pairs), **entry}
    print_table(
        ["variant - reference, DCI-D", "seeds", "exact mean", "exact higher", "histogram mean", "histogram higher"],
        [
            [key, p["seeds"]]
            + [p[booster][value] for booster in ("exact", "histogram") for value in ("mean", "higher")]
            for key, p in paired.items()
        ],
    )
    if timings:
        print_table(
            ["model", "suite, exact DCI (s)", "suite, histogram DCI (s)", "ratio"],
            [
                [t["name"], t["suite_seconds"]["exact"], t["suite_seconds"]["histogram"]]
                + [t["suite_seconds"]["exact"] / t["suite_seconds"]["histogram"]]
                for t in timings
            ],
        )
    write_json(args.output, {"models": models, "summary": summary, "paired": paired, "timings": timings})


if __name__ == "__main__":
    main()
