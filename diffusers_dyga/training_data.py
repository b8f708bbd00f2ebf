"""The dataset options and loading shared by the training scripts (`train.py`, `train_autoencoder.py`)."""

import argparse

import datasets
import PIL.Image
import torch

from .data import DecodedImages, fit_images, images_to_tensor, load_builtin, load_image_dataset, to_model_range


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
    square and resized, as in the diffusers example scripts ([`fit_images`])."""
    return images_to_tensor(fit_images(images, resolution, channels))


class TrainingImages:
    """The training images as the models take them, `(batch, channels, resolution, resolution)` in [-1, 1]: indexed
    from a [`DecodedImages`] tensor when one is given (converted on the target device), otherwise decoded from the
    dataset's rows with PIL ([`prepare_images`]). Both give the same values."""

    def __init__(self, dataset: datasets.Dataset, resolution: int, channels: int, decoded: DecodedImages | None = None):
        if decoded is not None and len(decoded) != len(dataset):
            raise ValueError(f"The decoded tensor has {len(decoded)} rows, the dataset {len(dataset)}.")
        self.dataset, self.resolution, self.channels, self.decoded = dataset, resolution, channels, decoded

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, rows: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """The images of `rows`, float32 on `device`."""
        if self.decoded is not None:
            return to_model_range(self.decoded[rows].to(device))
        return prepare_images(self.dataset.select(rows)["image"], self.resolution, self.channels).to(device)

    def collate(self, rows: list) -> dict[str, torch.Tensor]:
        """A batch for a `DataLoader` over [`TrainingImages.batch_source`]: uint8 `pixel_values` from the decoded tensor
        (convert with [`to_model_range`] where the batch lands), or float ones decoded with PIL."""
        if self.decoded is not None:
            return {"pixel_values": self.decoded[rows]}
        return {"pixel_values": prepare_images([row["image"] for row in rows], self.resolution, self.channels)}

    def batch_source(self):
        """What the `DataLoader` indexes: row numbers for the decoded tensor, the dataset's `image` column otherwise."""
        return range(len(self.dataset)) if self.decoded is not None else self.dataset.select_columns(["image"])
