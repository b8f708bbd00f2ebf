"""Evaluates a saved DisentangledDiffusionPipeline on a ground-truth dataset and writes the metrics as JSON.

    python -m diffusers_dyga.evaluation --pipeline PATH_OR_REPO --dataset builtin:shapes --resolution 32 \
        --factor_sizes 4 4 4 3 4 3 --output metrics.json

Scores each of `--representations` with the metric suite (`units`: the scalar units; `token_pca`: the official
protocol's PCA(1) of each unit's anchored token, reported under `token_pca/<metric>`) and, unless
`--control_num_sources 0`, the renders with the controllability measure (a factor classifier trained on the
dataset's images, cached in `--cache_dir`).
"""

import argparse
import json
import logging
import os
import time

import torch

from ..data import factor_names, factor_sizes, load_3dshapes_h5, load_builtin, load_dsprites_npz, load_mpi3d_npz
from .controllability import evaluate_controllability
from .dci import DCI_BOOSTERS
from .representations import REPRESENTATIONS, evaluate_pipeline

FILE_LOADERS = {"3dshapes": load_3dshapes_h5, "dsprites_npz": load_dsprites_npz, "mpi3d": load_mpi3d_npz}


def load_ground_truth(spec: str, resolution: int | None, sizes: list[int] | None, cache_dir: str | None):
    """`builtin:shapes`, `builtin:dsprites`, `3dshapes:PATH`, `dsprites_npz:PATH` or `mpi3d:PATH`."""
    kind, _, value = spec.partition(":")
    if kind == "builtin":
        options = {"cache_dir": cache_dir}
        if resolution is not None:
            options["resolution"] = resolution
        if sizes is not None:
            options["factor_sizes"] = tuple(sizes)
        return load_builtin(value, **options)
    if kind in FILE_LOADERS and value:
        return FILE_LOADERS[kind](value, cache_dir=cache_dir)
    raise ValueError(f"Unknown dataset {spec!r}: use builtin:shapes, builtin:dsprites, 3dshapes:PATH, dsprites_npz:PATH or mpi3d:PATH.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="Saved pipeline folder or Hub repo id.")
    parser.add_argument("--dataset", required=True, help="builtin:shapes, builtin:dsprites, 3dshapes:PATH, ...")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--factor_sizes", type=int, nargs="+", default=None)
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--output", default="metrics.json")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--num_train", type=int, default=10000)
    parser.add_argument("--num_test", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=-1, help="Processes for DCI's per-factor fits (-1: every core; same values).")
    parser.add_argument(
        "--dci_booster",
        choices=DCI_BOOSTERS,
        default="exact",
        help="exact: disentanglement_lib's GradientBoostingClassifier; histogram: LightGBM, faster, approximate (fast-dci extra).",
    )
    parser.add_argument(
        "--representations", nargs="+", choices=REPRESENTATIONS, default=list(REPRESENTATIONS), help="What the metrics score."
    )
    parser.add_argument("--control_num_sources", type=int, default=32, help="Sources rendered per edit (0: renders not scored).")
    parser.add_argument("--control_inference_steps", type=int, default=25)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    output_folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(output_folder):
        parser.error(f"--output {args.output}: the folder {output_folder} does not exist.")

    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    from .. import DisentangledDiffusionPipeline

    dataset = load_ground_truth(args.dataset, args.resolution, args.factor_sizes, args.cache_dir)
    pipe = DisentangledDiffusionPipeline.from_pretrained(args.pipeline).to(args.device)
    start = time.perf_counter()
    metrics, codes = evaluate_pipeline(
        pipe,
        dataset,
        args.representations,
        batch_size=args.batch_size,
        num_train=args.num_train,
        num_test=args.num_test,
        random_state=args.seed,
        n_jobs=args.jobs,
        dci_booster=args.dci_booster,
    )
    metric_seconds = time.perf_counter() - start
    control = None
    if args.control_num_sources > 0:
        logging.info(f"scoring the renders of {args.control_num_sources} sources")
        start = time.perf_counter()
        control = evaluate_controllability(
            pipe,
            dataset,
            codes=codes,
            cache_dir=args.cache_dir,
            num_sources=args.control_num_sources,
            num_inference_steps=args.control_inference_steps,
            seed=args.seed,
        )
        control["seconds"] = time.perf_counter() - start
    report = {
        "pipeline": args.pipeline,
        "dataset": args.dataset,
        "num_rows": len(dataset),
        "representations": args.representations,
        "factor_names": factor_names(dataset),
        "factor_sizes": factor_sizes(dataset),
        "metric_seconds": metric_seconds,
        "dci_booster": args.dci_booster,
        "metrics": metrics,
        "controllability": control,
    }
    print(json.dumps({"metrics": metrics, "controllability": control}, indent=2))
    with open(args.output, "w") as file:
        json.dump(report, file, indent=2)
    print("wrote", args.output)


if __name__ == "__main__":
    main()
