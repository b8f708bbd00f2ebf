"""A dataset's images decoded once into one uint8 tensor, batched by indexing instead of decoding per batch."""

import logging
import os
import tempfile
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


logger = logging.getLogger(__name__)

DECODED_VERSION = 2


def fit_images(images: list[PIL.Image.Image], resolution: int, channels: int) -> list[PIL.Image.Image]:
    """Dataset images in the training mode (`L` for 1 channel, else `RGB`) at `resolution` x `resolution`; other
    sizes are centre-cropped to a square and resized, as in the diffusers example scripts."""
    mode = "L" if channels == 1 else "RGB"
    fitted = []
    for image in images:
        image = image.convert(mode) if image.mode != mode else image
        if image.size != (resolution, resolution):
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((resolution, resolution), PIL.Image.BICUBIC)
        fitted.append(image)
    return fitted


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 `(batch, channels, height, width)` -> float32 in [-1, 1], on the tensor's own device (the same arithmetic
    as `images_to_tensor`, so both data paths give the same values)."""
    return pixels.float() / 127.5 - 1.0


class DecodedImages:
    """The images of a dataset as one uint8 tensor, stored `(num_rows, height, width, channels)` as PIL decodes them.

    Decoding is the cost of every training step that reads images through PIL; done once here, a batch is an index
    into this tensor and its conversion to [-1, 1] ([`to_model_range`]) runs wherever the batch is, e.g. on the GPU.
    Batches come as `(batch, channels, height, width)` in the channels-last memory layout that `images_to_tensor`
    gives, so convolutions take the same kernels and training gives the same weights on either path.
    [`DecodedImages.from_dataset`] caches the tensor as a safetensors file beside the dataset's own cache files.
    """

    def __init__(self, pixels: torch.Tensor):
        if pixels.dtype != torch.uint8 or pixels.ndim != 4:
            raise ValueError(f"Expected a uint8 tensor (num_rows, height, width, channels), got {pixels.dtype} {tuple(pixels.shape)}.")
        self.pixels = pixels

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, rows) -> torch.Tensor:
        """uint8 `(len(rows), channels, height, width)`, channels-last in memory."""
        return self.pixels[torch.as_tensor(rows, dtype=torch.long)].permute(0, 3, 1, 2)

    @staticmethod
    def num_bytes(num_rows: int, resolution: int, channels: int) -> int:
        return num_rows * channels * resolution * resolution

    @classmethod
    def from_dataset(
        cls,
        dataset: datasets.Dataset,
        resolution: int,
        channels: int,
        cache_dir: str | os.PathLike | None = None,
        chunk_size: int = 1024,
    ) -> "DecodedImages":
        """Decodes the `image` column (as [`fit_images`] prepares it), or loads the copy cached by an earlier call.
        `cache_dir` defaults to the folder of the dataset's cache files; a dataset held only in memory is decoded
        every time. A cached file of another shape or an unreadable one is decoded again and replaced."""
        path = cls.cache_path(dataset, resolution, channels, cache_dir)
        expected = (len(dataset), resolution, resolution, channels)
        if path is not None and path.is_file():
            try:
                pixels = load_file(path)["pixels"]
                if tuple(pixels.shape) == expected and pixels.dtype == torch.uint8:
                    return cls(pixels)
                logger.warning(f"{path} holds {tuple(pixels.shape)} {pixels.dtype}, not {expected} uint8: decoding again.")
            except (SafetensorError, OSError, KeyError) as error:
                logger.warning(f"{path} could not be read ({error}): decoding again.")
        pixels = torch.empty(expected, dtype=torch.uint8)
        images = dataset.select_columns(["image"])
        for start in range(0, len(dataset), chunk_size):
            fitted = fit_images(images[start : start + chunk_size]["image"], resolution, channels)
            array = np.stack([np.asarray(image) for image in fitted]).reshape(len(fitted), resolution, resolution, channels)
            pixels[start : start + len(fitted)] = torch.from_numpy(array)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".partial", delete=False) as handle:
                partial = handle.name
            save_file({"pixels": pixels}, partial)
            os.replace(partial, path)
        return cls(pixels)

    @staticmethod
    def cache_path(
        dataset: datasets.Dataset, resolution: int, channels: int, cache_dir: str | os.PathLike | None = None
    ) -> Path | None:
        """`<cache_dir>/decoded-<fingerprint>-<resolution>px-<channels>ch.safetensors`, or `None` when the dataset has
        no cache files and no `cache_dir` is given."""
        if cache_dir is None:
            if not dataset.cache_files:
                return None
            cache_dir = Path(dataset.cache_files[0]["filename"]).parent
        name = f"decoded-v{DECODED_VERSION}-{dataset._fingerprint}-{resolution}px-{channels}ch.safetensors"
        return Path(cache_dir) / name
