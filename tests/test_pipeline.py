import json
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, VQModel

from diffusers_dyga import DisentangledDiffusionPipeline, DisentangledEncoder, DyGAAnchorer
from diffusers_dyga.pipeline import eval_mode

from .tiny import NUM_UNITS, SIZE, UNIT_DIM, random_images, tiny_encoder, tiny_pipeline, tiny_unet

PIPELINE_FILE = Path(__file__).resolve().parents[1] / "pipelines" / "disentangled_diffusion.py"


def render(pipe, **kwargs):
    return pipe(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs)


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline()


def test_reconstruction_edit_and_generation_shapes(pipeline):
    images = random_images(3)
    out = render(pipeline, images=images, num_images=2)
    assert out.images.shape == (6, 3, SIZE, SIZE)
    assert out.units.shape == (6, NUM_UNITS) and out.tokens.shape == (6, NUM_UNITS, UNIT_DIM)
    assert out.images.min() >= 0 and out.images.max() <= 1
    edited = render(pipeline, units=out.units[:2])
    assert edited.images.shape == (2, 3, SIZE, SIZE)
    generated = render(pipeline, num_images=5)
    assert generated.images.shape == (5, 3, SIZE, SIZE) and generated.units is None
    assert generated.tokens.shape == (5, NUM_UNITS, UNIT_DIM)


def test_output_types_and_tuple(pipeline):
    units = pipeline.encode(random_images(2))
    pil = pipeline(units=units, num_inference_steps=2).images
    assert len(pil) == 2 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (SIZE, SIZE)
    array = pipeline(units=units, num_inference_steps=2, output_type="np").images
    assert isinstance(array, np.ndarray) and array.shape == (2, SIZE, SIZE, 3)
    images, used_units, tokens = pipeline(units=units, num_inference_steps=2, return_dict=False)
    assert torch.equal(used_units, units)


def test_reconstruction_uses_anchored_tokens(pipeline):
    units = pipeline.encode(random_images(2))
    tokens = render(pipeline, units=units).tokens
    torch.testing.assert_close(tokens, pipeline.anchorer.align(pipeline.encoder.embed(units)))
    assert not torch.allclose(tokens, pipeline.encoder.embed(units))


def test_accepts_pil_numpy_and_tensors(pipeline):
    tensor = random_images(2)
    array = ((tensor.permute(0, 2, 3, 1).numpy() + 1) / 2 * 255).round().astype(np.uint8)
    pil = [PIL.Image.fromarray(a) for a in array]
    from_tensor = pipeline.encode(torch.from_numpy(array).permute(0, 3, 1, 2).float() / 127.5 - 1)
    for images in (pil, array, array.astype(np.float32) / 255, pil[0], torch.from_numpy(array[0]).permute(2, 0, 1) / 127.5 - 1):
        units = pipeline.encode(images)
        torch.testing.assert_close(units, from_tensor[: len(units)], atol=1e-5, rtol=0)


def test_wrong_image_size_raises(pipeline):
    with pytest.raises(ValueError, match=rf"\(batch, 3, {SIZE}, {SIZE}\)"):
        pipeline.encode(PIL.Image.new("RGB", (SIZE * 2, SIZE * 2)))
    with pytest.raises(ValueError, match=rf"\(batch, {NUM_UNITS}\)"):
        pipeline(units=torch.zeros(2, NUM_UNITS + 1), num_inference_steps=1)
    with pytest.raises(ValueError, match="either"):
        pipeline(images=random_images(1), units=torch.zeros(1, NUM_UNITS))


def test_bad_image_values_and_empty_batches_raise(pipeline):
    images = random_images(2)
    with pytest.raises(ValueError, match="floats in \\[-1, 1\\], got torch.uint8"):
        pipeline.encode(((images + 1) * 127.5).to(torch.uint8))
    with pytest.raises(ValueError, match="got values up to 255"):
        pipeline.encode(torch.full_like(images, 255.0))
    with pytest.raises(ValueError, match="NaN or infinite"):
        pipeline.encode(torch.where(images > 0.9, torch.nan, images))
    with pytest.raises(ValueError, match="empty"):
        pipeline.encode(images[:0])
    with pytest.raises(ValueError, match="finite"):
        pipeline(units=torch.full((1, NUM_UNITS), torch.nan), num_inference_steps=1)


