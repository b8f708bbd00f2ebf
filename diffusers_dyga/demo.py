"""An interactive explorer of a pipeline's latent units, as a Gradio app (`pip install -e ".[demo]"`).

    python -m diffusers_dyga.demo PATH_OR_REPO_ID [--examples builtin:shapes --factor_sizes 3 3 3 3 3 3 | FOLDER]

Load an image (or pick an example), move one slider per unit and watch the render follow; every render starts from
the same noise, so a change comes only from the units. Each slider's info lists the unit values of the anchorer's
components (tick "snap to anchors" to render at the nearest one). Below: take units from a donor image, walk one
unit across its range (a strip and a GIF), generate from the anchorer's mixtures, and draw the interchange grid.
A Hugging Face Space runs it with an `app.py` of two lines (README, "Interactive explorer").
"""

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import PIL.Image
import torch

from .explorer import UnitExplorer
from .pipeline import DisentangledDiffusionPipeline


DISPLAY_SIZE = 256


def enlarged(image: PIL.Image.Image) -> PIL.Image.Image:
    """A render enlarged by a whole factor toward `DISPLAY_SIZE` pixels, each pixel a sharp block (nearest
    neighbour), so that a 32x32 render can be seen; shrinking it by the same factor gives the render back exactly."""
    factor = max(1, DISPLAY_SIZE // max(image.size))
    return image.resize((image.width * factor, image.height * factor), PIL.Image.NEAREST)


def example_images(source: str | None, size: int, factor_sizes: list[int] | None = None, count: int = 8) -> list[PIL.Image.Image]:
    """`builtin:<name>` (a built-in grid at the model's size and `factor_sizes`, evenly spaced rows) or a folder of
    images."""
    if not source:
        return []
    if source.startswith("builtin:"):
        from .data import load_builtin

        options = {"factor_sizes": tuple(factor_sizes)} if factor_sizes else {}
        dataset = load_builtin(source.removeprefix("builtin:"), resolution=size, **options)
        return [dataset[int(i)]["image"] for i in torch.linspace(0, len(dataset) - 1, count).long()]
    folder = Path(source)
    if not folder.is_dir():
        raise ValueError(f"--examples must be builtin:<name> or a folder of images, got {source!r}.")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"})
    return [PIL.Image.open(path) for path in paths[:count]]


def shown_errors(function: Callable) -> Callable:
    """Runs `function` and turns a `ValueError` into a message in the page instead of a stack trace."""
    import gradio as gr

    def wrapped(*args):
        try:
            return function(*args)
        except ValueError as error:
            raise gr.Error(str(error)) from error

    wrapped.__name__ = function.__name__
    return wrapped


def build_demo(pipeline: DisentangledDiffusionPipeline | str, examples: list[PIL.Image.Image] | None = None):
    """The Gradio Blocks app over `pipeline` (or the folder / repo id to load it from). API names, for
    `gradio_client`: `/encode`, `/render`, `/swap`, `/traverse`, `/generate`, `/grid`."""
    import gradio as gr

    if not isinstance(pipeline, DisentangledDiffusionPipeline):
        pipeline = DisentangledDiffusionPipeline.from_pretrained(pipeline)
    pipeline.set_progress_bar_config(disable=True)
    explorer = UnitExplorer(pipeline, example_images=examples)
    scales = explorer.scales
    gif_folder = tempfile.mkdtemp(prefix="dyga-demo-")

    def encode(image):
        if image is None:
            raise ValueError("Load an image first.")
        units = explorer.encode(image)
        sliders = [
            gr.Slider(value=value, minimum=min(scale.low, value), maximum=max(scale.high, value))
            for value, scale in zip(units, scales)
        ]
        reconstruction = explorer.render(explorer.units_tensor(units))[0]
        return [*sliders, enlarged(explorer.fit_image(image)), enlarged(reconstruction)]

    def render(*values):
        *units, steps, snap = values
        tensor = explorer.units_tensor(list(units), snap=snap)
        return [enlarged(explorer.render(tensor, int(steps))[0]), *tensor[0].tolist()]

    def swap(*values):
        *units, donor, chosen, steps = values
        if donor is None:
            raise ValueError("Load a donor image to take units from.")
        return enlarged(explorer.swap(list(units), donor, [int(name.split()[-1]) for name in chosen], int(steps)))

    def traverse(*values):
        *units, unit_name, steps = values
        strip, gif = explorer.traverse(list(units), int(unit_name.split()[-1]), num_inference_steps=int(steps))
        path = os.path.join(gif_folder, f"traversal-{unit_name.split()[-1]}.gif")
        Path(path).write_bytes(gif)
        return enlarged(strip), path

    def generate(steps):
        return [enlarged(image) for image in explorer.generate(4, int(steps))]

    def grid(image, donor, steps):
        if image is None or donor is None:
            raise ValueError("The interchange grid needs an image and a donor.")
        return enlarged(explorer.interchange_grid(image, donor, int(steps)))

    unit_names = [f"unit {i}" for i in range(explorer.num_units)]
    image_mode = explorer.mode
    with gr.Blocks(title="diffusers-dyga unit explorer") as demo:
        gr.Markdown(
            f"# Latent units of `{pipeline.name_or_path or 'this pipeline'}`\nLoad an image; move a unit; the render "
            f"follows ({explorer.size}x{explorer.size}; other sizes are resized). Every render starts from the same noise."
        )
        with gr.Row():
            source = gr.Image(type="pil", image_mode=image_mode, label="Image", sources=["upload", "clipboard"], elem_id="source")
            seen = gr.Image(type="pil", format="png", label="What the model reads", interactive=False, elem_id="model-input")
            output = gr.Image(type="pil", format="png", label="Render", interactive=False, elem_id="render")
        if examples:
            gr.Examples([[image] for image in examples], inputs=source, label="Examples")
        with gr.Row():
            steps = gr.Slider(1, 100, value=explorer.num_inference_steps, step=1, label="DDIM steps")
            snap = gr.Checkbox(False, label="Snap to anchors")
        sliders = []
        with gr.Row():
            for name, scale in zip(unit_names, scales):
                anchors = ", ".join(f"{a:.2f}" for a in scale.anchors) or "none (no fitted anchorer)"
                sliders.append(gr.Slider(scale.low, scale.high, value=0.0, step=(scale.high - scale.low) / 200, label=name, info=f"anchors: {anchors}", min_width=160, elem_id=name.replace(" ", "-")))
        source.upload(shown_errors(encode), [source], [*sliders, seen, output], api_name="encode")
        gr.Button("Encode and reconstruct").click(shown_errors(encode), [source], [*sliders, seen, output], api_name=False)
        for slider in sliders:
            slider.release(shown_errors(render), [*sliders, steps, snap], [output, *sliders], api_name=False)
        gr.Button("Render").click(shown_errors(render), [*sliders, steps, snap], [output, *sliders], api_name="render")

        with gr.Tab("Swap from a donor"):
            with gr.Row():
                donor = gr.Image(type="pil", image_mode=image_mode, label="Donor")
                swapped = gr.Image(type="pil", format="png", label="Swapped", interactive=False)
            chosen = gr.CheckboxGroup(unit_names, label="Units to take from the donor")
            gr.Button("Swap").click(shown_errors(swap), [*sliders, donor, chosen, steps], swapped, api_name="swap")
        with gr.Tab("Walk one unit"):
            walked = gr.Dropdown(unit_names, value=unit_names[0], label="Unit")
            strip = gr.Image(type="pil", format="png", label="Traversal", interactive=False)
            gif = gr.File(label="Traversal GIF")
            gr.Button("Walk").click(shown_errors(traverse), [*sliders, walked, steps], [strip, gif], api_name="traverse")
        with gr.Tab("Generate"):
            samples = gr.Gallery(label="Sampled from the anchorer's mixtures", columns=4)
            gr.Button("Generate").click(shown_errors(generate), [steps], samples, api_name="generate")
        with gr.Tab("Interchange grid"):
            grid_image = gr.Image(type="pil", format="png", label="Rows: image, donor; columns: source, donor, reconstruction, each unit swapped", interactive=False)
            gr.Button("Draw").click(shown_errors(grid), [source, donor, steps], grid_image, api_name="grid")
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="Saved pipeline folder or Hub repo id.")
    parser.add_argument("--examples", default=None, help="builtin:<name> or a folder of images to pick from.")
    parser.add_argument("--factor_sizes", type=int, nargs="+", default=None, help="The built-in grid's values per factor.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        pipeline = DisentangledDiffusionPipeline.from_pretrained(args.pipeline)
        examples = example_images(args.examples, pipeline.encoder.config.sample_size, args.factor_sizes)
    except (OSError, ValueError) as error:
        parser.error(f"{args.pipeline}: {error}")
    build_demo(pipeline, examples).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
