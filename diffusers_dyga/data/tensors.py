"""Turning dataset image cells into model tensors."""

import io

import datasets
import numpy as np
import PIL.Image
import torch


def images_to_tensor(images: list[PIL.Image.Image] | np.ndarray) -> torch.Tensor:
    """PIL images (RGB or grayscale) or `(B, H, W[, C])` uint8 arrays -> `(B, C, H, W)` float tensor in [-1, 1]."""
    array = np.stack([np.asarray(image) for image in images]) if isinstance(images, list) else np.asarray(images)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(f"Expected a batch of images (B, H, W[, C]), got an array of shape {array.shape}.")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def image_channels(dataset: datasets.Dataset) -> int:
    """3 if any image of the dataset's `image` column is in colour, 1 if all are grayscale. Reads image headers only
    and stops at the first colour image, so a colour dataset costs one row."""
    column = dataset.cast_column("image", datasets.Image(decode=False)).select_columns(["image"])
    for batch in column.iter(batch_size=1000):
        for cell in batch["image"]:
            source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]
            with PIL.Image.open(source) as image:
                if image.mode not in ("L", "1", "I", "I;16", "F"):
                    return 3
    return 1