def test_generator_lists_hold_one_generator_per_image(pipeline):
    units = pipeline.encode(random_images(2))
    for count in (1, 3):
        with pytest.raises(ValueError, match=f"list of {count} generators for 2 images"):
            pipeline(units=units, num_inference_steps=1, generator=[torch.Generator().manual_seed(i) for i in range(count)])
    with pytest.raises(ValueError, match="list of 2 generators for 4 images"):
        pipeline(num_images=4, num_inference_steps=1, generator=[torch.Generator().manual_seed(i) for i in range(2)])

    def generate(seeds):
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        return pipeline(num_images=len(seeds), num_inference_steps=2, generator=generators, output_type="pt")

    pair, alone = generate([0, 1]), generate([1])
    assert not torch.allclose(pair.tokens[0], pair.tokens[1])
    torch.testing.assert_close(pair.tokens[1], alone.tokens[0])
    torch.testing.assert_close(pair.images[1], alone.images[0])


def test_latents_and_callback_on_step_end_follow_the_diffusers_contract(pipeline):
    units = pipeline.encode(random_images(2))
    latents = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    given = pipeline(units=units, num_inference_steps=3, latents=latents, output_type="pt")
    same_noise = pipeline(units=units, num_inference_steps=3, generator=torch.Generator().manual_seed(5), output_type="pt")
    torch.testing.assert_close(given.images, same_noise.images)
    with pytest.raises(ValueError, match=r"latents must have shape \(2, 3"):
        pipeline(units=units, num_inference_steps=1, latents=latents[:1])
    seen = []

    def zero_after_second_step(pipe, step, timestep, callback_kwargs):
        seen.append((step, int(timestep), callback_kwargs["latents"].shape))
        return {"latents": torch.zeros_like(callback_kwargs["latents"])} if step == 1 else {}

    zeroed = pipeline(
        units=units, num_inference_steps=3, latents=latents, output_type="pt", callback_on_step_end=zero_after_second_step
    )
    assert [step for step, _, _ in seen] == [0, 1, 2] and seen[0][2] == (2, 3, SIZE, SIZE)
    assert not torch.allclose(zeroed.images, given.images)
    with pytest.raises(ValueError, match="not among"):
        pipeline(units=units, num_inference_steps=1, callback_on_step_end=zero_after_second_step,
                 callback_on_step_end_tensor_inputs=["noise_pred"])  # fmt: skip


def test_generation_needs_a_fitted_anchorer():
    with pytest.raises(ValueError, match="has not fitted"):
        tiny_pipeline(fit_anchorer=False)(num_inference_steps=1)
    pipe = tiny_pipeline(fit_anchorer=False)
    pipe.anchorer = None
    with pytest.raises(ValueError, match="lacks"):
        pipe(num_inference_steps=1)


def test_mismatched_components_raise():
    scheduler = DDIMScheduler(num_train_timesteps=10)
    with pytest.raises(ValueError, match="cross_attention_dim"):
        DisentangledDiffusionPipeline(tiny_encoder(unit_dim=UNIT_DIM * 2), tiny_unet(), scheduler)
    with pytest.raises(ValueError, match="anchorer"):
        DisentangledDiffusionPipeline(tiny_encoder(), tiny_unet(), scheduler, DyGAAnchorer(num_units=3, unit_dim=UNIT_DIM))
    with pytest.raises(ValueError, match="in_channels"):
        DisentangledDiffusionPipeline(tiny_encoder(in_channels=1), tiny_unet(), scheduler)


def test_rendering_disables_skip_dropout_and_restores_training_mode():
    pipe = tiny_pipeline()
    pipe.unet.train()
    pipe.unet.config.skip_dropout = 0.9
    first = render(pipe, images=random_images(2)).images
    second = render(pipe, images=random_images(2)).images
    assert torch.equal(first, second)
    assert pipe.unet.training


