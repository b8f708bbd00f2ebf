"""Training-step and sampling throughput of the `tiny` preset as shipped vs the same model with diffusers' defaults.

    python benchmarks/train_speed.py

"Shipped" is the preset as `train_scripts/train.py` builds it: attention heads of 32 channels
(`--attention_head_channels`, 2 heads at 64 channels) and diffusers' own processor. "diffusers defaults" is the same encoder and U-Net
(same block types, same parameter shapes, so the same weights load into both) with `UNet2DConditionModel`'s default
`attention_head_dim=8` (8 heads of 8 channels at 64 channels), once with the processor diffusers installs
(`AttnProcessor2_0`) and once after `set_default_attn_processor()` (`AttnProcessor`). Variants are timed in
alternation, `--repeats` times each, and the median is reported; ratios come from the same run.
"""

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch
from common import print_table, write_json
from diffusers import DDIMScheduler

from diffusers_dyga import DisentangledDiffusionPipeline, SkipDropoutUNet
from diffusers_dyga.training_utils import unit_kurtosis

ROOT = Path(__file__).resolve().parents[1]
DIFFUSERS_DEFAULT_HEADS = 8  # UNet2DConditionModel's default `attention_head_dim`, which it uses as the head count


def load_train_script():
    spec = importlib.util.spec_from_file_location("train", ROOT / "train_scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_variant(train, diffusers_heads: bool, default_processor: bool):
    args = train.parse_args(["--dataset", "builtin:shapes", "--model_config", "tiny"])
    args.vae_scale = 1
    torch.manual_seed(0)
    encoder, unet, _, noise_scheduler = train.build_models(args, in_channels=3, latent_channels=3)
    if diffusers_heads:
        weights = unet.state_dict()
        unet = SkipDropoutUNet.from_config({**unet.config, "attention_head_dim": DIFFUSERS_DEFAULT_HEADS})
        unet.load_state_dict(weights)
    if default_processor:
        unet.set_default_attn_processor()
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(unet.parameters()), lr=args.learning_rate)
    return args, encoder, unet, noise_scheduler, optimizer


def train_steps(variant, images: torch.Tensor, num_steps: int) -> float:
    """Seconds per training step (forward, backward, optimizer), the training script's step (unit whitening and the
    kurtosis term included) without data loading."""
    args, encoder, unet, noise_scheduler, optimizer = variant
    encoder.train()
    unet.train()
    start = time.perf_counter()
    for _ in range(num_steps):
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (images.shape[0],))
        noisy = noise_scheduler.add_noise(images, noise, timesteps)
        encoded = encoder(images)
        prediction = unet(noisy, timesteps, encoder_hidden_states=encoded.tokens).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        if args.unit_kurtosis_weight > 0:
            loss = loss + args.unit_kurtosis_weight * unit_kurtosis(encoded.units)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - start) / num_steps


def sample(variant, images: torch.Tensor, num_inference_steps: int) -> float:
    """Seconds to encode `images` and render one image per source with `num_inference_steps` DDIM steps."""
    _, encoder, unet, noise_scheduler, _ = variant
    pipeline = DisentangledDiffusionPipeline(
        encoder=encoder, unet=unet, scheduler=DDIMScheduler.from_config(noise_scheduler.config)
    )
    pipeline.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    pipeline(images, num_inference_steps=num_inference_steps, generator=torch.Generator().manual_seed(0), output_type="pt")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_steps", type=int, default=5, help="Timed training steps per repeat.")
    parser.add_argument("--sample_batch", type=int, default=16)
    parser.add_argument("--inference_steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "train_speed.json"))
    options = parser.parse_args()

    train = load_train_script()
    variants = {
        "tiny as shipped": build_variant(train, diffusers_heads=False, default_processor=False),
        "diffusers defaults (AttnProcessor2_0)": build_variant(train, diffusers_heads=True, default_processor=False),
        "diffusers defaults + set_default_attn_processor": build_variant(train, diffusers_heads=True, default_processor=True),
    }
    batch_size = variants["tiny as shipped"][0].train_batch_size
    generator = torch.Generator().manual_seed(0)
    train_images = torch.rand(batch_size, 3, 32, 32, generator=generator) * 2 - 1
    sample_images = train_images[: options.sample_batch]

    timings = {name: {"train": [], "sample": []} for name in variants}
    for variant in variants.values():
        train_steps(variant, train_images, 1)
    for _ in range(options.repeats):
        for name, variant in variants.items():
            timings[name]["train"].append(train_steps(variant, train_images, options.train_steps))
            timings[name]["sample"].append(sample(variant, sample_images, options.inference_steps))

    shipped = {kind: statistics.median(values) for kind, values in timings["tiny as shipped"].items()}
    rows, results = [], {}
    for name, kinds in timings.items():
        train_seconds, sample_seconds = statistics.median(kinds["train"]), statistics.median(kinds["sample"])
        results[name] = {
            "train_step_seconds": train_seconds,
            "train_images_per_second": batch_size / train_seconds,
            "sample_seconds": sample_seconds,
            "sample_images_per_second": len(sample_images) / sample_seconds,
            "train_speedup_of_shipped": train_seconds / shipped["train"],
            "sample_speedup_of_shipped": sample_seconds / shipped["sample"],
            "raw": kinds,
        }
        rows.append(
            [
                name,
                batch_size / train_seconds,
                f"{train_seconds / shipped['train']:.2f}x",
                len(sample_images) / sample_seconds,
                f"{sample_seconds / shipped['sample']:.2f}x",
            ]
        )
    print_table(
        [
            "variant",
            f"train images/s (batch {batch_size})",
            "shipped is faster by",
            f"sampling images/s ({options.inference_steps} DDIM steps, batch {len(sample_images)})",
            "shipped is faster by",
        ],
        rows,
    )
    write_json(options.output, {"options": vars(options), "results": results})


if __name__ == "__main__":
    main()
