import importlib.util
import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers import AutoencoderKL, VQModel

from diffusers_dyga import DisentangledDiffusionPipeline

from .test_train import fresh_accelerator_state, tiny_args, train  # noqa: F401 (fixture)

SCRIPT = Path(__file__).resolve().parents[1] / "train_scripts" / "train_autoencoder.py"
spec = importlib.util.spec_from_file_location("dyga_train_autoencoder", SCRIPT)
train_autoencoder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_autoencoder)


def first_stage_args(output, cache_dir, *extra) -> list[str]:
    return [
        "--dataset", "builtin:shapes", "--factor_sizes", "2", "2", "2", "1", "2", "1", "--cache_dir", cache_dir,
        "--block_out_channels", "8", "16", "16", "--layers_per_block", "1", "--num_vq_embeddings", "64",
        "--train_batch_size", "8", "--learning_rate", "1e-3", "--output_dir", str(output), *extra,
    ]  # fmt: skip


def first_stage(output, cache_dir, *extra) -> dict:
    """Trains a first stage into `output` and returns its training report."""
    train_autoencoder.main(train_autoencoder.parse_args(first_stage_args(output, cache_dir, *extra)))
    AcceleratorState._reset_state(True)
    return json.loads((output / "training_report.json").read_text())


@pytest.mark.parametrize("model_type, model_class", [("vq", VQModel), ("kl", AutoencoderKL)])
def test_first_stage_trains_reports_psnr_and_scales_its_latents(tmp_path, model_type, model_class):
    cache_dir = str(tmp_path / "cache")
    common = ["--resolution", "16", "--model_type", model_type]
    short = first_stage(tmp_path / "short", cache_dir, "--max_train_steps", "2", *common)
    longer = first_stage(tmp_path / "longer", cache_dir, "--max_train_steps", "60", *common)
    assert longer["psnr"] > short["psnr"] + 1
    model = model_class.from_pretrained(tmp_path / "longer")
    assert model.config.scaling_factor == pytest.approx(1 / longer["latent_std"])
    assert model.config.block_out_channels == [8, 16, 16] and model.config.latent_channels == 3


def test_paper_preset_trains_end_to_end_through_the_first_stage(tmp_path):
    cache_dir = str(tmp_path / "cache")
    first_stage(tmp_path / "vq", cache_dir, "--resolution", "64", "--max_train_steps", "2")
    output = tmp_path / "paper"
    args = tiny_args(output, cache_dir, "--model_config", "paper", "--vae", str(tmp_path / "vq"), "--control_num_sources", "0")
    args[args.index("--resolution") + 1] = "64"
    args[args.index("--max_train_steps") + 1] = "2"
    args[args.index("--dyga_every") + 1] = "2"
    train.main(train.parse_args(args))
    pipe = DisentangledDiffusionPipeline.from_pretrained(output)
    assert isinstance(pipe.vae, VQModel) and pipe.unet.config.sample_size == 16
    assert pipe.unet.config.skip_dropout_resolutions == [16, 8] and pipe.anchorer.config.structure == "official"
    images = pipe(images=torch.zeros(1, 3, 64, 64), num_inference_steps=2, output_type="pt").images
    assert images.shape == (1, 3, 64, 64)


def tiny_backbone(path) -> Path:
    """A small random ResNet saved as a local `transformers` backbone folder."""
    from transformers import AutoBackbone, ResNetConfig

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"])
    AutoBackbone.from_config(config).save_pretrained(path)
    return path


def test_perceptual_loss_compares_features_of_a_frozen_local_backbone(tmp_path):
    from diffusers_dyga.perceptual_loss import PerceptualLoss

    loss = PerceptualLoss(str(tiny_backbone(tmp_path / "backbone"))).train()
    assert not loss.backbone.training and not any(p.requires_grad for p in loss.parameters())
    assert len(loss.backbone.config.out_features) == 2
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1
    assert loss(target, target).item() == 0.0
    near, far = target + 0.05 * torch.randn(2, 3, 16, 16, generator=generator), -target
    assert 0 < loss(near, target).item() < loss(far, target).item()
    prediction = near.clone().requires_grad_(True)
    loss(prediction, target).backward()
    assert prediction.grad.abs().sum() > 0
    assert loss(target[:, :1], target[:, :1]).item() == 0.0
    with pytest.raises(ValueError, match="nothing is downloaded"):
        PerceptualLoss(str(tmp_path / "missing"))


def test_first_stage_trains_with_a_perceptual_loss_on_local_weights(tmp_path, capsys):
    cache_dir = str(tmp_path / "cache")
    backbone = tiny_backbone(tmp_path / "backbone")
    report = first_stage(
        tmp_path / "vq", cache_dir, "--resolution", "16", "--max_train_steps", "3",
        "--perceptual_backbone", str(backbone), "--perceptual_weight", "0.5",
    )  # fmt: skip
    assert report["perceptual_backbone"] == str(backbone) and report["perceptual_weight"] == 0.5
    assert VQModel.from_pretrained(tmp_path / "vq").config.latent_channels == 3
    with pytest.raises(SystemExit):
        train_autoencoder.parse_args(first_stage_args(tmp_path / "x", cache_dir, "--perceptual_backbone", str(tmp_path)))
    assert "no config.json" in capsys.readouterr().err
