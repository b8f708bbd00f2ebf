"""The controllability of saved pipelines' renders on a built-in grid, without the encoder metrics.

    python benchmarks/controllability.py outputs/shapes-tiny --factor_sizes 3 3 3 3 3 3
    python benchmarks/controllability.py runA runB --dataset dsprites --factor_sizes 3 3 4 8 8 --output dsprites.json

For each pipeline: reconstruction accuracy per factor and PSNR, and the three swaps of
`diffusers_dyga.evaluation.controllability` side by side: one unit (each unit that holds a factor), one factor (all
its holders, found with the labels) and one group (the anchorer's unit groups, found without them). Prints a table
and the groups, and writes JSON (`--output`).
"""

import argparse
from pathlib import Path

from common import print_table, write_json

from diffusers_dyga import DisentangledDiffusionPipeline
from diffusers_dyga.data import load_builtin
from diffusers_dyga.evaluation import evaluate_controllability

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipelines", nargs="+", help="Saved DisentangledDiffusionPipeline folders.")
    parser.add_argument("--dataset", default="shapes", help="Built-in grid: shapes or dsprites.")
    parser.add_argument("--factor_sizes", type=int, nargs="+", default=[3, 3, 3, 3, 3, 3])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--num_sources", type=int, default=32)
    parser.add_argument("--num_inference_steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default=None, help="Where the dataset and its factor classifier are cached.")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "controllability.json"))
    options = parser.parse_args()

    dataset = load_builtin(
        options.dataset, resolution=options.resolution, factor_sizes=tuple(options.factor_sizes), cache_dir=options.cache_dir
    )
    reports, rows = {}, []
    for path in options.pipelines:
        pipeline = DisentangledDiffusionPipeline.from_pretrained(path)
        pipeline.set_progress_bar_config(disable=True)
        report = evaluate_controllability(
            pipeline,
            dataset,
            cache_dir=options.cache_dir,
            num_sources=options.num_sources,
            num_inference_steps=options.num_inference_steps,
            seed=options.seed,
        )
        reports[path] = report
        group_mean = report["mean_group_swap_accuracy"]
        rows.append([
            path, " / ".join(f"{value:.2f}" for value in report["reconstruction_accuracy"].values()),
            f"{report['reconstruction_psnr']:.1f}", f"{report['mean_swap_accuracy']:.2f}",
            f"{report['mean_factor_swap_accuracy']:.2f}", "-" if group_mean is None else f"{group_mean:.2f}",
        ])  # fmt: skip
        groups = ", ".join(f"{'+'.join(map(str, g['units']))}: {g['factor']} {g['swap_accuracy']:.2f}" for g in report["groups"])
        holders = ", ".join(f"{'+'.join(map(str, f['units']))}: {f['factor']}" for f in report["factors"])
        print(f"{path}\n  factor holders (labels): {holders}\n  groups holding a factor (no labels): {groups or '-'}")
    names = " / ".join(next(iter(reports.values()))["reconstruction_accuracy"])
    print_table(["pipeline", f"reconstruction ({names})", "PSNR", "unit swap", "factor swap", "group swap"], rows)
    write_json(options.output, {"options": vars(options), "reports": reports})


if __name__ == "__main__":
    main()
