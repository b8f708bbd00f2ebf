"""Latency of the unit explorer: one slider move (a render from units; the image is encoded once) and one encode.

    python benchmarks/demo_latency.py --pipeline outputs/shapes-tiny --steps 10 25 --moves 20
    python benchmarks/demo_latency.py --pipeline outputs/shapes-tiny --through_app   # needs the `demo` extra

Prints a table and writes `benchmarks/results/demo_latency.json`. Times are wall-clock medians on this machine.
`--through_app` also times the whole round trip a page makes: the app launched in its own process as a user launches it
(`python -m diffusers_dyga.demo`, on 127.0.0.1) and its `/render` endpoint called through `gradio_client` (the returned
PNG is downloaded, as a browser would).
"""

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import PIL.Image
import torch

from diffusers_dyga import DisentangledDiffusionPipeline
from diffusers_dyga.explorer import UnitExplorer


def moved_units(units: list[float], move: int) -> list[float]:
    """The units with one of them (the `move`-th, cyclically) moved by 0.5 toward 0, so it stays inside its slider."""
    moved = list(units)
    moved[move % len(units)] += 0.5 if moved[move % len(units)] < 0 else -0.5
    return moved


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def app_round_trips(pipeline_path: str, image: PIL.Image.Image, num_units: int, steps: list[int], moves: int) -> list[dict]:
    """Launches the app as a user does (`python -m diffusers_dyga.demo`, its own process, on 127.0.0.1), uploads `image`
    to `/encode` (which sets the session's sliders, widened to hold its units), then times `/render` through
    `gradio_client`, `moves` calls per step count."""
    from gradio_client import Client, handle_file

    port = free_port()
    app = subprocess.Popen([sys.executable, "-m", "diffusers_dyga.demo", pipeline_path, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                if app.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"The app did not start (exit code {app.poll()}).") from None
                time.sleep(1)
        with tempfile.TemporaryDirectory() as folder:
            image.save(Path(folder) / "image.png")
            updates = client.predict(handle_file(str(Path(folder) / "image.png")), api_name="/encode")
        units = [update["value"] for update in updates[:num_units]]
        rows = []
        for count in steps:
            client.predict(*units, count, False, api_name="/render")
            move_times = []
            for move in range(moves):
                moved = moved_units(units, move)
                start = time.perf_counter()
                client.predict(*moved, count, False, api_name="/render")
                move_times.append(time.perf_counter() - start)
            rows.append({"steps": count, "median_s": statistics.median(move_times), "max_s": max(move_times), "through_app": True})
        return rows
    finally:
        app.terminate()
        app.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25])
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--through_app", action="store_true", help="Also time /render through a launched app.")
    parser.add_argument("--output", default="benchmarks/results/demo_latency.json")
    args = parser.parse_args()

    pipeline = DisentangledDiffusionPipeline.from_pretrained(args.pipeline)
    pipeline.set_progress_bar_config(disable=True)
    explorer = UnitExplorer(pipeline)
    size, channels = pipeline.encoder.config.sample_size, pipeline.encoder.config.in_channels
    image = pipeline.image_processor.postprocess(torch.rand(1, channels, size, size), output_type="pil")[0]
    encode_times = []
    for _ in range(args.moves):
        start = time.perf_counter()
        units = explorer.encode(image)
        encode_times.append(time.perf_counter() - start)
    rows = []
    for steps in args.steps:
        explorer.render(explorer.units_tensor(units), steps)
        move_times = []
        for move in range(args.moves):
            moved = moved_units(units, move)
            start = time.perf_counter()
            explorer.render(explorer.units_tensor(moved), steps)
            move_times.append(time.perf_counter() - start)
        rows.append({"steps": steps, "median_s": statistics.median(move_times), "max_s": max(move_times)})
    if args.through_app:
        rows += app_round_trips(args.pipeline, image, len(units), args.steps, args.moves)
    print(f"| what | median s | max s |\n|---|---|---|\n| encode one image | {statistics.median(encode_times):.3f} | {max(encode_times):.3f} |")
    for row in rows:
        where = ", through the app" if row.get("through_app") else ""
        print(f"| slider move, {row['steps']} DDIM steps{where} | {row['median_s']:.3f} | {row['max_s']:.3f} |")
    result = {
        "pipeline": args.pipeline,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "encode_median_s": statistics.median(encode_times),
        "moves": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print("wrote", args.output)


if __name__ == "__main__":
    main()
