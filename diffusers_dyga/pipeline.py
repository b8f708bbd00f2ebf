"""`DisentangledDiffusionPipeline`: reconstruct, edit and generate images through disentangled latent units."""

import inspect
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import PIL.Image
import diffusers
import torch
from diffusers import AutoencoderKL, VQModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers import SchedulerMixin
from diffusers.utils import BaseOutput, make_image_grid
from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import create_repo, snapshot_download

from .anchorer import DyGAAnchorer
from .encoder import DisentangledEncoder
from .hub_layout import write_hub_layout
from .skip_dropout_unet import SkipDropoutUNet

ImageInput = PIL.Image.Image | list[PIL.Image.Image] | np.ndarray | torch.Tensor
COMPONENT_CLASSES = {"encoder": DisentangledEncoder, "unet": SkipDropoutUNet, "anchorer": DyGAAnchorer}


def diffusers_class(spec: list, name: str, bases: tuple[type, ...]) -> type:
    """The diffusers class a `model_index.json` entry `[library, class_name]` names for component `name`."""
    library, class_name = spec
    load_class = getattr(diffusers, class_name, None) if library == "diffusers" else None
    if not (isinstance(load_class, type) and issubclass(load_class, bases)):
        expected = " or ".join(base.__name__ for base in bases)
        raise ValueError(f"model_index.json names {library}.{class_name} as '{name}', which is not a diffusers {expected}.")
    return load_class


def checkpoint_file_patterns(variant: str | None, use_safetensors: bool | None) -> list[str]:
    """What a Hub download of a saved pipeline fetches: the index, configs, and the weights of one variant
    (diffusers' names: `diffusion_pytorch_model[.variant].safetensors`, its shards and shard index)."""
    infix = f".{variant}" if variant else ""
    extensions = ["safetensors"] + (["bin"] if use_safetensors is False else [])
    weights = [f"*/diffusion_pytorch_model{infix}.{ext}" for ext in extensions]
    weights += [f"*/diffusion_pytorch_model{infix}-*-of-*.{ext}" for ext in extensions]
    weights += [f"*/diffusion_pytorch_model.{ext}.index{infix}.json" for ext in extensions]
    return ["model_index.json", "*/config.json", "scheduler/scheduler_config.json", *weights]


def has_weights(component_folder: str, variant: str | None) -> bool:
    """Whether a component folder holds weights of `variant` (whole, or a shard index) in a format diffusers loads."""
    infix = f".{variant}" if variant else ""
    names = set(os.listdir(component_folder))
    return any(
        f"diffusion_pytorch_model{infix}.{ext}" in names or f"diffusion_pytorch_model.{ext}.index{infix}.json" in names
        for ext in ("safetensors", "bin")
    )


@dataclass
class DisentangledDiffusionPipelineOutput(BaseOutput):
    """
    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the rendered images.
        units (`torch.Tensor` of shape `(batch, num_units)`, *optional*): the units the images were rendered from;
            `None` when the tokens were sampled from the anchorer (generation), which holds no unit values.
        tokens (`torch.Tensor` of shape `(batch, num_units, unit_dim)`): the conditioning the U-Net read.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    units: torch.Tensor | None
    tokens: torch.Tensor


@contextmanager
def eval_mode(*modules: torch.nn.Module | None) -> Iterator[None]:
    """Puts modules in eval mode (Skip Dropout off) and restores their previous mode on exit."""
    present = [module for module in modules if module is not None]
    was_training = [module.training for module in present]
    for module in present:
        module.eval()
    try:
        yield
    finally:
        for module, training in zip(present, was_training):
            module.train(training)


def check_generators(generator: torch.Generator | list[torch.Generator] | None, batch_size: int) -> None:
    """diffusers' contract: a list of generators holds one generator per rendered image."""
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(
            f"You have passed a list of {len(generator)} generators for {batch_size} images to render; pass one per "
            "image (inputs times num_images) or a single generator."
        )


