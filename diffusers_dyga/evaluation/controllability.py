"""Controllability: whether the rendered images show what the units hold.

The encoder metrics (FactorVAE, DCI, MIG, ...) score the units; they say nothing about the decoder. This module scores
the renders with a [`FactorClassifier`] trained on the dataset's own images, independent of the model under test:

- reconstruction: each source rendered from its own units; the classifier's reading of each factor against the
  source's factors, and the PSNR of the render;
- swap: for each unit that holds a factor (that factor explains at least `unit_share_threshold` of the unit's
  variance), sources rendered with that unit taken from donors whose value of the factor differs; a render succeeds
  when the classifier reads the donor's value for that factor and the source's value for every other factor that
  some unit holds (a factor no unit holds cannot be rendered from the units, edited or not: reconstruction accuracy
  shows it);
- traversal: the unit set, in turn, to its mean over the rows holding each value of its factor; a render succeeds
  when the classifier reads that value;
- factor swap: for each factor that some units hold, all of them taken from the donor at once. A factor spread over
  two units fails the per-unit swap even when the decoder renders the factor well; this separates the two;
- group swap: the edit a user without labels makes. The anchorer's unit groups (units whose anchor assignments depend
  on each other, [`DyGAAnchorer.unit_groups`]) are found without the factors; each group that holds a factor (the
  factor most of its holding units hold) is taken from donors whose value of that factor differs, scored as a swap.
"""

import numpy as np
import torch

from ..data.grid import factor_names, factor_sizes, factors_array
from .factor_classifier import FactorClassifier, factor_accuracy, load_or_train_factor_classifier
from .suite import dataset_images, encode_dataset


def unit_factor_shares(codes: np.ndarray, factors: np.ndarray, sizes: list[int]) -> np.ndarray:
    """
    `(num_codes, num_factors)` share of each code's variance explained by each factor (the correlation ratio: the
    variance of the code's mean over the factor's values, over the code's variance), for the rows of a full grid.
    1 for a code that is a function of that factor alone, 0 for one that ignores it.
    """
    standardised = (codes - codes.mean(axis=0)) / codes.std(axis=0).clip(min=1e-12)
    shares = np.zeros((codes.shape[1], len(sizes)))
    for index, size in enumerate(sizes):
        present = [value for value in range(size) if (factors[:, index] == value).any()]
        means = np.stack([standardised[factors[:, index] == value].mean(axis=0) for value in present])
        weights = np.array([(factors[:, index] == value).mean() for value in present])
        shares[:, index] = (weights[:, None] * means**2).sum(axis=0)
    return shares


def psnr(renders: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """`(batch,)` PSNR in dB of `(batch, C, H, W)` renders against targets, both in [-1, 1]."""
    mse = ((renders.float() - targets.float()) ** 2).flatten(1).mean(dim=1) / 4.0
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).numpy()


