"""What the training script's data path adds to a training step: batches decoded with PIL per step (`stream`), indexed
from the images decoded once (`decoded`), and one batch already on the device (no data path at all).

    python benchmarks/data_path.py --dataset builtin:shapes --factor_sizes 3 3 3 3 3 3 --resolution 32

Every feed runs the same `tiny` training step (the training script's `training_loss`, backward, optimizer; unit
whitening and the kurtosis term included; DyGA not yet fitted) on batches of `--batch_size`; the feeds are timed in
alternation, `--repeats` times each, and the median seconds per step are reported with each feed's share over the
device-tensor step, and the feed's own seconds per batch timed without the step (at this scale steadier than the
difference of two step times). One-time costs (decoding the
dataset, or loading its cached decoded copy) are reported apart.
"""

import argparse
import statistics
import time
from itertools import cycle
from pathlib import Path

import torch
from common import print_table, write_json
from train_speed import load_train_script

from diffusers_dyga.data import DecodedImages, image_channels, to_model_range
from diffusers_dyga.training_data import TrainingImages, load_training_data


def step(train, args, models: tuple, optimizer, pixels: torch.Tensor) -> None:
    """One training step; `models` is `build_models`' (encoder, U-Net, anchorer, noise scheduler)."""
    train.training_loss(args, *models, pixels).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="builtin:shapes")
    parser.add_argument("--factor_sizes", type=int, nargs="+", default=[3, 3, 3, 3, 3, 3])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per feed and repeat.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "data_path.json"))
    options = parser.parse_args()

    train = load_train_script()
    args = train.parse_args(
        ["--dataset", options.dataset, "--factor_sizes", *map(str, options.factor_sizes), "--resolution", str(options.resolution),
         "--model_config", "tiny", "--train_batch_size", str(options.batch_size)]
    )  # fmt: skip
    args.vae_scale = 1
    dataset = load_training_data(args)
    channels = image_channels(dataset)
    torch.manual_seed(0)
    models = train.build_models(args, channels, channels)
    encoder, unet, _, _ = models
    optimizer = train.build_optimizer(args, encoder, unet)
    encoder.train()
    unet.train()

    path = DecodedImages.cache_path(dataset, options.resolution, channels)
    if path is not None:
        path.unlink(missing_ok=True)
    start = time.perf_counter()
    decoded = DecodedImages.from_dataset(dataset, options.resolution, channels)
    decode_seconds = time.perf_counter() - start
    start = time.perf_counter()
    DecodedImages.from_dataset(dataset, options.resolution, channels)
    reload_seconds = time.perf_counter() - start

    def batches(images: TrainingImages):
        loader = torch.utils.data.DataLoader(
            images.batch_source(), batch_size=options.batch_size, sampler=train.EpochSampler(len(dataset), 0),
            collate_fn=images.collate, drop_last=True,
        )  # fmt: skip
        for batch in cycle(loader):
            pixels = batch["pixel_values"]
            yield to_model_range(pixels) if pixels.dtype == torch.uint8 else pixels

    on_device = next(batches(TrainingImages(dataset, options.resolution, channels, decoded)))
    feeds = {
        "one batch on the device": cycle([on_device]),
        "decoded (index the uint8 tensor)": batches(TrainingImages(dataset, options.resolution, channels, decoded)),
        "stream (PIL per batch)": batches(TrainingImages(dataset, options.resolution, channels)),
    }
    timings = {name: [] for name in feeds}
    for feed in feeds.values():
        step(train, args, models, optimizer, next(feed))
    for _ in range(options.repeats):
        for name, feed in feeds.items():
            start = time.perf_counter()
            for _ in range(options.steps):
                step(train, args, models, optimizer, next(feed))
            timings[name].append((time.perf_counter() - start) / options.steps)

    data_only = {}
    for name, feed in feeds.items():
        start = time.perf_counter()
        for _ in range(options.steps * options.repeats):
            next(feed)
        data_only[name] = (time.perf_counter() - start) / (options.steps * options.repeats)

    reference = statistics.median(timings["one batch on the device"])
    rows, results = [], {}
    for name, values in timings.items():
        seconds = statistics.median(values)
        results[name] = {
            "step_seconds": seconds, "added_share": seconds / reference - 1, "data_seconds": data_only[name], "raw": values
        }  # fmt: skip
        rows.append(
            [name, seconds, f"{100 * (seconds / reference - 1):+.1f}%", options.batch_size / seconds, data_only[name],
             f"{100 * data_only[name] / reference:.2f}%"]
        )  # fmt: skip
    print_table(["feed", "s / step", "step vs. on-device", "images/s", "s / batch, data alone", "data / step"], rows)
    print(f"decoding {len(dataset)} images once: {decode_seconds:.2f} s; loading the cached copy: {reload_seconds:.2f} s")
    write_json(
        options.output,
        {"options": vars(options), "results": results, "decode_seconds": decode_seconds, "reload_seconds": reload_seconds},
    )


if __name__ == "__main__":
    main()
