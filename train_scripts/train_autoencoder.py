#!/usr/bin/env python
"""Trains the first stage of latent DyGA: a diffusers `VQModel` shaped like the official one (f4, 3 latent channels,
2,048 codes), or an `AutoencoderKL` with `--model_type kl`, and saves a folder that `train.py --vae` takes.

    accelerate launch train_scripts/train_autoencoder.py --dataset builtin:shapes --resolution 64 \
        --max_train_steps 20000 --output_dir outputs/shapes-vq

The loss is the L1 reconstruction error plus the quantiser's codebook and commitment terms (VQ) or a small KL term
(KL), plus, with `--perceptual_backbone DIR` (a local `transformers` backbone folder, e.g. an ImageNet ResNet saved
with `save_pretrained`), an LPIPS-style perceptual distance in that backbone's features (the official first stage uses
LPIPS and a discriminator; neither's weights are downloaded here). At the end the latents'
scaling factor is set to 1 / std of the latents of up to `--scale_samples` images (the official `scale_by_std`), and
the reconstruction PSNR of up to `--eval_samples` images is written to `training_report.json`.
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL, VQModel
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from diffusers_dyga.perceptual_loss import PerceptualLoss
from diffusers_dyga.data import image_channels
from diffusers_dyga.training_data import add_data_arguments, check_data_arguments, load_training_data, prepare_images


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    model = parser.add_argument_group("model")
    model.add_argument("--model_type", choices=["vq", "kl"], default="vq")
    model.add_argument(
        "--block_out_channels", type=int, nargs="+", default=[32, 64, 128], help="Official: 32 x (1, 2, 4), so f4."
    )
    model.add_argument("--layers_per_block", type=int, default=2)
    model.add_argument("--latent_channels", type=int, default=3)
    model.add_argument("--num_vq_embeddings", type=int, default=2048)
    model.add_argument("--kl_weight", type=float, default=1e-6, help="Weight of the KL term (--model_type kl).")
    model.add_argument(
        "--perceptual_backbone",
        default=None,
        help="Local transformers backbone folder for a perceptual loss (diffusers_dyga.perceptual_loss); off if unset.",
    )
    model.add_argument("--perceptual_weight", type=float, default=1.0, help="Weight of the perceptual loss.")
    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", default="outputs/first-stage")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--train_batch_size", type=int, default=32)
    train.add_argument("--max_train_steps", type=int, default=2000)
    train.add_argument("--learning_rate", type=float, default=1e-4)
    train.add_argument("--lr_warmup_steps", type=int, default=0)
    train.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    train.add_argument("--scale_samples", type=int, default=2048)
    train.add_argument("--eval_samples", type=int, default=1024)
    args = parser.parse_args(argv)
    check_data_arguments(parser, args)
    if args.resolution is None:
        args.resolution = 64
    for name in ("resolution", "layers_per_block", "latent_channels", "num_vq_embeddings", "train_batch_size",
                 "max_train_steps", "learning_rate", "scale_samples", "eval_samples"):  # fmt: skip
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}.")
    if args.kl_weight < 0 or args.lr_warmup_steps < 0 or args.perceptual_weight < 0:
        parser.error("--kl_weight, --lr_warmup_steps and --perceptual_weight must be non-negative.")
    if args.perceptual_backbone is not None and not os.path.isfile(os.path.join(args.perceptual_backbone, "config.json")):
        parser.error(f"--perceptual_backbone {args.perceptual_backbone}: no config.json (a local backbone folder is needed).")
    factor = 2 ** (len(args.block_out_channels) - 1)
    if args.resolution % factor:
        parser.error(f"--resolution {args.resolution} is not divisible by the downsampling factor {factor}.")
    return args


def build_autoencoder(args: argparse.Namespace, channels: int) -> VQModel | AutoencoderKL:
    levels = len(args.block_out_channels)
    shared = dict(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(args.block_out_channels),
        layers_per_block=args.layers_per_block,
        latent_channels=args.latent_channels,
        sample_size=args.resolution,
        norm_num_groups=min(32, args.block_out_channels[0]),
    )
    if args.model_type == "vq":
        return VQModel(num_vq_embeddings=args.num_vq_embeddings, **shared)
    return AutoencoderKL(**shared)


def autoencoder_loss(
    model, pixels: torch.Tensor, args: argparse.Namespace, perceptual: PerceptualLoss | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss and the reconstruction `(B, C, H, W)`."""
    if args.model_type == "vq":
        output = model(pixels)
        reconstruction, regulariser = output.sample, output.commit_loss.mean()
    else:
        posterior = model.encode(pixels).latent_dist
        reconstruction = model.decode(posterior.sample()).sample
        regulariser = args.kl_weight * posterior.kl().mean()
    loss = F.l1_loss(reconstruction, pixels) + regulariser
    if perceptual is not None:
        loss = loss + args.perceptual_weight * perceptual(reconstruction, pixels)
    return loss, reconstruction