@torch.no_grad()
def controllability(
    pipeline,
    dataset,
    classifier: FactorClassifier,
    codes: np.ndarray | None = None,
    num_sources: int = 32,
    num_traversal_sources: int = 8,
    num_inference_steps: int = 25,
    unit_share_threshold: float = 0.5,
    group_threshold: float = 0.25,
    batch_size: int = 128,
    seed: int = 0,
) -> dict:
    """
    Scores the renders of a `DisentangledDiffusionPipeline` on a ground-truth `dataset` (a full factor grid).

    Args:
        pipeline: the pipeline under test.
        dataset: a `datasets.Dataset` with an `image` column and `ClassLabel` factor columns.
        classifier: reads factors from images; see [`load_or_train_factor_classifier`].
        codes (`np.ndarray` of shape `(num_rows, num_units)`, *optional*): the units of every row, if already
            encoded.
        num_sources: sources rendered for reconstruction and for each unit's swap.
        num_traversal_sources: sources rendered at each value of each unit's factor.
        num_inference_steps: sampling steps of every render.
        unit_share_threshold: a unit holds its dominant factor when that factor explains at least this share of
            its variance.
        group_threshold: the anchor dependence that links two units into a group (see `DyGAAnchorer.unit_groups`).
        seed: draws the sources and donors and seeds every render's noise (the same noise for every edit of a
            source).

    Returns:
        `{"reconstruction_accuracy": {factor: acc}, "reconstruction_psnr": dB, "units": [{"unit", "factor",
        "share", "swap_accuracy", "swap_target_accuracy", "swap_others_kept", "traversal_accuracy"}, ...],
        "factors": [{"factor", "units", "swap_accuracy", "swap_target_accuracy", "swap_others_kept"}, ...],
        "groups": [{"units", "factor", "swap_accuracy", ...}, ...], "mean_swap_accuracy", "mean_traversal_accuracy",
        "mean_factor_swap_accuracy", "mean_group_swap_accuracy", "num_units_holding_a_factor", "settings"}`; the means
        are over the units (factors, groups) that hold (are held by, hold) a factor, 0 when none. Without a fitted
        anchorer there are no groups: `"groups"` is empty and `"mean_group_swap_accuracy"` is `None`.
    """
    names, sizes, factors = factor_names(dataset), factor_sizes(dataset), factors_array(dataset)
    if tuple(classifier.config.factor_sizes) != tuple(sizes):
        raise ValueError(f"The classifier reads factor sizes {list(classifier.config.factor_sizes)}, the dataset has {sizes}.")
    if codes is None:
        codes = encode_dataset(pipeline.encode, dataset)
    if codes.shape[0] != len(dataset):
        raise ValueError(f"Got codes for {codes.shape[0]} rows, the dataset has {len(dataset)}.")
    random_state = np.random.RandomState(seed)
    units = torch.from_numpy(codes).float()

    def render(unit_rows: torch.Tensor) -> torch.Tensor:
        # One noise draw per position in a chunk: renders of the same source in different edits share their noise.
        rendered = []
        for start in range(0, len(unit_rows), batch_size):
            chunk = unit_rows[start : start + batch_size]
            generator = torch.Generator(pipeline.device).manual_seed(seed)
            output = pipeline(units=chunk, num_inference_steps=num_inference_steps, generator=generator, output_type="pt")
            rendered.append(output.images.cpu() * 2 - 1)
        return torch.cat(rendered)

    sources = random_state.choice(len(dataset), size=min(num_sources, len(dataset)), replace=False)
    reconstructions = render(units[sources])
    readings = classifier.predict(reconstructions)
    source_images = dataset_images(dataset, sources.tolist(), reconstructions.shape[-1], reconstructions.shape[1])
    report = {
        "reconstruction_accuracy": factor_accuracy(readings, factors[sources], names),
        "reconstruction_psnr": float(psnr(reconstructions, source_images).mean()),
    }

    shares = unit_factor_shares(codes, factors, sizes)
    holders = {
        unit: int(shares[unit].argmax())
        for unit in range(codes.shape[1])
        if shares[unit].max() >= unit_share_threshold and sizes[int(shares[unit].argmax())] > 1
    }
    held = sorted(set(holders.values()))

    def swap(unit_indices: list[int], factor: int) -> dict[str, float]:
        donors = np.array([random_state.choice(np.flatnonzero(factors[:, factor] != factors[row, factor])) for row in sources])
        swapped = units[sources].clone()
        swapped[:, unit_indices] = units[donors][:, unit_indices]
        readings = classifier.predict(render(swapped))
        expected = factors[sources].copy()
        expected[:, factor] = factors[donors, factor]
        others = [j for j in held if j != factor]
        target_read = readings[:, factor] == expected[:, factor]
        others_kept = (readings[:, others] == expected[:, others]).all(axis=1)
        return {
            "swap_accuracy": float(np.mean(target_read & others_kept)),
            "swap_target_accuracy": float(np.mean(target_read)),
            "swap_others_kept": float(np.mean(others_kept)),
        }

    unit_reports = []
    walked = sources[: min(num_traversal_sources, len(sources))]
    for unit, factor in holders.items():
        values = [v for v in range(sizes[factor]) if (factors[:, factor] == v).any()]
        value_means = torch.tensor([codes[factors[:, factor] == v, unit].mean() for v in values], dtype=torch.float32)
        swept = units[walked].repeat_interleave(len(values), dim=0)
        swept[:, unit] = value_means.repeat(len(walked))
        walk_readings = classifier.predict(render(swept))[:, factor]
        unit_reports.append(
            {
                "unit": unit,
                "factor": names[factor],
                "share": float(shares[unit, factor]),
                **swap([unit], factor),
                "traversal_accuracy": float(np.mean(walk_readings == np.tile(values, len(walked)))),
            }
        )
    factor_reports = []
    for factor in held:
        factor_units = [unit for unit, held_factor in holders.items() if held_factor == factor]
        factor_reports.append({"factor": names[factor], "units": factor_units, **swap(factor_units, factor)})

    group_reports = []
    anchored = pipeline.anchorer is not None and pipeline.anchorer.is_fitted
    if anchored:
        tokens = pipeline.encoder.embed(units.to(device=pipeline.device, dtype=pipeline.encoder.dtype)).float()
        for group in pipeline.anchorer.unit_groups(tokens, threshold=group_threshold):
            held_by_group = [holders[unit] for unit in group if unit in holders]
            if not held_by_group:
                continue
            factor = max(set(held_by_group), key=lambda j: (held_by_group.count(j), shares[group, j].max()))
            if len(group) == 1:
                unit_report = next(entry for entry in unit_reports if entry["unit"] == group[0])
                outcome = {key: unit_report[key] for key in ("swap_accuracy", "swap_target_accuracy", "swap_others_kept")}
            else:
                outcome = swap(group, factor)
            group_reports.append({"units": group, "factor": names[factor], **outcome})

    def mean_of(reports: list[dict], key: str) -> float:
        return float(np.mean([entry[key] for entry in reports])) if reports else 0.0

    report["units"] = unit_reports
    report["num_units_holding_a_factor"] = len(unit_reports)
    report["mean_swap_accuracy"] = mean_of(unit_reports, "swap_accuracy")
    report["mean_traversal_accuracy"] = mean_of(unit_reports, "traversal_accuracy")
    report["factors"] = factor_reports
    report["mean_factor_swap_accuracy"] = mean_of(factor_reports, "swap_accuracy")
    report["groups"] = group_reports
    report["mean_group_swap_accuracy"] = mean_of(group_reports, "swap_accuracy") if anchored else None
    report["settings"] = {
        "num_sources": len(sources),
        "num_traversal_sources": len(walked),
        "num_inference_steps": num_inference_steps,
        "unit_share_threshold": unit_share_threshold,
        "group_threshold": group_threshold,
        "seed": seed,
    }
    return report


def evaluate_controllability(
    pipeline, dataset, codes: np.ndarray | None = None, cache_dir: str | None = None, **options
) -> dict:
    """[`controllability`] with the dataset's cached [`FactorClassifier`] (trained on first use), its report
    (held-out accuracy on clean and degraded images) included as `"factor_classifier"`. `options` go to
    [`controllability`]."""
    classifier, classifier_report = load_or_train_factor_classifier(dataset, cache_dir=cache_dir)
    report = controllability(pipeline, dataset, classifier.to(pipeline.device), codes=codes, **options)
    return {**report, "factor_classifier": classifier_report}
