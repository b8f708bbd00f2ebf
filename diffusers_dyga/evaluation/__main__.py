"""Evaluates a saved DisentangledDiffusionPipeline on a ground-truth dataset and writes the metrics as JSON.

    python -m diffusers_dyga.evaluation --pipeline PATH_OR_REPO --dataset builtin:shapes --resolution 32 \
        --factor_sizes 4 4 4 3 4 3 --output metrics.json
"""

import argparse
import json
import time

import torch

from ..data import factor_names, factor_sizes, factors_array, load_3dshapes_h5, load_builtin, load_dsprites_npz, load_mpi3d_npz
from .suite import encode_dataset, evaluate_representation

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
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    from .. import DisentangledDiffusionPipeline

    dataset = load_ground_truth(args.dataset, args.resolution, args.factor_sizes, args.cache_dir)
    pipe = DisentangledDiffusionPipeline.from_pretrained(args.pipeline).to(args.device)
    start = time.perf_counter()
    codes = encode_dataset(pipe.encode, dataset, batch_size=args.batch_size)
    encode_seconds = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluate_representation(
        codes,
        factors_array(dataset),
        factor_sizes(dataset),
        num_train=args.num_train,
        num_test=args.num_test,
        factor_names=factor_names(dataset),
        random_state=args.seed,
    )
    report = {
        "pipeline": args.pipeline,
        "dataset": args.dataset,
        "num_rows": len(dataset),
        "factor_names": factor_names(dataset),
        "factor_sizes": factor_sizes(dataset),
        "encode_seconds": encode_seconds,
        "metric_seconds": time.perf_counter() - start,
        "metrics": metrics,
    }
    with open(args.output, "w") as file:
        json.dump(report, file, indent=2)
    print(json.dumps(metrics, indent=2))
    print("wrote", args.output)


if __name__ == "__main__":
    main()
