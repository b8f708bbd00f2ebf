"""The paper's ablation with paired seeds: baseline, +Skip Dropout, +DyGA, +SD+DyGA, and checks of our additions.

    pip install -e ".[train,benchmarks]"
    python benchmarks/ablation.py --grid shapes --seeds 0 1 2 3             # train what is missing, then report
    python benchmarks/ablation.py --grid dsprites --variants baseline +SD+DyGA --seeds 4 5 --jobs 2
    python benchmarks/ablation.py --report_only                             # every grid, from the committed records

Every run is `train_scripts/train.py` with the `tiny` preset and the same step budget; the variants differ only in the
flags listed in VARIANTS. train.py seeds the initialisation and the data order from `--seed`, so one seed is the same
start and the same batches in every variant, and variants are compared seed by seed: against its reference, each
variant gets the mean paired difference, a 95% bootstrap interval over the seeds (10,000 resamples) and the number of
seeds where it is higher. Metrics are those of the training script's final validation: FactorVAE, DCI and MIG at
disentanglement_lib's sizes (10,000 / 5,000 rows, drawn with replacement) on both representations (`units`, and
`token_pca`, the official protocol), and the controllability of the renders.

Each finished run leaves a small record (a few KB) in `docs/results/ablation/<grid>/<variant>-seed<N>.json`: its
command, the hash of the sources that ran it, the machine, minutes and metrics. Records are committed, so runs
accumulate across sessions and machines; a record whose command matches is reused instead of training again (the
report counts the distinct sources behind each variant). Training folders go to `benchmarks/results/ablation/`.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import machine

ROOT = Path(__file__).resolve().parents[1]
RECORDS_DIR = ROOT / "docs" / "results" / "ablation"
GRIDS = {
    "shapes": ["--dataset", "builtin:shapes", "--factor_sizes", "3", "3", "3", "3", "3", "3"],
    "shapes-mixed": ["--dataset", "builtin:shapes", "--factor_sizes", "2", "6", "4", "3", "4", "5"],
    "dsprites": ["--dataset", "builtin:dsprites", "--factor_sizes", "3", "3", "4", "8", "8"],
}
OURS_OFF = ["--no-unit_whitening", "--unit_kurtosis_weight", "0"]
OFFICIAL_DYGA = [
    "--dyga_structure", "official", "--dyga_fit_space", "tokens", "--dyga_covariance_type", "full",
    "--dyga_init_components", "8", "--dyga_max_components", "32", "--dyga_max_iterations", "30",
    "--dyga_lambda_mode", "batch",
]  # fmt: skip
LEARNED_UNIT_NOISE = ("--unit_posterior", "gaussian", "--unit_noise", "0", "--unit_kl_weight", "0.003")
# the best dSprites configuration so far (docs/benchmarks.md, "One recipe, several datasets"), and probes on top of it
BEST_DSPRITES = "+SD+DyGA, broadcast tokens, learned unit noise, no kurtosis"
BEST_DSPRITES_FLAGS = ("--broadcast_tokens", "--unit_kurtosis_weight", "0", *LEARNED_UNIT_NOISE)
BEST_DSPRITES_SLUG = "sd-dyga-broadcast-nokurtosis-posterior-kl0.003"


@dataclass(frozen=True)
class Variant:
    flags: tuple[str, ...]
    reference: str | None
    slug: str


VARIANTS = {
    "baseline": Variant(("--skip_dropout", "0", "--no-dyga"), None, "baseline"),
    "+SD": Variant(("--no-dyga",), "baseline", "sd"),
    "+DyGA": Variant(("--skip_dropout", "0"), "baseline", "dyga"),
    "+SD+DyGA": Variant((), "baseline", "sd-dyga"),
    "baseline, ours off": Variant(("--skip_dropout", "0", "--no-dyga", *OURS_OFF), None, "baseline-ours-off"),
    "+SD+DyGA, ours off": Variant(tuple(OURS_OFF), "baseline, ours off", "sd-dyga-ours-off"),
    "+SD+official DyGA": Variant(tuple(OFFICIAL_DYGA), "+SD+DyGA", "sd-official-dyga"),
    "+SD+DyGA, broadcast tokens": Variant(("--broadcast_tokens",), "+SD+DyGA", "sd-dyga-broadcast"),
    "+SD+DyGA, kurtosis floor": Variant(("--unit_kurtosis_floor", "1.8"), "+SD+DyGA", "sd-dyga-kurtosis-floor"),
    "+SD+DyGA, unit noise 0.1": Variant(("--unit_noise", "0.1"), "+SD+DyGA", "sd-dyga-unit-noise0.1"),
    "+SD+DyGA, unit noise 0.1, unit gates": Variant(
        ("--unit_noise", "0.1", "--unit_gates", "--unit_gate_weight", "0.003"),
        "+SD+DyGA, unit noise 0.1",
        "sd-dyga-unit-noise0.1-gates0.003",
    ),
    "+SD+DyGA, unit noise 0.1, unit gates, skewness 0.3": Variant(
        ("--unit_noise", "0.1", "--unit_gates", "--unit_gate_weight", "0.003", "--unit_skewness_weight", "0.3"),
        "+SD+DyGA, unit noise 0.1, unit gates",
        "sd-dyga-unit-noise0.1-gates0.003-skewness0.3",
    ),
    "+SD+DyGA, learned unit noise": Variant(
        LEARNED_UNIT_NOISE,
        "+SD+DyGA",
        "sd-dyga-posterior-kl0.003",
    ),
    "+SD+DyGA, kurtosis 0.1": Variant(("--unit_kurtosis_weight", "0.1"), "+SD+DyGA", "sd-dyga-kurtosis0.1"),
    "+SD+DyGA, kurtosis 0.1, skewness 0.3": Variant(
        ("--unit_kurtosis_weight", "0.1", "--unit_skewness_weight", "0.3"),
        "+SD+DyGA, kurtosis 0.1",
        "sd-dyga-kurtosis0.1-skewness0.3",
    ),
    "+SD+DyGA, kurtosis 0.1, skewness 0.3, dependence 0.3": Variant(
        ("--unit_kurtosis_weight", "0.1", "--unit_skewness_weight", "0.3", "--unit_dependence_weight", "0.3"),
        "+SD+DyGA, kurtosis 0.1, skewness 0.3",
        "sd-dyga-kurtosis0.1-skewness0.3-dependence0.3",
    ),
    "+SD+DyGA, unit noise 0.1, kurtosis 0.1, skewness 0.3": Variant(
        ("--unit_noise", "0.1", "--unit_kurtosis_weight", "0.1", "--unit_skewness_weight", "0.3"),
        "+SD+DyGA, kurtosis 0.1, skewness 0.3",
        "sd-dyga-unit-noise0.1-kurtosis0.1-skewness0.3",
    ),
    "+SD+DyGA, swap consistency 0.1": Variant(
        ("--swap_consistency_weight", "0.1"), "+SD+DyGA", "sd-dyga-swap-consistency0.1"
    ),
    "+SD+DyGA, swap consistency 0.5": Variant(
        ("--swap_consistency_weight", "0.5"), "+SD+DyGA", "sd-dyga-swap-consistency0.5"
    ),
    "+SD+DyGA, kurtosis 0.1, skewness 0.3, swap consistency 0.1": Variant(
        ("--unit_kurtosis_weight", "0.1", "--unit_skewness_weight", "0.3", "--swap_consistency_weight", "0.1"),
        "+SD+DyGA, kurtosis 0.1, skewness 0.3",
        "sd-dyga-kurtosis0.1-skewness0.3-swap-consistency0.1",
    ),
    "+SD+DyGA, kurtosis 0.1, skewness 0.3, swap consistency 0.5": Variant(
        ("--unit_kurtosis_weight", "0.1", "--unit_skewness_weight", "0.3", "--swap_consistency_weight", "0.5"),
        "+SD+DyGA, kurtosis 0.1, skewness 0.3",
        "sd-dyga-kurtosis0.1-skewness0.3-swap-consistency0.5",
    ),
    BEST_DSPRITES: Variant(BEST_DSPRITES_FLAGS, "+SD+DyGA", BEST_DSPRITES_SLUG),
    **{
        f"{BEST_DSPRITES}, {label}": Variant(
            (*BEST_DSPRITES_FLAGS, *flags), BEST_DSPRITES, f"{BEST_DSPRITES_SLUG}-{suffix}"
        )
        for label, flags, suffix in [
            ("swap consistency 0.1", ("--swap_consistency_weight", "0.1"), "swap-consistency0.1"),
            ("detail loss 0.5", ("--detail_loss_weight", "0.5"), "detail0.5"),
            ("timestep bias 2", ("--timestep_bias_power", "2"), "timestep-bias2"),
            ("whitening shrinkage 0.1", ("--whitening_shrinkage", "0.1"), "shrinkage0.1"),
            ("whitening shrinkage 0.3", ("--whitening_shrinkage", "0.3"), "shrinkage0.3"),
        ]
    },
    "+SD+DyGA, learned unit noise, whitening shrinkage 0.1": Variant(
        (*LEARNED_UNIT_NOISE, "--whitening_shrinkage", "0.1"),
        "+SD+DyGA, learned unit noise",
        "sd-dyga-posterior-kl0.003-shrinkage0.1",
    ),
    "+SD+DyGA, learned unit noise, whitening shrinkage 0.3": Variant(
        (*LEARNED_UNIT_NOISE, "--whitening_shrinkage", "0.3"),
        "+SD+DyGA, learned unit noise",
        "sd-dyga-posterior-kl0.003-shrinkage0.3",
    ),
    "+SD+DyGA, broadcast tokens, kurtosis floor": Variant(
        ("--broadcast_tokens", "--unit_kurtosis_floor", "1.8"),
        "+SD+DyGA, broadcast tokens",
        "sd-dyga-broadcast-kurtosis-floor",
    ),
}
METRICS = {
    "factor_vae/eval_accuracy": "FactorVAE",
    "dci/disentanglement": "DCI-D",
    "mig/mig": "MIG",
    "token_pca/factor_vae/eval_accuracy": "FactorVAE (token PCA)",
    "token_pca/dci/disentanglement": "DCI-D (token PCA)",
    "token_pca/mig/mig": "MIG (token PCA)",
    "controllability/mean_factor_swap_accuracy": "factor swap",
    "controllability/mean_swap_accuracy": "unit swap",
    "controllability/reconstruction_psnr": "PSNR",
}


def train_arguments(options, grid: str, variant: str, seed: int, output_dir: Path) -> list[str]:
    """The train.py arguments of one run (what a record's reuse is keyed on, together with the grid)."""
    return [
        *GRIDS[grid],
        "--resolution", "32",
        "--model_config", "tiny",
        "--max_train_steps", str(options.max_train_steps),
        "--seed", str(seed),
        "--validation_steps", str(options.max_train_steps),
        "--validation_inference_steps", "25",
        "--checkpointing_steps", str(options.max_train_steps + 1),
        "--report_to", "none",
        "--output_dir", output_dir.relative_to(ROOT).as_posix() if output_dir.is_relative_to(ROOT) else str(output_dir),
        *VARIANTS[variant].flags,
        *options.extra_args,
    ]  # fmt: skip


def source_fingerprint() -> str:
    """SHA-256 of the training script and the package sources."""
    digest = hashlib.sha256()
    for path in [ROOT / "train_scripts" / "train.py", *sorted((ROOT / "diffusers_dyga").rglob("*.py"))]:
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def record_path(grid: str, variant: str, seed: int) -> Path:
    return RECORDS_DIR / grid / f"{VARIANTS[variant].slug}-seed{seed}.json"


def flat_metrics(metrics: dict) -> dict[str, float]:
    """`{"dci": {"disentanglement": x}, ...}` -> `{"dci/disentanglement": x, ...}`, numbers only."""
    return {
        f"{group}/{name}": float(value)
        for group, values in metrics.items()
        if group != "controllability_details"
        for name, value in values.items()
        if isinstance(value, (int, float))
    }


def train(options, grid: str, variant: str, seed: int) -> dict:
    """Trains one run (or reuses its record) and returns its record."""
    path = record_path(grid, variant, seed)
    output_dir = Path(options.output_dir) / grid / f"{VARIANTS[variant].slug}-seed{seed}"
    arguments = train_arguments(options, grid, variant, seed, output_dir)
    if path.is_file():
        record = json.loads(path.read_text())
        if record["arguments"] == arguments:
            return record
    print(f"training {grid} {variant} seed {seed}: train.py {' '.join(arguments)}", flush=True)
    source = source_fingerprint()  # when this run starts: train.py is read then, and sources may change between runs
    environment = {**os.environ, "OMP_NUM_THREADS": str(options.threads_per_run)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "train_scripts/train.py", *arguments],
        check=True, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    minutes = (time.perf_counter() - start) / 60
    report = json.loads((ROOT / output_dir / "training_report.json").read_text())
    record = {
        "grid": grid,
        "variant": variant,
        "seed": seed,
        "arguments": arguments,
        "source": source,
        "device": report.get("device"),
        "machine": machine(),
        "runs_at_once": options.jobs,
        "threads_per_run": options.threads_per_run,
        "training_minutes": report["wall_minutes"],
        "run_minutes": minutes,
        "process_cpu_minutes": report.get("process_cpu_minutes"),
        "metrics": flat_metrics(report["metrics"]),
        "metric_sizes": report["metric_sizes"]["final"],
        "dyga_components": report["dyga_fits"][-1]["num_components"] if report["dyga_fits"] else None,
        "unit_gates": report.get("unit_gates"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def load_records(grid: str) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((RECORDS_DIR / grid).glob("*.json"))]


def bootstrap_interval(differences: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `(num_seeds,)` paired differences."""
    if len(differences) < 2:
        return float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, len(differences), size=(resamples, len(differences)))
    means = differences[draws].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(records: list[dict]) -> dict:
    """Per variant and metric: seeds, mean, sample std and, against the reference, the paired statistics."""
    by_variant = {name: {r["seed"]: r for r in records if r["variant"] == name} for name in VARIANTS}
    summary = {}
    for name, runs in by_variant.items():
        if not runs:
            continue
        reference = VARIANTS[name].reference
        reference_runs = by_variant.get(reference, {}) if reference else {}
        paired_seeds = sorted(set(runs) & set(reference_runs))
        entry = {
            "seeds": sorted(runs),
            "reference": reference,
            "paired_seeds": paired_seeds,
            "sources": len({r["source"] for r in runs.values()}),
            "devices": sorted({r.get("device") or "?" for r in runs.values()}),
            "training_minutes": float(np.mean([r["training_minutes"] for r in runs.values()])),
            "metrics": {},
        }
        for key in METRICS:
            values = np.array([runs[s]["metrics"].get(key, np.nan) for s in sorted(runs)])
            stats = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
            if paired_seeds:
                differences = np.array([runs[s]["metrics"][key] - reference_runs[s]["metrics"][key] for s in paired_seeds])
                low, high = bootstrap_interval(differences)
                stats.update(
                    difference=float(differences.mean()), interval=[low, high], higher=int((differences > 0).sum())
                )
            entry["metrics"][key] = stats
        summary[name] = entry
    return summary


def markdown_tables(grid: str, summary: dict) -> str:
    """Two tables per grid: mean ± std per variant, and paired differences against each variant's reference."""
    lines = [f"### {grid}", "", "| variant | seeds | " + " | ".join(METRICS.values()) + " | minutes / run | device |"]
    lines.append("|---" * (len(METRICS) + 4) + "|")
    for name, entry in summary.items():
        cells = [f"{entry['metrics'][k]['mean']:.3f} ± {entry['metrics'][k]['std']:.3f}" for k in METRICS]
        lines.append(
            f"| {name} | {len(entry['seeds'])} | " + " | ".join(cells)
            + f" | {entry['training_minutes']:.1f} | {', '.join(entry['devices'])} |"
        )  # fmt: skip
    lines += ["", "| variant − reference | paired seeds | " + " | ".join(METRICS.values()) + " |"]
    lines.append("|---" * (len(METRICS) + 2) + "|")
    for name, entry in summary.items():
        if not entry["paired_seeds"]:
            continue
        cells = []
        for key in METRICS:
            stats = entry["metrics"][key]
            low, high = stats["interval"]
            interval = f" [{low:+.3f}, {high:+.3f}]" if np.isfinite(low) else ""
            cells.append(f"{stats['difference']:+.3f}{interval} ({stats['higher']}/{len(entry['paired_seeds'])})")
        lines.append(f"| {name} − {entry['reference']} | {len(entry['paired_seeds'])} | " + " | ".join(cells) + " |")
    mixed = [name for name, entry in summary.items() if entry["sources"] > 1]
    if mixed:
        lines += ["", f"Runs from more than one version of the sources: {', '.join(mixed)}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", nargs="+", default=["shapes"], choices=list(GRIDS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS)[:4], choices=list(VARIANTS))
    parser.add_argument("--max_train_steps", type=int, default=400, help="400 steps: ~15 core-minutes on a CPU.")
    parser.add_argument("--jobs", type=int, default=1, help="Runs trained at once.")
    parser.add_argument("--threads_per_run", type=int, default=None, help="OMP threads per run (cores / jobs).")
    parser.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results" / "ablation"))
    parser.add_argument("--report_only", action="store_true", help="Only rebuild the tables from the records.")
    parser.add_argument("extra_args", nargs=argparse.REMAINDER, help="After --: more train.py arguments for every run.")
    options = parser.parse_args()
    options.extra_args = [a for a in options.extra_args if a != "--"]
    options.threads_per_run = options.threads_per_run or max(1, (os.cpu_count() or 1) // options.jobs)

    if options.report_only:
        grids = [path.name for path in sorted(RECORDS_DIR.iterdir()) if path.is_dir()] if RECORDS_DIR.is_dir() else []
    else:
        grids = options.grid
        # Seed by seed, so that a stopped session leaves complete pairs.
        runs = [(g, v, s) for g in grids for s in options.seeds for v in options.variants]
        with ThreadPoolExecutor(max_workers=options.jobs) as pool:
            list(pool.map(lambda run: train(options, *run), runs))
    report, payload = [], {}
    for grid in grids:
        summary = summarise(load_records(grid))
        payload[grid] = summary
        report.append(markdown_tables(grid, summary))
    text = "\n".join(report)
    print(text)
    output = Path(options.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "ablation.md").write_text(text)
    (output / "ablation.json").write_text(json.dumps({"machine": machine(), "summary": payload}, indent=2))
    print("wrote", output / "ablation.md", output / "ablation.json")


if __name__ == "__main__":
    main()