def test_swap_and_traverse_units():
    units = torch.arange(8.0).reshape(2, 4)
    donors = -torch.arange(8.0).reshape(2, 4) - 1
    swapped = DisentangledDiffusionPipeline.swap_units(units, donors, [1, 3])
    assert swapped.tolist() == [[0, -2, 2, -4], [4, -6, 6, -8]]
    assert DisentangledDiffusionPipeline.swap_units(units, donors[:1], 0)[:, 0].tolist() == [-1, -1]
    swept = DisentangledDiffusionPipeline.traverse_units(units, 2, [10.0, 20.0, 30.0])
    assert swept.shape == (6, 4)
    assert swept[:, 2].tolist() == [10, 20, 30, 10, 20, 30]
    assert torch.equal(swept[:3, [0, 1, 3]], units[:1, [0, 1, 3]].expand(3, -1))
    with pytest.raises(ValueError, match="out of range"):
        DisentangledDiffusionPipeline.traverse_units(units, 4, [0.0])
    with pytest.raises(ValueError, match="donor_units"):
        DisentangledDiffusionPipeline.swap_units(units, donors[:, :3], 0)


def test_interchange_grid(pipeline):
    grid = pipeline.interchange_grid(random_images(3), unit_indices=[0, 2], num_inference_steps=2)
    assert grid.size == ((2 + 1 + 2) * SIZE, 3 * SIZE)
    full = pipeline.interchange_grid(random_images(2), donor_images=random_images(2, seed=5), num_inference_steps=1)
    assert full.size == ((2 + 1 + NUM_UNITS) * SIZE, 2 * SIZE)