def latents_of(model, pixels: torch.Tensor) -> torch.Tensor:
    """What `train.py --vae` diffuses: the VQ encoder's pre-quantisation latents, or the KL posterior's mode."""
    encoded = model.encode(pixels)
    return encoded.latents if hasattr(encoded, "latents") else encoded.latent_dist.mode()


@torch.no_grad()
def measure(model, dataset, args, channels: int, device: torch.device) -> dict[str, float]:
    """The latents' std over `scale_samples` images and the reconstruction PSNR (images in [0, 1]) over
    `eval_samples` images, both drawn with a fixed seed."""
    rng = np.random.RandomState(args.seed)
    latents = []
    rows = rng.permutation(len(dataset))[: args.scale_samples].tolist()
    for start in range(0, len(rows), 256):
        pixels = prepare_images(dataset.select(rows[start : start + 256])["image"], args.resolution, channels)
        latents.append(latents_of(model, pixels.to(device)).float().cpu())
    squared_errors = []
    rows = rng.permutation(len(dataset))[: args.eval_samples].tolist()
    for start in range(0, len(rows), 256):
        pixels = prepare_images(dataset.select(rows[start : start + 256])["image"], args.resolution, channels).to(device)
        if args.model_type == "vq":
            reconstruction = model(pixels).sample
        else:
            reconstruction = model.decode(latents_of(model, pixels)).sample
        error = ((reconstruction.clamp(-1, 1) - pixels) / 2).float().square().mean(dim=(1, 2, 3))
        squared_errors.append(error.cpu())
    mse = torch.cat(squared_errors)
    return {
        "latent_std": torch.cat(latents).std().item(),
        "psnr": (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean().item(),
    }


def main(args: argparse.Namespace) -> str:
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    dataset = load_training_data(args)
    channels = image_channels(dataset)
    model = build_autoencoder(args, channels)
    perceptual = PerceptualLoss(args.perceptual_backbone) if args.perceptual_backbone else None
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate, betas=(0.5, 0.9))
    lr_scheduler = get_scheduler(
        "constant_with_warmup", optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps,
        num_training_steps=args.max_train_steps,
    )  # fmt: skip

    def collate(rows: list[dict]) -> dict:
        return {"pixel_values": prepare_images([row["image"] for row in rows], args.resolution, channels)}

    loader = torch.utils.data.DataLoader(
        dataset.select_columns(["image"]),
        batch_size=args.train_batch_size,
        shuffle=True,
        drop_last=len(dataset) >= args.train_batch_size,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    if perceptual is not None:
        perceptual.to(accelerator.device)
    progress = tqdm(range(args.max_train_steps), desc="Steps", disable=not accelerator.is_local_main_process)
    start_time, step = time.perf_counter(), 0
    while step < args.max_train_steps:
        for batch in loader:
            with accelerator.autocast():
                loss, _ = autoencoder_loss(model, batch["pixel_values"], args, perceptual)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"The loss is {loss.item()} at step {step + 1}; lower --learning_rate.")
            accelerator.backward(loss)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            step += 1
            progress.update(1)
            progress.set_postfix(loss=loss.item())
            if step >= args.max_train_steps:
                break
    minutes = (time.perf_counter() - start_time) / 60
    model = accelerator.unwrap_model(model).eval()
    if accelerator.is_main_process:
        measured = measure(model, dataset, args, channels, accelerator.device)
        model.register_to_config(scaling_factor=1.0 / max(measured["latent_std"], 1e-8))
        model.save_pretrained(args.output_dir)
        report = {
            "steps": step,
            "wall_minutes": minutes,
            "scaling_factor": model.config.scaling_factor,
            "perceptual_backbone": args.perceptual_backbone,
            "perceptual_weight": args.perceptual_weight if args.perceptual_backbone else 0.0,
            **measured,
        }
        with open(os.path.join(args.output_dir, "training_report.json"), "w") as file:
            json.dump(report, file, indent=2)
        print(f"Saved the {type(model).__name__} to {args.output_dir}: PSNR {measured['psnr']:.2f} dB, "
              f"scaling factor {model.config.scaling_factor:.4f} ({math.ceil(minutes * 60)} s of training)")  # fmt: skip
    accelerator.end_training()
    return args.output_dir


if __name__ == "__main__":
    parsed = parse_args()
    try:
        main(parsed)
    except (ValueError, FloatingPointError) as error:
        raise SystemExit(f"train_autoencoder.py: error: {error}") from error
