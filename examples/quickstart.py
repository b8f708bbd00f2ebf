"""Builds a tiny DisentangledDiffusionPipeline, fits its anchorer, encodes images, swaps units, saves and reloads
the pipeline, and writes a latent-interchange grid PNG. Untrained weights: this shows the API, not results."""

import argparse
import os

import torch
from diffusers import DDIMScheduler

from diffusers_dyga import DisentangledDiffusionPipeline, DisentangledEncoder, DyGAAnchorer, SkipDropoutUNet


def colour_blobs(num_images: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`(num_images, 3, size, size)` images in [-1, 1]: a coloured disc of random position and radius."""
    coords = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    centre = torch.rand(num_images, 2, generator=generator) * 1.2 - 0.6
    radius = torch.rand(num_images, 1, 1, generator=generator) * 0.3 + 0.2
    colour = torch.rand(num_images, 3, 1, 1, generator=generator) * 2 - 1
    inside = ((x - centre[:, :1, None]) ** 2 + (y - centre[:, 1:, None]) ** 2 < radius**2).float()
    return inside[:, None] * colour + (1 - inside[:, None]) * -0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument("--num_inference_steps", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    size, num_units, unit_dim = 32, 6, 16
    encoder = DisentangledEncoder(sample_size=size, num_units=num_units, unit_dim=unit_dim)
    unet = SkipDropoutUNet(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=unit_dim,
        attention_head_dim=8,
    )
    anchorer = DyGAAnchorer(num_units=num_units, unit_dim=unit_dim)
    images = colour_blobs(512, size, torch.Generator().manual_seed(0))
    with torch.no_grad():
        anchorer.fit(encoder(images).tokens)
    print("DyGA components per unit:", anchorer.num_components.tolist())

    pipe = DisentangledDiffusionPipeline(encoder, unet, DDIMScheduler(num_train_timesteps=1000), anchorer)
    units = pipe.encode(images[:4])
    print("units of 4 images:", tuple(units.shape))
    swapped = pipe.swap_units(units, units.roll(1, dims=0), [0, 1])
    print("units 0 and 1 swapped in from the next image:", tuple(swapped.shape))

    os.makedirs(args.output_dir, exist_ok=True)
    pipe.save_pretrained(os.path.join(args.output_dir, "pipeline"))
    pipe = DisentangledDiffusionPipeline.from_pretrained(os.path.join(args.output_dir, "pipeline"))
    grid = pipe.interchange_grid(images[:4], num_inference_steps=args.num_inference_steps)
    grid_path = os.path.join(args.output_dir, "interchange_grid.png")
    grid.save(grid_path)
    print("wrote", grid_path)


if __name__ == "__main__":
    main()
