"""A labelled latent-interchange figure of a trained pipeline: each swap column is headed by the factor its unit holds.

    python examples/interchange_figure.py outputs/shapes-tiny --dataset builtin:shapes --factor_sizes 3 3 3 3 3 3 \
        --output docs/images/first_command_grid.png

Sources are drawn as the training script's validation draws them (`--seed`), so the figure shows the rows of the
run's own `interchange_grid.png`, enlarged and labelled. On data without factor labels the columns are headed by unit
number only. With `--groups` the swap columns are the anchorer's unit groups instead (`pipe.unit_groups`, found
without labels: units that hold one attribute together are swapped together), headed `0+1: wall hue`.
"""

import argparse

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from diffusers_dyga import DisentangledDiffusionPipeline
from diffusers_dyga.data import factor_names, factors_array, factor_sizes, load_builtin
from diffusers_dyga.evaluation import dataset_images, encode_dataset, unit_factor_shares


def column_labels(pipeline: DisentangledDiffusionPipeline, dataset, columns: list[list[int]]) -> list[str]:
    """`source`, `donor`, `recon.`, then per column its units (`0+1`) and the factor they hold: the dominant factor of
    the unit that holds most, when it explains half that unit's variance."""
    labels = ["source", "donor", "recon."]
    names = factor_names(dataset)
    if not names:
        return labels + ["+".join(map(str, units)) for units in columns]
    shares = unit_factor_shares(encode_dataset(pipeline.encode, dataset), factors_array(dataset), factor_sizes(dataset))
    for units in columns:
        strongest = max(units, key=lambda unit: shares[unit].max())
        factor = int(shares[strongest].argmax())
        held = names[factor].replace("_", " ") if shares[strongest, factor] >= 0.5 else "-"
        labels.append(f"{'+'.join(map(str, units))}: {held}")
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="A saved DisentangledDiffusionPipeline folder.")
    parser.add_argument("--dataset", default="builtin:shapes", help="builtin:shapes or builtin:dsprites.")
    parser.add_argument("--factor_sizes", type=int, nargs="+", default=None)
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--num_inference_steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=3, help="Each pixel becomes scale x scale pixels.")
    parser.add_argument("--groups", action="store_true", help="One swap column per unit group instead of per unit.")
    parser.add_argument("--output", default="interchange_figure.png")
    options = parser.parse_args()

    pipeline = DisentangledDiffusionPipeline.from_pretrained(options.pipeline)
    pipeline.set_progress_bar_config(disable=True)
    resolution = pipeline.encoder.config.sample_size
    settings = {"resolution": resolution}
    if options.factor_sizes is not None:
        settings["factor_sizes"] = tuple(options.factor_sizes)
    dataset = load_builtin(options.dataset.split(":", 1)[1], **settings)
    rows = np.random.RandomState(options.seed).choice(len(dataset), size=options.num_images, replace=False)
    sources = dataset_images(dataset, sorted(rows.tolist()))
    if options.groups:
        columns = pipeline.unit_groups(dataset_images(dataset, list(range(len(dataset)))[:: max(1, len(dataset) // 512)]))
    else:
        columns = [[unit] for unit in range(pipeline.encoder.config.num_units)]
    grid = pipeline.interchange_grid(
        sources,
        unit_indices=columns,
        num_inference_steps=options.num_inference_steps,
        generator=torch.Generator().manual_seed(options.seed),
    )

    cell = resolution * options.scale
    header = 14
    labels = column_labels(pipeline, dataset, columns)
    figure = PIL.Image.new("RGB", (grid.width * options.scale, grid.height * options.scale + header), "white")
    figure.paste(grid.resize((grid.width * options.scale, grid.height * options.scale), PIL.Image.NEAREST), (0, header))
    draw = PIL.ImageDraw.Draw(figure)
    for column, label in enumerate(labels):
        draw.text((column * cell + 2, 2), label[: cell // 6], fill="black")
    figure.save(options.output)
    print("wrote", options.output)


if __name__ == "__main__":
    main()