def check_guidance_scale(guidance_scale: float) -> None:
    if guidance_scale < 1:
        raise ValueError(f"guidance_scale must be at least 1 (1: no guidance), got {guidance_scale}.")


class DisentangledDiffusionPipeline(DiffusionPipeline):
    """
    Diffusion decoder conditioned on the disentangled units of a [`DisentangledEncoder`].

    `__call__` renders images from the units of given images (reconstruction), from given units (edits made with
    [`~DisentangledDiffusionPipeline.swap_units`] or [`~DisentangledDiffusionPipeline.traverse_units`]), or, with
    neither, from tokens sampled from the anchorer's mixtures (generation).

    Args:
        encoder ([`DisentangledEncoder`]): images -> units -> tokens.
        unet ([`SkipDropoutUNet`]): the denoiser, cross-attending to the tokens.
        scheduler ([`SchedulerMixin`]): e.g. [`DDIMScheduler`].
        anchorer ([`DyGAAnchorer`], *optional*): when fitted, tokens are aligned to their anchors and generation
            samples from its mixtures.
        vae ([`AutoencoderKL`] or [`VQModel`], *optional*): for latent diffusion; pixel space when absent.
        guidance_scale (`float`, defaults to 1.0): the classifier-free guidance scale used when `__call__` is given
            none. Guidance needs a U-Net trained with token dropout (the training script's `--token_dropout`), which
            sets this to the scale it validated with; 1 renders without guidance.
    """

    model_cpu_offload_seq = "encoder->unet->vae"
    _optional_components = ["anchorer", "vae"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        encoder: DisentangledEncoder,
        unet: SkipDropoutUNet,
        scheduler: SchedulerMixin,
        anchorer: DyGAAnchorer | None = None,
        vae: AutoencoderKL | VQModel | None = None,
        guidance_scale: float = 1.0,
    ):
        super().__init__()
        check_guidance_scale(guidance_scale)
        if unet.config.cross_attention_dim != encoder.config.unit_dim:
            raise ValueError(
                f"The U-Net's cross_attention_dim ({unet.config.cross_attention_dim}) must equal the encoder's "
                f"unit_dim ({encoder.config.unit_dim})."
            )
        if anchorer is not None and (anchorer.config.num_units, anchorer.config.unit_dim) != (
            encoder.config.num_units,
            encoder.config.unit_dim,
        ):
            raise ValueError(
                f"The anchorer's (num_units, unit_dim) = ({anchorer.config.num_units}, {anchorer.config.unit_dim}) "
                f"must match the encoder's ({encoder.config.num_units}, {encoder.config.unit_dim})."
            )
        expected_channels = vae.config.latent_channels if vae is not None else encoder.config.in_channels
        if unet.config.in_channels != expected_channels:
            source = "the VAE's latent_channels" if vae is not None else "the encoder's in_channels"
            raise ValueError(
                f"The U-Net's in_channels ({unet.config.in_channels}) must equal {source} ({expected_channels})."
            )
        self.register_modules(encoder=encoder, unet=unet, scheduler=scheduler, anchorer=anchorer, vae=vae)
        self.register_to_config(guidance_scale=guidance_scale)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=False)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "DisentangledDiffusionPipeline":
        """Loads from a local folder or a Hub repo id, running no code from the folder or repo.

        Accepts diffusers' `revision`, `cache_dir`, `token`, `local_files_only`, `force_download` (repo ids only),
        `variant` (only that variant's weights are downloaded), `torch_dtype`, `use_safetensors`,
        `low_cpu_mem_usage`, and components to use instead of the saved ones (`scheduler=DDIMScheduler(...)`).
        """
        components = {name: kwargs.pop(name) for name in ("encoder", "unet", "scheduler", "anchorer", "vae") if name in kwargs}
        download_kwargs = {name: kwargs.pop(name) for name in ("revision", "cache_dir", "token", "local_files_only", "force_download") if name in kwargs}
        load_kwargs = {name: kwargs.pop(name) for name in ("torch_dtype", "variant", "use_safetensors", "low_cpu_mem_usage") if name in kwargs}
        guidance_scale = kwargs.pop("guidance_scale", None)
        if kwargs:
            raise TypeError(f"DisentangledDiffusionPipeline.from_pretrained got unexpected arguments: {', '.join(sorted(kwargs))}.")
        folder = str(pretrained_model_name_or_path)
        from_hub = not os.path.isdir(folder)
        if from_hub:
            folder = snapshot_download(
                folder,
                allow_patterns=checkpoint_file_patterns(load_kwargs.get("variant"), load_kwargs.get("use_safetensors")),
                **download_kwargs,
            )
        try:
            cls.check_checkpoint(folder, variant=load_kwargs.get("variant"), skip=set(components))
        except ValueError as error:
            if not from_hub:
                raise
            raise ValueError(
                f"The download of {pretrained_model_name_or_path} in {folder} is incomplete or not a saved "
                f"DisentangledDiffusionPipeline: {error} Load it again with a connection to finish the download "
                "(force_download=True fetches every file again)."
            ) from error
        index = cls.load_config(folder)
        for name, load_class in COMPONENT_CLASSES.items():
            library, class_name = index.get(name, [None, None])
            if name in components or class_name is None:
                continue
            if class_name != load_class.__name__:
                raise ValueError(f"{folder}/model_index.json names {library}.{class_name} as '{name}'; this pipeline loads a {load_class.__name__} there.")
            components[name] = load_class.from_pretrained(folder, subfolder=name, **load_kwargs)
        if "vae" not in components and index.get("vae", [None, None])[1] is not None:
            components["vae"] = diffusers_class(index["vae"], "vae", (AutoencoderKL, VQModel)).from_pretrained(
                folder, subfolder="vae", **load_kwargs
            )
        if "scheduler" not in components:
            components["scheduler"] = diffusers_class(index["scheduler"], "scheduler", (SchedulerMixin,)).from_pretrained(
                folder, subfolder="scheduler"
            )
        pipeline = cls(**components, guidance_scale=index.get("guidance_scale", 1.0) if guidance_scale is None else guidance_scale)
        pipeline.register_to_config(_name_or_path=folder)
        return pipeline

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ) -> None:
        """diffusers' `save_pretrained`, plus the module files that let plain diffusers load the folder or its Hub
        repo (see `diffusers_dyga.hub_layout`). With `push_to_hub=True` the folder is uploaded to `repo_id` (default:
        the folder's name) as diffusers does, with `commit_message`, `private`, `create_pr` and `token`."""
        super().save_pretrained(save_directory, safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size)
        write_hub_layout(save_directory)
        if push_to_hub:
            token = kwargs.pop("token", None)
            repo_id = kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            repo_id = create_repo(repo_id, exist_ok=True, private=kwargs.pop("private", None), token=token).repo_id
            model_card = populate_model_card(load_or_create_model_card(repo_id, token=token, is_pipeline=True))
            model_card.save(os.path.join(save_directory, "README.md"))
            self._upload_folder(
                save_directory, repo_id, token=token, commit_message=kwargs.pop("commit_message", None), create_pr=kwargs.pop("create_pr", False)
            )

    @staticmethod
    def check_checkpoint(folder: str | os.PathLike, variant: str | None = None, skip: set[str] = frozenset()) -> None:
        """Raises a `ValueError` naming what is missing when `folder` is not a complete saved pipeline (components
        named in `skip` are passed in by the caller and not checked)."""
        index_path = os.path.join(folder, "model_index.json")
        if not os.path.isfile(index_path):
            raise ValueError(f"{folder} is not a saved DisentangledDiffusionPipeline: it has no model_index.json.")
        try:
            with open(index_path) as index_file:
                index = json.load(index_file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{index_path} is corrupt: {error}.") from error
        listed = {name for name, spec in index.items() if not name.startswith("_") and isinstance(spec, list) and spec[0] is not None}
        for name in sorted(listed - skip):
            component = os.path.join(folder, name)
            if not os.path.isdir(component) or not any(f.endswith(".json") for f in os.listdir(component)):
                raise ValueError(f"The saved pipeline in {folder} lacks its '{name}' component (no config in {component}).")
            if name != "scheduler" and not has_weights(component, variant):
                which = f"'{variant}' weights" if variant else "weights"
                raise ValueError(f"The saved pipeline in {folder} has no {which} for its '{name}' component in {component}.")
        for name in ("encoder", "unet", "anchorer", "vae"):
            if name not in listed and os.path.isfile(os.path.join(folder, name, "config.json")):
                raise ValueError(
                    f"{folder} has a '{name}' folder that its model_index.json does not list: the index and the "
                    "components come from different saves."
                )

    # ------------------------------------------------------------------ units

    def preprocess(self, images: ImageInput) -> torch.Tensor:
        """PIL images, or `(H, W, C)` / `(B, H, W, C)` arrays in [0, 1] or uint8, or `(B, C, H, W)` / `(C, H, W)`
        tensors already in the model's [-1, 1] range -> `(B, C, H, W)` tensor in [-1, 1] on the encoder's device.
        No resizing: a wrong size raises, and so do uint8 tensors, values outside [-1, 1], NaN and empty batches."""
        if isinstance(images, torch.Tensor):
            pixels = images.unsqueeze(0) if images.ndim == 3 else images
            if not pixels.is_floating_point():
                raise ValueError(
                    f"Image tensors must be floats in [-1, 1], got {pixels.dtype}; convert 0..255 values with "
                    "`images.float() / 127.5 - 1`."
                )
        else:
            if isinstance(images, np.ndarray) and images.dtype == np.uint8:
                images = images.astype(np.float32) / 255.0
            pixels = self.image_processor.preprocess(images)
        self.encoder.check_images(pixels)
        if pixels.shape[0] == 0:
            raise ValueError("The batch of images is empty.")
        if not torch.isfinite(pixels).all():
            raise ValueError("The images contain NaN or infinite values.")
        if pixels.abs().max() > 1 + 1e-3:
            raise ValueError(
                f"Image tensors must be in [-1, 1], got values up to {pixels.abs().max().item():g}; 0..255 images "
                "need `/ 127.5 - 1`, 0..1 images `* 2 - 1`."
            )
        return pixels.to(device=self._execution_device, dtype=self.encoder.dtype)

    @torch.no_grad()
    def encode(self, images: ImageInput) -> torch.Tensor:
        """Images -> units `(batch, num_units)`, with the encoder in eval mode."""
        with eval_mode(self.encoder):
            return self.encoder.encode(self.preprocess(images))

    def condition(self, units: torch.Tensor) -> torch.Tensor:
        """Units `(batch, num_units)` -> the tokens `(batch, num_units, unit_dim)` the U-Net reads (anchored when
        the anchorer is fitted)."""
        tokens = self.encoder.embed(units.to(device=self._execution_device, dtype=self.encoder.dtype))
        if self.anchorer is not None and self.anchorer.is_fitted:
            tokens = self.anchorer.align(tokens)
        return tokens

    @staticmethod
    def swap_units(units: torch.Tensor, donor_units: torch.Tensor, unit_indices: int | list[int]) -> torch.Tensor:
        """Units `(batch, num_units)` with the units at `unit_indices` taken from `donor_units` (`(batch, num_units)`
        or `(1, num_units)`): latent interchange."""
        if donor_units.shape[-1] != units.shape[-1]:
            raise ValueError(f"donor_units has {donor_units.shape[-1]} units, units has {units.shape[-1]}.")
        indices = [unit_indices] if isinstance(unit_indices, int) else list(unit_indices)
        swapped = units.clone()
        swapped[:, indices] = donor_units.expand_as(units)[:, indices].to(units.dtype)
        return swapped

    @torch.no_grad()
    def unit_groups(self, images: ImageInput, threshold: float = 0.25) -> list[list[int]]:
        """The units that hold one attribute together, read from the fitted anchorer on `images` (a few hundred
        images of the training data): see [`DyGAAnchorer.unit_groups`]. Pass a group to `swap_units` or as an entry
        of `interchange_grid`'s `unit_indices` to edit its attribute."""
        if self.anchorer is None or not self.anchorer.is_fitted:
            raise ValueError(
                f"Unit groups are read from the anchorer, which this pipeline {'lacks' if self.anchorer is None else 'has not fitted'}."
            )
        units = self.encode(images)
        tokens = self.encoder.embed(units)
        return self.anchorer.unit_groups(tokens.float(), threshold=threshold)

    @staticmethod
    def traverse_units(units: torch.Tensor, unit_index: int, values: torch.Tensor | list[float]) -> torch.Tensor:
        """Sweeps one unit: units `(batch, num_units)` and `num_values` values -> `(batch * num_values, num_units)`,
        source-major (all values of source 0 first)."""
        if not -units.shape[-1] <= unit_index < units.shape[-1]:
            raise ValueError(f"unit_index {unit_index} is out of range for {units.shape[-1]} units.")
        values = torch.as_tensor(values, dtype=units.dtype, device=units.device)
        swept = units.repeat_interleave(len(values), dim=0)
        swept[:, unit_index] = values.repeat(units.shape[0])
        return swept

    # ------------------------------------------------------------------ rendering

    def prepare_extra_step_kwargs(self, generator, eta: float) -> dict:
        step_parameters = set(inspect.signature(self.scheduler.step).parameters)
        extra = {}
        if "eta" in step_parameters:
            extra["eta"] = eta
        if "generator" in step_parameters:
            extra["generator"] = generator
        return extra

    def __call__(
        self,
        images: ImageInput | None = None,
        units: torch.Tensor | None = None,
        num_images: int = 1,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        guidance_scale: float | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["DisentangledDiffusionPipeline", int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ) -> DisentangledDiffusionPipelineOutput | tuple:
        """
        Renders images from the units of `images`, from `units` `(batch, num_units)`, or, with neither, from
        `num_images` token sets sampled from the fitted anchorer. With images or units, `num_images` renders are
        made per input.

        `guidance_scale` (default: the pipeline's `config.guidance_scale`) above 1 applies classifier-free guidance:
        each step's prediction is `uncond + guidance_scale * (cond - uncond)`, where `uncond` reads all-zero tokens,
        the null condition the U-Net learned under token dropout.

        As in diffusers pipelines: `latents` `(batch, channels, size, size)` replaces the initial noise (one per
        rendered image); `callback_on_step_end(pipe, step, timestep, callback_kwargs)` runs after every denoising step
        with the tensors named in `callback_on_step_end_tensor_inputs` (of `_callback_tensor_inputs`) and may return
        replacements for them.

        Returns a [`DisentangledDiffusionPipelineOutput`] (images, units, tokens), or a tuple of them.
        """
        guidance_scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        check_guidance_scale(guidance_scale)
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {sorted(unknown)} are not among {self._callback_tensor_inputs}."
            )
        with torch.no_grad(), eval_mode(self.encoder, self.unet, self.vae):
            return self._render(
                images, units, num_images, num_inference_steps, generator, eta, guidance_scale, latents, output_type,
                return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs,
            )  # fmt: skip

    def _render(
        self, images, units, num_images, num_inference_steps, generator, eta, guidance_scale, latents, output_type,
        return_dict, callback_on_step_end, callback_tensor_inputs,
    ):  # fmt: skip
        if images is not None and units is not None:
            raise ValueError("Pass either `images` or `units`, not both.")
        if num_inference_steps < 1 or num_images < 1:
            raise ValueError("num_inference_steps and num_images must be positive.")
        if images is not None:
            units = self.encode(images)
        if units is not None:
            self.encoder.check_units(units)
            if units.shape[0] == 0 or not torch.isfinite(units).all():
                raise ValueError("`units` must be a non-empty batch of finite values.")
            units = units.repeat_interleave(num_images, dim=0)
            check_generators(generator, units.shape[0])
            tokens = self.condition(units)
        else:
            if self.anchorer is None or not self.anchorer.is_fitted:
                raise ValueError(
                    "Generation without images or units samples from the anchorer, which this pipeline "
                    f"{'lacks' if self.anchorer is None else 'has not fitted'}; pass `images` or `units`."
                )
            check_generators(generator, num_images)
            if isinstance(generator, list):
                tokens = torch.cat([self.anchorer.sample(1, generator=g) for g in generator])
            else:
                tokens = self.anchorer.sample(num_images, generator=generator)
            tokens = tokens.to(self._execution_device)
        batch_size = tokens.shape[0]
        tokens = tokens.to(self.unet.dtype)

        size = self.unet.config.sample_size
        shape = (batch_size, self.unet.config.in_channels, size, size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (one per rendered image), got {tuple(latents.shape)}.")
        else:
            latents = latents.to(device=self._execution_device, dtype=self.unet.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        guided = guidance_scale > 1
        conditioning = torch.cat([torch.zeros_like(tokens), tokens]) if guided else tokens
        for step, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = self.scheduler.scale_model_input(latents, t)
            model_input = torch.cat([model_input] * 2) if guided else model_input
            noise_pred = self.unet(model_input, t, encoder_hidden_states=conditioning).sample
            if guided:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs).prev_sample
            if callback_on_step_end is not None:
                callback_kwargs = {name: {"latents": latents}[name] for name in callback_tensor_inputs}
                latents = callback_on_step_end(self, step, t, callback_kwargs).pop("latents", latents)

        if self.vae is not None:
            scaling = getattr(self.vae.config, "scaling_factor", 1.0) or 1.0
            pixels = self.vae.decode(latents.to(self.vae.dtype) / scaling).sample
        else:
            pixels = latents
        rendered = self.image_processor.postprocess(pixels.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (rendered, units, tokens)
        return DisentangledDiffusionPipelineOutput(images=rendered, units=units, tokens=tokens)

    def interchange_grid(
        self,
        images: ImageInput,
        donor_images: ImageInput | None = None,
        unit_indices: list[int | list[int]] | None = None,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
    ) -> PIL.Image.Image:
        """
        A latent-interchange grid. Rows: source images. Columns: the source, its donor, the source's
        reconstruction, then one column per entry of `unit_indices` (default: every unit) with that unit, or that
        list of units (a group from [`~DisentangledDiffusionPipeline.unit_groups`]), swapped in from the donor.
        Donors default to the next source (cyclically).
        """
        source_units = self.encode(images)
        donor_units = source_units.roll(-1, dims=0) if donor_images is None else self.encode(donor_images)
        if donor_units.shape[0] != source_units.shape[0]:
            raise ValueError(f"Got {source_units.shape[0]} sources but {donor_units.shape[0]} donors.")
        indices = list(range(source_units.shape[1])) if unit_indices is None else list(unit_indices)
        swaps = [self.swap_units(source_units, donor_units, i) for i in indices]
        grid_units = torch.stack([source_units] + swaps, dim=1).flatten(0, 1)
        renders = self(units=grid_units, num_inference_steps=num_inference_steps, generator=generator).images

        source_pixels = self.preprocess(images)
        donor_pixels = source_pixels.roll(-1, dims=0) if donor_images is None else self.preprocess(donor_images)
        sources = self.image_processor.postprocess(source_pixels.float().cpu(), output_type="pil")
        donors = self.image_processor.postprocess(donor_pixels.float().cpu(), output_type="pil")
        per_row = len(indices) + 1
        cells = []
        for row, (source, donor) in enumerate(zip(sources, donors)):
            cells += [source, donor] + renders[row * per_row : (row + 1) * per_row]
        return make_image_grid(cells, rows=len(sources), cols=per_row + 2)
