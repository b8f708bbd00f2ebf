"""Pixel coordinates as extra input channels (CoordConv), shared by the encoder and the U-Net."""

import torch


def append_coordinates(sample: torch.Tensor) -> torch.Tensor:
    """`(batch, channels, H, W)` -> `(batch, channels + 2, H, W)`: appends each pixel's x and y in [-1, 1]."""
    batch, _, height, width = sample.shape
    y = torch.linspace(-1.0, 1.0, height, device=sample.device, dtype=sample.dtype)
    x = torch.linspace(-1.0, 1.0, width, device=sample.device, dtype=sample.dtype)
    coordinates = torch.stack(torch.meshgrid(x, y, indexing="xy")).expand(batch, 2, height, width)
    return torch.cat([sample, coordinates], dim=1)
