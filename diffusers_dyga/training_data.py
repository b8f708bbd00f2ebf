"""The dataset options and loading shared by the training scripts (`train.py`, `train_autoencoder.py`)."""

import argparse

import datasets
import PIL.Image
import torch

from .data import images_to_tensor, load_builtin, load_image_dataset


def add_data_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Adds the `data` argument group: `--dataset` / `--dataset_name` and their options."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=None, help="builtin:shapes or builtin:dsprites (factors known).")
    data.add_argument("--dataset_name", default=None, help="A Hub dataset id or local path loadable with datasets.")
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--image_column", default="image")
    data.add_argument("--factor_sizes", type=int, nargs="+", default=None, help="Factor sizes of a builtin dataset.")
    data.add_argument("--resolution", type=int, default=None)
    data.add_argument("--cache_dir", default=None, help="Where generated datasets are cached.")
    return data


def check_data_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exactly one data source, and a builtin one named as such."""
    if (args.dataset is None) == (args.dataset_name is None):
        parser.error("Pass exactly one of --dataset (builtin:shapes, builtin:dsprites) and --dataset_name.")
    if args.dataset is not None and not args.dataset.startswith("builtin:"):
        parser.error(f"--dataset takes builtin:shapes or builtin:dsprites, got {args.dataset!r}; use --dataset_name.")


def load_training_data(args: argparse.Namespace) -> datasets.Dataset:
    """The dataset the data arguments name, with its images in an `image` column."""
    if args.dataset is not None:
        options = {"resolution": args.resolution, "cache_dir": args.cache_dir}
        if args.factor_sizes is not None:
            options["factor_sizes"] = tuple(args.factor_sizes)
        return load_builtin(args.dataset.split(":", 1)[1], **options)
    load_kwargs = {"name": args.dataset_config_name} if args.dataset_config_name else {}
    return load_image_dataset(args.dataset_name, image_column=args.image_column, **load_kwargs)


def prepare_images(images: list[PIL.Image.Image], resolution: int, channels: int) -> torch.Tensor:
    """Dataset images -> `(B, channels, resolution, resolution)` in [-1, 1]; other sizes are centre-cropped to a
    square and resized, as in the diffusers example scripts."""
    mode = "L" if channels == 1 else "RGB"
    prepared = []
    for image in images:
        image = image.convert(mode) if image.mode != mode else image
        if image.size != (resolution, resolution):
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((resolution, resolution), PIL.Image.BICUBIC)
        prepared.append(image)
    return images_to_tensor(prepared)
