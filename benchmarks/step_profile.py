"""Where a training step of a preset goes: data, forward, backward, optimizer and the amortised DyGA refit, with the
model FLOPs per image and the share of the device's measured matmul peak the step achieves (MFU).

    python benchmarks/step_profile.py --preset tiny
    python benchmarks/step_profile.py --preset paper-pixel --batch_size 8 --steps 3      # the paper's models on pixels
    python benchmarks/step_profile.py --preset paper-pixel --batch_size 128 --dtype bf16  # on a GPU

The step is the training script's for the preset (its encoder, U-Net and anchorer from `train_scripts/train.py` and
its `training_loss`: timestep sampling, prediction target, loss, kurtosis term and DyGA alignment), fed from the decoded-image data path (`TrainingImages`).
Each phase is timed with the device synchronised at its ends, over `--steps` steps after `--warmup` untimed ones.
FLOPs are counted once with `torch.utils.flop_counter.FlopCounterMode` over a forward and backward pass (matmuls and
convolutions, as that counter counts). The peak is a square matmul of `--matmul_size` in the same dtype, timed in the
same run; MFU is the step's model FLOP/s over it. Peak memory: the GPU's allocator peak, or on the CPU the process's
peak resident set (which includes the dataset and Python itself). The `paper` preset trains in a VQ first stage's
latent space and needs its weights (`--vae`); `paper-pixel` is the same models on pixels.
"""

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch
from common import print_table, write_json
from torch.utils.flop_counter import FlopCounterMode
from train_speed import load_train_script

from diffusers_dyga.data import DecodedImages, image_channels
from diffusers_dyga.training_data import TrainingImages, load_training_data

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(size: int, dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """FLOP/s of `(size, size) @ (size, size)` in `dtype`: the best of `repeats` timed products."""
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


class PresetStep:
    """One training step of `args`' models, split into phases; the loss is the training script's `training_loss`."""

    def __init__(self, train, args, encoder, unet, anchorer, noise_scheduler, optimizer, autocast_dtype: torch.dtype | None):
        self.train, self.args, self.encoder, self.unet, self.anchorer = train, args, encoder, unet, anchorer
        self.noise_scheduler, self.optimizer, self.autocast_dtype = noise_scheduler, optimizer, autocast_dtype

    def loss(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(pixels.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            return self.train.training_loss(self.args, self.encoder, self.unet, self.anchorer, self.noise_scheduler, pixels).loss

    def timed(self, images: TrainingImages, rows: list[int], device: torch.device) -> dict[str, float]:
        times = {}
        synchronize(device)
        start = time.perf_counter()
        pixels = images.read(rows, device)
        synchronize(device)
        times["data"], start = time.perf_counter() - start, time.perf_counter()
        loss = self.loss(pixels)
        synchronize(device)
        times["forward"], start = time.perf_counter() - start, time.perf_counter()
        loss.backward()
        synchronize(device)
        times["backward"], start = time.perf_counter() - start, time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad()
        synchronize(device)
        times["optimizer"] = time.perf_counter() - start
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "paper-pixel", "paper"])
    parser.add_argument("--vae", default=None, help="A local VQModel/AutoencoderKL folder (the `paper` preset needs one).")
    parser.add_argument("--dataset", default="builtin:shapes")
    parser.add_argument("--factor_sizes", type=int, nargs="+", default=[3, 3, 3, 3, 3, 3])
    parser.add_argument("--resolution", type=int, default=None, help="Default: the preset's.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="Autocast dtype of the step and the peak.")
    parser.add_argument("--matmul_size", type=int, default=None, help="Default: 4096 on a GPU, 2048 on the CPU.")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "step_profile.json"))
    options = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"

    train = load_train_script()
    argv = ["--dataset", options.dataset, "--factor_sizes", *map(str, options.factor_sizes), "--model_config", options.preset]
    argv += ["--train_batch_size", str(options.batch_size)]
    argv += ["--resolution", str(options.resolution)] if options.resolution else []
    argv += ["--vae", options.vae] if options.vae else []
    args = train.parse_args(argv)
    if args.vae is not None:
        raise SystemExit("The profile times the pixel step; run --preset paper-pixel for the paper's models on pixels.")
    dataset = load_training_data(args)
    channels = image_channels(dataset)
    images = TrainingImages(dataset, args.resolution, channels, DecodedImages.from_dataset(dataset, args.resolution, channels))
    torch.manual_seed(0)
    encoder, unet, anchorer, noise_scheduler = train.build_models(args, channels, channels)
    encoder.to(device).train()
    unet.to(device).train()
    anchorer.to(device)
    optimizer = train.build_optimizer(args, encoder, unet)
    autocast_dtype = None if options.dtype == "fp32" else DTYPES[options.dtype]
    step = PresetStep(train, args, encoder, unet, anchorer, noise_scheduler, optimizer, autocast_dtype)
    generator = torch.Generator().manual_seed(0)

    def batch_rows() -> list[int]:
        return torch.randint(0, len(images), (options.batch_size,), generator=generator).tolist()

    refit_seconds = 0.0
    if args.dyga:
        rows = torch.randperm(len(images), generator=generator)[: min(args.dyga_samples, len(images))].tolist()
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            encoder.eval()
            tokens = torch.cat([encoder(images.read(rows[i : i + 256], device)).tokens for i in range(0, len(rows), 256)])
            encoder.train()
        anchorer.fit(tokens)
        synchronize(device)
        refit_seconds = time.perf_counter() - start

    with FlopCounterMode(display=False) as counter:
        step.loss(images.read(batch_rows(), device)).backward()
    optimizer.zero_grad()
    flops_per_image = counter.get_total_flops() / options.batch_size

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(options.warmup):
        step.timed(images, batch_rows(), device)
    phases = [step.timed(images, batch_rows(), device) for _ in range(options.steps)]
    median = {name: statistics.median(p[name] for p in phases) for name in phases[0]}
    median["DyGA refit, amortised"] = refit_seconds / args.dyga_every if args.dyga else 0.0
    step_seconds = sum(median.values())
    peak = matmul_peak(options.matmul_size or (4096 if device.type == "cuda" else 2048), DTYPES[options.dtype], device)
    achieved = flops_per_image * options.batch_size / step_seconds
    if device.type == "cuda":
        memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        memory_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print_table(["phase", "s / step (median)", "share"], [[name, s, f"{100 * s / step_seconds:.1f}%"] for name, s in median.items()])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    summary = {
        "preset": options.preset, "device": device_name, "dtype": options.dtype, "batch_size": options.batch_size,
        "resolution": args.resolution, "images_per_s": options.batch_size / step_seconds,
        "model_gflops_per_image": flops_per_image / 1e9, "achieved_tflops": achieved / 1e12,
        "matmul_peak_tflops": peak / 1e12, "mfu": achieved / peak, "peak_memory_gib": memory_gib,
        "peak_memory_kind": "GPU allocator" if device.type == "cuda" else "process resident set",
        "data_share": median["data"] / step_seconds,
    }  # fmt: skip
    print_table(list(summary), [list(summary.values())])
    write_json(options.output, {"options": vars(options), "phases_s": median, "raw": phases, **summary})


if __name__ == "__main__":
    main()
