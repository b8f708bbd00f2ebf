"""Turning dataset image cells into model tensors."""

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