def test_a_group_column_swaps_its_units_together(pipeline):
    images, donors = random_images(2), random_images(2, seed=5)
    generator = torch.Generator().manual_seed(0)
    grid = pipeline.interchange_grid(images, donor_images=donors, unit_indices=[[0, 1]], num_inference_steps=2, generator=generator)
    assert grid.size == ((2 + 1 + 1) * SIZE, 2 * SIZE)
    swapped = pipeline.swap_units(pipeline.encode(images), pipeline.encode(donors), [0, 1])
    renders = pipeline(
        units=torch.stack([pipeline.encode(images), swapped], 1).flatten(0, 1),
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images
    cell = np.asarray(grid)[:SIZE, 3 * SIZE :]
    np.testing.assert_array_equal(cell, np.asarray(renders[1]))


def test_unit_groups_partition_the_units_and_need_a_fitted_anchorer(pipeline):
    groups = pipeline.unit_groups(random_images(64))
    assert sorted(unit for group in groups for unit in group) == list(range(NUM_UNITS))
    unfitted = DisentangledDiffusionPipeline(
        encoder=pipeline.encoder, unet=pipeline.unet, scheduler=pipeline.scheduler,
        anchorer=DyGAAnchorer(num_units=NUM_UNITS, unit_dim=UNIT_DIM),
    )  # fmt: skip
    with pytest.raises(ValueError, match="has not fitted"):
        unfitted.unit_groups(random_images(4))
    without = DisentangledDiffusionPipeline(encoder=pipeline.encoder, unet=pipeline.unet, scheduler=pipeline.scheduler)
    with pytest.raises(ValueError, match="lacks"):
        without.unit_groups(random_images(4))


def test_classifier_free_guidance_extrapolates_from_the_null_condition(pipeline):
    units = pipeline.encode(random_images(2))

    def one_step(guidance_scale=None):
        generator = torch.Generator().manual_seed(0)
        return pipeline(units=units, num_inference_steps=1, generator=generator, output_type="latent", guidance_scale=guidance_scale).images

    unguided, twice, thrice = one_step(), one_step(2.0), one_step(3.0)
    assert torch.equal(unguided, one_step(1.0)) and not torch.allclose(unguided, twice)
    torch.testing.assert_close(thrice - twice, twice - unguided, atol=1e-5, rtol=0)

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((2, 3, SIZE, SIZE), generator=generator) * pipeline.scheduler.init_noise_sigma
    pipeline.scheduler.set_timesteps(1)
    t = pipeline.scheduler.timesteps[0]
    with torch.no_grad(), eval_mode(pipeline.unet):
        null_prediction = pipeline.unet(latents, t, encoder_hidden_states=torch.zeros(2, NUM_UNITS, UNIT_DIM)).sample
    null_render = pipeline.scheduler.step(null_prediction, t, latents).prev_sample
    torch.testing.assert_close(2 * unguided - twice, null_render, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="guidance_scale must be at least 1"):
        pipeline(units=units, num_inference_steps=1, guidance_scale=0.5)


def test_default_guidance_scale_is_saved_with_the_pipeline(tmp_path):
    pipe = tiny_pipeline()
    guided = DisentangledDiffusionPipeline(**pipe.components, guidance_scale=2.5)
    guided.set_progress_bar_config(disable=True)
    guided.save_pretrained(tmp_path)
    loaded = DisentangledDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.guidance_scale == 2.5
    images = random_images(2)
    assert torch.equal(render(loaded, images=images).images, render(pipe, images=images, guidance_scale=2.5).images)
    with pytest.raises(ValueError, match="guidance_scale must be at least 1"):
        DisentangledDiffusionPipeline(**pipe.components, guidance_scale=0.0)


def test_save_load_gives_identical_outputs(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path)
    loaded = DisentangledDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.anchorer.is_fitted and loaded.vae is None
    images = random_images(2)
    assert torch.equal(render(loaded, images=images).images, render(pipeline, images=images).images)
    assert torch.equal(render(loaded, num_images=3).images, render(pipeline, num_images=3).images)


@pytest.mark.parametrize("custom_pipeline", [None, str(PIPELINE_FILE)], ids=["own-file", "custom_pipeline"])
def test_plain_diffusers_loads_a_saved_folder(pipeline, tmp_path, custom_pipeline):
    pipeline.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=custom_pipeline, trust_remote_code=True)
    assert type(loaded).__name__ == "DisentangledDiffusionPipeline"
    loaded.set_progress_bar_config(disable=True)
    images = random_images(2)
    assert torch.equal(render(loaded, images=images).images, render(pipeline, images=images).images)
    with pytest.raises(ValueError, match="(?s)custom code .*trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(tmp_path)


def build_offline_hub_cache(pipeline, cache_dir: Path, repo_id: str) -> Path:
    """Lays out `cache_dir` the way huggingface_hub caches a downloaded model repo."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_folder = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_folder / "snapshots" / commit
    pipeline.save_pretrained(snapshot)
    (repo_folder / "refs").mkdir(parents=True)
    (repo_folder / "refs" / "main").write_text(commit)
    return snapshot


def test_loads_from_a_hub_repo_id_through_snapshot_download(pipeline, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    snapshot = build_offline_hub_cache(pipeline, tmp_path / "hub", "someone/tiny-dyga")
    loaded = DisentangledDiffusionPipeline.from_pretrained("someone/tiny-dyga", cache_dir=tmp_path / "hub")
    loaded.set_progress_bar_config(disable=True)
    assert Path(loaded.name_or_path) == snapshot
    images = random_images(2)
    assert torch.equal(render(loaded, images=images).images, render(pipeline, images=images).images)
    with pytest.raises(Exception, match="(?i)offline|cannot find|not found|local"):
        DisentangledDiffusionPipeline.from_pretrained("someone/missing-repo", cache_dir=tmp_path / "hub")


def test_folders_saved_before_the_hub_layout_still_load(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["_class_name"] = "DisentangledDiffusionPipeline"
    for name, module in [("encoder", "encoder"), ("unet", "skip_dropout_unet"), ("anchorer", "anchorer")]:
        index[name][0] = f"diffusers_dyga.{module}"
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    for module_file in tmp_path.rglob("*.py"):
        module_file.unlink()
    images = random_images(2)
    expected = render(pipeline, images=images).images
    loaded = DisentangledDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(render(loaded, images=images).images, expected)
    plain = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=str(PIPELINE_FILE), trust_remote_code=True)
    plain.set_progress_bar_config(disable=True)
    assert torch.equal(render(plain, images=images).images, expected)


def test_from_pretrained_names_unexpected_arguments_and_foreign_components(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="unexpected arguments: custom_thing"):
        DisentangledDiffusionPipeline.from_pretrained(tmp_path, custom_thing=1)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="names diffusers.UNet2DConditionModel as 'unet'; this pipeline loads a SkipDropoutUNet"):
        DisentangledDiffusionPipeline.from_pretrained(tmp_path)
    index["unet"], index["scheduler"] = ["diffusers_dyga_skip_dropout_unet", "SkipDropoutUNet"], ["diffusers", "Nope"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="names diffusers.Nope as 'scheduler', which is not a diffusers SchedulerMixin"):
        DisentangledDiffusionPipeline.from_pretrained(tmp_path)
    scheduler = DDIMScheduler(num_train_timesteps=100)
    assert DisentangledDiffusionPipeline.from_pretrained(tmp_path, scheduler=scheduler).scheduler is scheduler


def test_corrupt_component_checkpoint_raises(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path / "truncated")
    weights = tmp_path / "truncated" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(Exception, match="Unable to load weights.*unet"):
        DisentangledDiffusionPipeline.from_pretrained(tmp_path / "truncated")
    pipeline.save_pretrained(tmp_path / "missing")
    shutil.rmtree(tmp_path / "missing" / "encoder")
    with pytest.raises(ValueError, match="lacks its 'encoder' component"):
        DisentangledDiffusionPipeline.from_pretrained(tmp_path / "missing")
    (tmp_path / "missing" / "model_index.json").write_text("{ not json")
    with pytest.raises(ValueError, match="model_index.json is corrupt"):
        DisentangledDiffusionPipeline.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="no model_index.json"):
        DisentangledDiffusionPipeline.from_pretrained(tmp_path / "missing" / "unet")


def test_missing_or_unexpected_weights_and_unlisted_components_raise(pipeline, tmp_path):
    from safetensors.torch import load_file, save_file

    pipeline.save_pretrained(tmp_path / "saved")
    for name, edit, message in [
        ("anchorer", lambda state: state.pop("fitted"), "DyGAAnchorer checkpoint .*anchorer does not match the model .*missing keys: fitted"),
        ("encoder", lambda state: state.update(extra=torch.zeros(1)), "DisentangledEncoder .*unexpected keys: extra"),
    ]:
        folder = tmp_path / name
        shutil.copytree(tmp_path / "saved", folder)
        weights = folder / name / "diffusion_pytorch_model.safetensors"
        state = load_file(weights)
        edit(state)
        save_file(state, weights)
        with pytest.raises(ValueError, match=message):
            DisentangledDiffusionPipeline.from_pretrained(folder)

    pickled = tmp_path / "pickled"
    shutil.copytree(tmp_path / "saved", pickled)
    weights = pickled / "encoder" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), pickled / "encoder" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(EnvironmentError, match="safetensors"):
        DisentangledDiffusionPipeline.from_pretrained(pickled)
    DisentangledEncoder.from_pretrained(pickled, subfolder="encoder", use_safetensors=False)

    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    del index["anchorer"]
    (tmp_path / "saved" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="'anchorer' folder that its model_index.json does not list"):
        DisentangledDiffusionPipeline.from_pretrained(tmp_path / "saved")


@pytest.mark.parametrize("vae_class", [AutoencoderKL, VQModel])
def test_latent_diffusion_with_a_vae(vae_class, tmp_path):
    torch.manual_seed(0)
    vae = vae_class(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=SIZE,
    )
    unet = tiny_unet(sample_size=SIZE // 2, in_channels=4, out_channels=4)
    pipe = DisentangledDiffusionPipeline(tiny_encoder(), unet, DDIMScheduler(num_train_timesteps=10), vae=vae)
    pipe.set_progress_bar_config(disable=True)
    out = render(pipe, images=random_images(2))
    assert out.images.shape == (2, 3, SIZE, SIZE)
    pipe.save_pretrained(tmp_path)
    loaded = DisentangledDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.vae, vae_class) and loaded.anchorer is None
    assert torch.equal(render(loaded, images=random_images(2)).images, out.images)
