"""The paper's ablation on a CPU budget: baseline, +Skip Dropout, +DyGA and +SD+DyGA, several seeds each.

    pip install -e ".[train,benchmarks]"
    python benchmarks/ablation.py                      # 4 variants x 3 seeds, reusing finished runs
    python benchmarks/ablation.py --report_only        # rebuild the table and plot from the finished runs

Every run is `train_scripts/train.py` with the `tiny` preset on `builtin:shapes` at 32x32 and the same step budget;
the variants differ only in `--skip_dropout 0` and `--no-dyga`. The training script evaluates the full metric suite
on the whole factor grid and the controllability of the renders at the end. A run whose folder already holds a `training_report.json` made with the same
command and the same sources (training script and package) is reused. Writes `ablation.json`, `ablation.md`
(mean +- sample std over seeds) and `ablation.png`.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import machine, print_table

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "baseline": ["--skip_dropout", "0", "--no-dyga"],
    "+SD": ["--no-dyga"],
    "+DyGA": ["--skip_dropout", "0"],
    "+SD+DyGA": [],
}
HEADLINE = {
    "factor_vae/eval_accuracy": "FactorVAE",
    "dci/disentanglement": "DCI-D",
    "dci/completeness": "DCI-C",
    "mig/mig": "MIG",
    "sap/sap": "SAP",
    "modularity_explicitness/modularity": "modularity",
    "downstream/mean_accuracy": "downstream",
    "controllability/mean_swap_accuracy": "swap acc.",
    "controllability/mean_traversal_accuracy": "traversal acc.",
}


def run_command(options, variant: str, seed: int, output_dir: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train_scripts" / "train.py"),
        "--dataset", "builtin:shapes",
        "--resolution", "32",
        "--factor_sizes", *map(str, options.factor_sizes),
        "--model_config", "tiny",
        "--max_train_steps", str(options.max_train_steps),
        "--seed", str(seed),
        "--validation_steps", str(options.max_train_steps),
        "--validation_inference_steps", "10",
        "--checkpointing_steps", str(options.max_train_steps + 1),
        "--report_to", "none",
        "--output_dir", str(output_dir),
        *VARIANTS[variant],
        *options.extra_args,
    ]  # fmt: skip


def source_fingerprint() -> str:
    """SHA-256 of the training script and the package sources: a run made with other code or defaults is not reused."""
    digest = hashlib.sha256()
    for path in [ROOT / "train_scripts" / "train.py", *sorted((ROOT / "diffusers_dyga").rglob("*.py"))]:
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def train_or_reuse(options, variant: str, seed: int) -> dict:
    output_dir = Path(options.output_dir) / f"{variant.strip('+').replace('+', '-')}-seed{seed}"
    command = run_command(options, variant, seed, output_dir)
    record_path = output_dir / "ablation_run.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record["command"][1:] == command[1:] and record.get("source") == options.source:
            return record
    if options.report_only:
        raise SystemExit(f"No finished run for {variant} seed {seed} in {output_dir}; run without --report_only.")
    print(f"training {variant} seed {seed}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    report = json.loads((output_dir / "training_report.json").read_text())
    details = report["metrics"].pop("controllability_details", None)
    metrics = {f"{group}/{name}": value for group, values in report["metrics"].items() for name, value in values.items()}
    record = {
        "variant": variant,
        "seed": seed,
        "command": command,
        "source": options.source,
        "process_seconds": seconds,
        "training_minutes": report["wall_minutes"],
        "metrics": metrics,
        "controllability": details,
        "dyga_components": report["dyga_fits"][-1]["num_components"] if report["dyga_fits"] else None,
    }
    record_path.write_text(json.dumps(record, indent=2))
    return record


def summarise(records: list[dict]) -> dict:
    summary = {}
    for variant in dict.fromkeys(r["variant"] for r in records):
        runs = [r for r in records if r["variant"] == variant]
        summary[variant] = {
            "seeds": [r["seed"] for r in runs],
            "training_minutes": [r["training_minutes"] for r in runs],
            "mean": {k: float(np.mean([r["metrics"][k] for r in runs])) for k in runs[0]["metrics"]},
            "std": {k: float(np.std([r["metrics"][k] for r in runs], ddof=1 if len(runs) > 1 else 0)) for k in runs[0]["metrics"]},
        }
    return summary


def markdown_table(summary: dict) -> str:
    lines = ["| variant | seeds | " + " | ".join(HEADLINE.values()) + " | training min / run |"]
    lines.append("|---" * (len(HEADLINE) + 3) + "|")
    for variant, values in summary.items():
        cells = [f"{values['mean'][k]:.3f} ± {values['std'][k]:.3f}" for k in HEADLINE]
        minutes = f"{np.mean(values['training_minutes']):.1f}"
        lines.append(f"| {variant} | {len(values['seeds'])} | " + " | ".join(cells) + f" | {minutes} |")
    return "\n".join(lines) + "\n"


def bar_chart(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["factor_vae/eval_accuracy", "dci/disentanglement", "mig/mig", "modularity_explicitness/modularity"]
    width = 0.8 / len(summary)
    figure, axis = plt.subplots(figsize=(8, 3.6))
    for index, (variant, values) in enumerate(summary.items()):
        positions = np.arange(len(metrics)) + (index - (len(summary) - 1) / 2) * width
        means = [values["mean"][k] for k in metrics]
        stds = [values["std"][k] for k in metrics]
        axis.bar(positions, means, width, yerr=stds, capsize=3, label=variant)
    axis.set_xticks(np.arange(len(metrics)), [HEADLINE[k] for k in metrics])
    axis.set_ylim(0, 1)
    axis.set_ylabel(f"mean ± std over {len(next(iter(summary.values()))['seeds'])} seeds")
    axis.legend(ncols=len(summary), loc="upper center", bbox_to_anchor=(0.5, 1.15), frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max_train_steps", type=int, default=400)
    parser.add_argument("--factor_sizes", type=int, nargs=6, default=[3, 3, 3, 3, 3, 3])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "results" / "ablation"))
    parser.add_argument("--report_only", action="store_true", help="Only rebuild the report from finished runs.")
    parser.add_argument("extra_args", nargs=argparse.REMAINDER, help="After --: more train.py arguments for every run.")
    options = parser.parse_args()
    options.extra_args = [a for a in options.extra_args if a != "--"]
    options.source = source_fingerprint()

    os.makedirs(options.output_dir, exist_ok=True)
    records = [train_or_reuse(options, variant, seed) for variant in options.variants for seed in options.seeds]
    summary = summarise(records)
    table = markdown_table(summary)
    output = Path(options.output_dir)
    (output / "ablation.md").write_text(table)
    bar_chart(summary, output / "ablation.png")
    payload = {"machine": machine(), "options": vars(options), "summary": summary, "runs": records}
    (output / "ablation.json").write_text(json.dumps(payload, indent=2))
    rows = [[r["variant"], r["seed"], r["training_minutes"]] + [r["metrics"][k] for k in HEADLINE] for r in records]
    print_table(["variant", "seed", "train min"] + list(HEADLINE.values()), rows)
    print()
    print(table)
    print("wrote", output / "ablation.json", output / "ablation.md", output / "ablation.png")


if __name__ == "__main__":
    main()
