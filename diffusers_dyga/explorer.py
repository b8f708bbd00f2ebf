"""`UnitExplorer`: what the interactive demo does, without a user interface — encode an image once, then render it
with units moved, swapped or walked, each render from the same seed so that a change comes only from the units."""

import io
from dataclasses import dataclass

import PIL.Image
import torch
from diffusers.utils import make_image_grid

from .pipeline import DisentangledDiffusionPipeline


@dataclass
class UnitScale:
    """A unit's slider: its range and the unit values at which the anchorer's components sit (sorted)."""

    low: float
    high: float
    anchors: list[float]

    def snap(self, value: float) -> float:
        return min(self.anchors, key=lambda anchor: abs(anchor - value)) if self.anchors else value


class UnitExplorer:
    """
    Args:
        pipeline ([`DisentangledDiffusionPipeline`]): the model to explore.
        example_images (`list[PIL.Image.Image]`, *optional*): images whose units set the sliders' ranges when the
            encoder does not whiten its units (whitened units span about [-3, 3]).
        num_inference_steps (`int`, defaults to 10): DDIM steps per render; few, so that a render feels live.
        seed (`int`, defaults to 0): the noise every render starts from.
    """

    def __init__(
        self,
        pipeline: DisentangledDiffusionPipeline,
        example_images: list[PIL.Image.Image] | None = None,
        num_inference_steps: int = 10,
        seed: int = 0,
    ):
        self.pipeline = pipeline
        self.num_inference_steps = num_inference_steps
        self.seed = seed
        config = pipeline.encoder.config
        self.size, self.mode = config.sample_size, "L" if config.in_channels == 1 else "RGB"
        self.scales = self.unit_scales([self.fit_image(image) for image in example_images or []])

    @property
    def num_units(self) -> int:
        return self.pipeline.encoder.config.num_units

    def fit_image(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """The image in the model's mode and size (resized when it differs: the pipeline itself never resizes)."""
        image = image.convert(self.mode)
        return image if image.size == (self.size, self.size) else image.resize((self.size, self.size), PIL.Image.BICUBIC)

    @torch.no_grad()
    def unit_scales(self, example_images: list[PIL.Image.Image], grid_points: int = 801) -> list[UnitScale]:
        """Each unit's range (whitened: [-3, 3]; otherwise the examples' range widened by a quarter on each side),
        and its anchors: along the range, the unit value whose token lies nearest to each component's mean."""
        if self.pipeline.encoder.config.unit_whitening or not example_images:
            lows, highs = torch.full((self.num_units,), -3.0), torch.full((self.num_units,), 3.0)
        else:
            units = self.pipeline.encode(example_images).float().cpu()
            span = (units.max(0).values - units.min(0).values).clamp_min(1e-3)
            lows, highs = units.min(0).values - span / 4, units.max(0).values + span / 4
        steps = torch.linspace(0, 1, grid_points)[:, None]
        grid = lows + steps * (highs - lows)
        anchorer = self.pipeline.anchorer
        anchors: list[list[float]] = [[] for _ in range(self.num_units)]
        if anchorer is not None and anchorer.is_fitted:
            encoder_parameter = next(self.pipeline.encoder.parameters())
            tokens = self.pipeline.encoder.embed(grid.to(encoder_parameter))
            components, nearest = anchorer.assign(tokens).cpu(), anchorer.anchors(tokens)
            distances = (tokens - nearest).norm(dim=-1).float().cpu()
            for unit in range(self.num_units):
                for component in components[:, unit].unique():
                    rows = (components[:, unit] == component).nonzero().flatten()
                    anchors[unit].append(float(grid[rows[distances[rows, unit].argmin()], unit]))
        return [UnitScale(float(low), float(high), sorted(values)) for low, high, values in zip(lows, highs, anchors)]

    def encode(self, image: PIL.Image.Image) -> list[float]:
        """One image -> its `num_units` unit values."""
        return self.pipeline.encode([self.fit_image(image)])[0].float().cpu().tolist()

    def units_tensor(self, units: list[float] | list[list[float]], snap: bool = False) -> torch.Tensor:
        rows = torch.tensor(units, dtype=torch.float32).reshape(-1, self.num_units)
        if snap:
            rows = torch.tensor([[scale.snap(float(v)) for scale, v in zip(self.scales, row)] for row in rows])
        return rows

    def render(self, units: torch.Tensor, num_inference_steps: int | None = None) -> list[PIL.Image.Image]:
        """`(batch, num_units)` units -> renders, each from the explorer's seed."""
        generator = [torch.Generator().manual_seed(self.seed) for _ in range(units.shape[0])]
        return self.pipeline(
            units=units, num_inference_steps=num_inference_steps or self.num_inference_steps, generator=generator
        ).images

    def swap(self, units: list[float], donor: PIL.Image.Image, unit_indices: list[int], num_inference_steps: int | None = None) -> PIL.Image.Image:
        """The image of `units` with the units in `unit_indices` taken from `donor`."""
        if not unit_indices:
            raise ValueError("Pick at least one unit to take from the donor.")
        donor_units = self.pipeline.encode([self.fit_image(donor)]).float().cpu()
        swapped = self.pipeline.swap_units(self.units_tensor(units), donor_units, list(unit_indices))
        return self.render(swapped, num_inference_steps)[0]

    def traverse(
        self, units: list[float], unit_index: int, num_frames: int = 8, num_inference_steps: int | None = None
    ) -> tuple[PIL.Image.Image, bytes]:
        """Unit `unit_index` walked across its range with the others held: a strip and an animated GIF."""
        if not 0 <= unit_index < self.num_units:
            raise ValueError(f"unit_index must be in [0, {self.num_units - 1}], got {unit_index}.")
        scale = self.scales[unit_index]
        values = torch.linspace(scale.low, scale.high, num_frames)
        frames = self.render(self.pipeline.traverse_units(self.units_tensor(units), unit_index, values), num_inference_steps)
        gif = io.BytesIO()
        frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=250, loop=0)
        return make_image_grid(frames, rows=1, cols=len(frames)), gif.getvalue()

    def generate(self, num_images: int = 4, num_inference_steps: int | None = None) -> list[PIL.Image.Image]:
        """New images from tokens sampled from the anchorer's mixtures."""
        return self.pipeline(
            num_images=num_images,
            num_inference_steps=num_inference_steps or self.num_inference_steps,
            generator=torch.Generator().manual_seed(self.seed),
        ).images

    def interchange_grid(self, image: PIL.Image.Image, donor: PIL.Image.Image, num_inference_steps: int | None = None) -> PIL.Image.Image:
        """Rows: the image and the donor, each with every unit taken from the other in turn."""
        return self.pipeline.interchange_grid(
            [self.fit_image(image), self.fit_image(donor)],
            num_inference_steps=num_inference_steps or self.num_inference_steps,
            generator=torch.Generator().manual_seed(self.seed),
        )
