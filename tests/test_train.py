import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest
import torch
from accelerate.state import AcceleratorState

from diffusers_dyga import DisentangledDiffusionPipeline, SkipDropoutUNet
from diffusers_dyga.checkpointing import read_checkpoint_marker
from diffusers_dyga.data import load_builtin

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train_scripts" / "train.py"


def load_train_module():
    spec = importlib.util.spec_from_file_location("dyga_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = load_train_module()


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("train-cache"))


def tiny_args(output_dir, cache_dir, *extra) -> list[str]:
    return [
        "--dataset", "builtin:shapes",
        "--resolution", "16",
        "--factor_sizes", "2", "2", "2", "1", "2", "1",
        "--cache_dir", cache_dir,
        "--train_batch_size", "4",
        "--num_units", "3",
        "--max_train_steps", "6",
        "--dyga_every", "3",
        "--dyga_samples", "16",
        "--checkpointing_steps", "3",
        "--validation_steps", "100",
        "--validation_inference_steps", "2",
        "--num_validation_images", "2",
        "--eval_num_train", "64",
        "--eval_num_test", "32",
        "--output_dir", str(output_dir),
        *extra,
    ]  # fmt: skip


def test_few_steps_end_to_end_gives_a_pipeline_that_loads_and_generates(tmp_path, cache_dir):
    output = tmp_path / "run"
    extra = ["--use_ema", "--token_dropout", "0.5", "--guidance_scale", "2", "--unit_dependence_weight", "0.1"]
    extra += ["--unit_skewness_weight", "0.1", "--swap_consistency_weight", "0.05"]
    train.main(train.parse_args(tiny_args(output, cache_dir, *extra)))
    for name in ("model_index.json", "README.md", "interchange_grid.png", "training_report.json"):
        assert (output / name).is_file(), name
    assert (output / "checkpoint-3" / "anchorer").is_dir() and (output / "checkpoint-6" / "unet_ema").is_dir()
    assert any(f.startswith("events.out.tfevents") for _, _, files in os.walk(output / "logs") for f in files)
    report = json.loads((output / "training_report.json").read_text())
    assert report["steps"] == 6 and [fit["step"] for fit in report["dyga_fits"]] == [3, 6, 6]
    assert report["dci_booster"] == "exact"
    assert report["images_per_second"] > 0 and (report["peak_gpu_memory_gib"] is None) == (not torch.cuda.is_available())
    groups = {"factor_vae", "dci", "mig", "sap", "modularity_explicitness", "downstream"}
    assert set(report["metrics"]) == groups | {f"token_pca/{group}" for group in groups} | {
        "controllability", "controllability_details"
    }  # fmt: skip
    assert report["metric_sizes"] == {
        "validation": {"num_train": 16, "num_test": 16}, "final": {"num_train": 64, "num_test": 32}
    }  # fmt: skip
    control = report["metrics"]["controllability_details"]
    assert set(control["reconstruction_accuracy"]) == {"floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"}
    assert control["settings"]["num_sources"] == 16 and "held_out_accuracy" in control["factor_classifier"]
    assert report["metrics"]["controllability"]["mean_swap_accuracy"] == control["mean_swap_accuracy"]
    assert report["metrics"]["controllability"]["mean_group_swap_accuracy"] == control["mean_group_swap_accuracy"]
    grouped = [unit for group in control["groups"] for unit in group["units"]]
    assert len(grouped) == len(set(grouped))

    pipe = DisentangledDiffusionPipeline.from_pretrained(output)
    pipe.set_progress_bar_config(disable=True)
    args = train.parse_args(tiny_args(output, cache_dir, *extra))
    dataset = load_builtin("shapes", resolution=16, factor_sizes=(2, 2, 2, 1, 2, 1), cache_dir=cache_dir)
    columns = train.interchange_columns(pipe, dataset, args, channels=3)
    assert columns[:3] == [0, 1, 2] and all(len(group) > 1 for group in columns[3:])
    with PIL.Image.open(output / "interchange_grid.png") as grid:
        assert grid.size == (16 * (3 + len(columns)), 16 * 2)
    assert pipe.anchorer.is_fitted and pipe.unet.config.skip_dropout == 0.2 and pipe.config.guidance_scale == 2.0
    assert pipe.anchorer.config.fit_space == "principal" and pipe.anchorer.config.selection_criterion == "icl"
    images = pipe(num_images=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert len(images) == 2 and images[0].size == (16, 16)
    card = (output / "README.md").read_text()
    assert "DisentangledDiffusionPipeline.from_pretrained" in card and "dci/disentanglement" in card
    assert "builtin:shapes" in card and "interchange_grid.png" in card and "library_name: diffusers" in card
    assert "the units are whitened" in card and "the units' kurtosis is added to the loss with weight 0.03" in card
    assert "their mean pairwise dependence (kernel HSIC) is added to the loss with weight 0.1" in card
    assert "the units' squared skewness is added to the loss with weight 0.1" in card
    assert "the first 4 images of each batch are also rendered with one unit taken from another image" in card
    assert "edited units is added to the loss with weight 0.05" in card
    assert "training timesteps drawn uniformly" in card and "number of Gaussians (at most 10) chosen by ICL" in card
    assert "tokens dropped for 50% of the training images" in card and "guidance scale 2.0" in card
    assert "## Controllability of the renders" in card and "| factor | reconstruction accuracy |" in card
    assert "Each metric draws 64 training and 32 test rows" in card and "| token_pca/dci/disentanglement |" in card


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_saves_fp32_weights(tmp_path, cache_dir, precision):
    output = tmp_path / precision
    args = tiny_args(output, cache_dir, "--mixed_precision", precision)
    args[args.index("--max_train_steps") + 1] = "3"
    train.main(train.parse_args(args))
    report = json.loads((output / "training_report.json").read_text())
    assert report["steps"] == 3 and report["metrics"] is not None and report["mixed_precision"] == precision
    pipe = DisentangledDiffusionPipeline.from_pretrained(output)
    assert pipe.encoder.dtype == torch.float32 and pipe.unet.dtype == torch.float32


def test_torch_compile_trains_and_saves_the_plain_models(tmp_path, cache_dir):
    """`--torch_compile aot_eager` (graph capture and AOTAutograd without C++ code generation, so it runs anywhere):
    the compiled models train, and the checkpoint and the pipeline hold the plain models' weights."""
    output = tmp_path / "compiled"
    args = tiny_args(output, cache_dir, "--torch_compile", "aot_eager", "--no-allow_tf32", "--no-dyga")
    for flag, value in (("--max_train_steps", "2"), ("--checkpointing_steps", "2")):
        args[args.index(flag) + 1] = value
    train.main(train.parse_args(args))
    report = json.loads((output / "training_report.json").read_text())
    assert report["torch_compile"] == "aot_eager" and report["steps"] == 2 and report["tf32"] is False
    assert torch.backends.cuda.matmul.fp32_precision == "ieee" and torch.backends.cudnn.conv.fp32_precision == "ieee"
    train.set_tf32(True)
    weights = DisentangledDiffusionPipeline.from_pretrained(output).unet.state_dict()
    checkpoint = SkipDropoutUNet.from_pretrained(output / "checkpoint-2", subfolder="unet").state_dict()
    assert checkpoint.keys() == weights.keys() and all(torch.equal(value, weights[key]) for key, value in checkpoint.items())


def final_state(output) -> dict[str, torch.Tensor]:
    pipe = DisentangledDiffusionPipeline.from_pretrained(output)
    state = {}
    for name in ("encoder", "unet", "anchorer"):
        state.update({f"{name}.{k}": v for k, v in getattr(pipe, name).state_dict().items()})
    return state


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, cache_dir):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train.main(train.parse_args(tiny_args(straight, cache_dir, "--use_ema", "--lr_scheduler", "constant")))
    AcceleratorState._reset_state(True)
    halfway = tiny_args(resumed, cache_dir, "--use_ema", "--lr_scheduler", "constant")
    halfway[halfway.index("--max_train_steps") + 1] = "3"
    train.main(train.parse_args(halfway))
    AcceleratorState._reset_state(True)
    train.main(
        train.parse_args(
            tiny_args(resumed, cache_dir, "--use_ema", "--lr_scheduler", "constant", "--resume_from_checkpoint", "latest")
        )
    )
    expected, got = final_state(straight), final_state(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_time_limited_chunks_of_one_command_train_to_the_uninterrupted_weights(tmp_path, cache_dir, capsys):
    """`--max_train_minutes` with `--resume_from_checkpoint latest`: the first command starts a new run, every command
    stops with a checkpoint when its time is up (here after each step) and the same command repeated finishes the run,
    with the weights of an uninterrupted one."""
    options = ("--use_ema", "--lr_scheduler", "constant", "--max_train_steps", "3")
    train.main(train.parse_args(tiny_args(tmp_path / "straight", cache_dir, *options)))
    chunked = tiny_args(tmp_path / "chunked", cache_dir, *options, "--resume_from_checkpoint", "latest", "--max_train_minutes", "1e-9")
    for command in range(1, 4):
        AcceleratorState._reset_state(True)
        train.main(train.parse_args(chunked))
        finished = (tmp_path / "chunked" / "training_report.json").exists()
        assert finished == (command == 3)
        assert (tmp_path / "chunked" / f"checkpoint-{command}").is_dir() or command == 3
        if not finished:
            assert f"Stopped after 1e-09 minutes at step {command} of 3" in capsys.readouterr().out
            assert not (tmp_path / "chunked" / "model_index.json").exists()
    report = json.loads((tmp_path / "chunked" / "training_report.json").read_text())
    assert report["steps"] == 3
    seconds = [read_checkpoint_marker(str(tmp_path / "chunked" / f"checkpoint-{step}"))["training_seconds"] for step in (1, 2, 3)]
    assert 0 < seconds[0] < seconds[1] < seconds[2] <= report["total_training_minutes"] * 60
    assert report["wall_minutes"] < report["total_training_minutes"]
    card = (tmp_path / "chunked" / "README.md").read_text()
    assert f"Training time: {report['total_training_minutes']:.1f} minutes on " in card
    expected, got = final_state(tmp_path / "straight"), final_state(tmp_path / "chunked")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_decoded_and_streamed_images_train_to_the_same_weights(tmp_path, cache_dir, caplog):
    """`--data_path decoded` (one uint8 tensor, batches by index) and `stream` (PIL per batch) feed the same batches,
    DyGA refits included, so the weights are equal to the bit."""
    for data_path in ("decoded", "stream"):
        AcceleratorState._reset_state(True)
        with caplog.at_level("INFO"):
            train.main(train.parse_args(tiny_args(tmp_path / data_path, cache_dir, "--data_path", data_path)))
    assert "Images held decoded" in caplog.text and "Images decoded per batch" in caplog.text
    decoded, streamed = final_state(tmp_path / "decoded"), final_state(tmp_path / "stream")
    assert decoded.keys() == streamed.keys()
    for key in decoded:
        assert torch.equal(decoded[key], streamed[key]), key


def test_two_process_launch_shares_one_anchorer_state(tmp_path, cache_dir):
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), *tiny_args(output, cache_dir),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((output / "training_report.json").read_text())
    assert [fit["step"] for fit in report["dyga_fits"]] == [3, 6], "no EMA: the step-6 fit is not repeated at the end"
    for fit in report["dyga_fits"]:
        assert len(fit["checksums"]) == 2 and len(set(fit["checksums"])) == 1
    assert (output / "model_index.json").is_file()
    assert "MULTI_CPU" in result.stdout + result.stderr
    DisentangledDiffusionPipeline.from_pretrained(output)


def test_push_to_hub_uploads_the_pipeline_without_checkpoints_or_logs(tmp_path, cache_dir, hub):
    output = tmp_path / "push"
    train.main(train.parse_args(tiny_args(output, cache_dir, "--push_to_hub", "--hub_model_id", "someone/tiny-dyga")))
    repo = hub.repos["someone/tiny-dyga"]
    files = sorted(repo.commits[repo.resolve("main")])
    assert "model_index.json" in files and "README.md" in files and "interchange_grid.png" in files
    assert "anchorer/diffusion_pytorch_model.safetensors" in files and "unet/config.json" in files
    assert "disentangled_diffusion.py" in files and "encoder/diffusers_dyga_encoder.py" in files
    assert not [f for f in files if f.startswith(("checkpoint-", "logs/", "validation/", ".pipeline", ".checkpoint"))], files
    card = (output / "README.md").read_text()
    assert 'from_pretrained("someone/tiny-dyga")' in card and "# someone/tiny-dyga" in card
    loaded = DisentangledDiffusionPipeline.from_pretrained("someone/tiny-dyga")
    saved = DisentangledDiffusionPipeline.from_pretrained(output)
    for name in ("encoder", "unet", "anchorer"):
        for (key, value), (_, saved_value) in zip(getattr(loaded, name).state_dict().items(), getattr(saved, name).state_dict().items()):
            assert torch.equal(value, saved_value), f"{name}.{key}"


def test_bad_arguments_exit_before_training(tmp_path, cache_dir, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        train.parse_args(tiny_args(tmp_path, cache_dir, "--model_config", "huge"))
    assert "Unknown --model_config 'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--output_dir", str(tmp_path)])
    assert "exactly one of --dataset" in capsys.readouterr().err
    for flag, value, message in [
        ("--attention_head_channels", "48", "does not divide the U-Net widths"),
        ("--timestep_bias_power", "0", "--timestep_bias_power must be positive"),
        ("--unit_noise", "-0.1", "--unit_noise must be non-negative"),
        ("--unit_kurtosis_weight", "-0.1", "--unit_kurtosis_weight must be non-negative"),
        ("--unit_kurtosis_floor", "-1", "--unit_kurtosis_floor must be non-negative"),
        ("--unit_skewness_weight", "-0.1", "--unit_skewness_weight must be non-negative"),
        ("--swap_consistency_weight", "-0.1", "--swap_consistency_weight must be non-negative"),
        ("--unit_dependence_weight", "-0.1", "--unit_dependence_weight must be non-negative"),
        ("--unit_gate_weight", "-0.1", "--unit_gate_weight must be non-negative"),
        ("--unit_gate_weight", "0.1", "--unit_gate_weight charges the unit gates: add --unit_gates"),
        ("--unit_gate_learning_rate", "0", "--unit_gate_learning_rate must be positive"),
        ("--token_dropout", "1", "--token_dropout must be in [0, 1)"),
        ("--guidance_scale", "0.5", "--guidance_scale must be at least 1"),
        ("--guidance_scale", "3", "--guidance_scale above 1 needs --token_dropout above 0"),
        ("--num_units", "4", "--unit_whitening needs --train_batch_size (4) larger than --num_units (4)"),
        ("--learning_rate", "-1e-4", "--learning_rate must be positive"),
        ("--encoder_learning_rate", "-1e-4", "--encoder_learning_rate must be positive"),
        ("--max_grad_norm", "-1", "--max_grad_norm must be non-negative"),
        ("--decoded_max_gib", "-1", "--decoded_max_gib must be non-negative"),
        ("--torch_compile", "fastest", "--torch_compile takes a torch.compile backend accelerate knows, got 'fastest'"),
        ("--max_train_steps", "0", "--max_train_steps must be positive"),
        ("--num_train_epochs", "0", "--num_train_epochs must be positive"),
        ("--checkpointing_steps", "0", "--checkpointing_steps must be positive"),
        ("--validation_steps", "0", "--validation_steps must be positive"),
        ("--dyga_every", "0", "--dyga_every must be positive"),
        ("--gradient_accumulation_steps", "0", "--gradient_accumulation_steps must be positive"),
        ("--resolution", "0", "--resolution must be positive"),
        ("--num_units", "0", "--num_units must be positive"),
        ("--num_validation_images", "0", "--num_validation_images must be positive"),
        ("--validation_inference_steps", "0", "--validation_inference_steps must be positive"),
        ("--eval_num_train", "0", "--eval_num_train and --eval_num_test must be positive"),
        ("--control_num_sources", "-1", "--control_num_sources must be non-negative"),
        ("--checkpoints_total_limit", "0", "--checkpoints_total_limit must be positive"),
        ("--skip_dropout", "1", "--skip_dropout must be in [0, 1)"),
        ("--ema_decay", "1", "--ema_decay must be in [0, 1)"),
        ("--detail_loss_weight", "1.5", "--detail_loss_weight must be in [0, 1]"),
        ("--dyga_init_components", "11", "--dyga_init_components (11) exceeds --dyga_max_components (10)"),
        ("--beta_end", "0.00001", "Need 0 < --beta_start < --beta_end < 1"),
        ("--unit_kl_weight", "0.01", "--unit_kl_weight needs --unit_posterior gaussian"),
        ("--unit_posterior", "gaussian", "--unit_posterior gaussian replaces the unit noise"),
        ("--dyga_max_iterations", "0", "--dyga_max_iterations must be positive"),
    ]:
        with pytest.raises(SystemExit):
            train.parse_args(tiny_args(tmp_path, cache_dir, f"{flag}={value}"))
        assert message in capsys.readouterr().err
    real_find_spec = importlib.util.find_spec
    with monkeypatch.context() as patch:
        patch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lightgbm" else real_find_spec(name, *a))
        with pytest.raises(SystemExit):
            train.parse_args(tiny_args(tmp_path, cache_dir, "--dci_booster", "histogram"))
    assert '--dci_booster histogram needs lightgbm: pip install -e ".[fast-dci]"' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(tiny_args(tmp_path, cache_dir, "--no-unit_whitening", "--train_batch_size", "1"))
    assert "--unit_kurtosis_weight needs --train_batch_size of at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(tiny_args(tmp_path, cache_dir, "--unit_kurtosis_weight", "0", "--unit_kurtosis_floor", "1.8"))
    assert "--unit_kurtosis_floor only acts on the kurtosis term" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(tiny_args(tmp_path, cache_dir, "--unit_gates", "--unit_noise", "0"))
    assert "--unit_gates scales whitened units against the training noise" in capsys.readouterr().err

    from diffusers import AutoencoderKL

    AutoencoderKL(
        block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4, norm_num_groups=8,
    ).save_pretrained(tmp_path / "vae")  # fmt: skip
    with pytest.raises(SystemExit):
        train.parse_args(tiny_args(tmp_path / "out", cache_dir, "--vae", str(tmp_path / "vae"), "--resolution", "18"))
    assert "not divisible by the VAE's downsampling factor 4" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(tiny_args(tmp_path / "out", cache_dir, "--vae", str(tmp_path)))
    assert "no config.json" in capsys.readouterr().err

    shapes = load_builtin("shapes", resolution=16, factor_sizes=(1, 1, 2, 1, 2, 1), cache_dir=cache_dir)
    shapes.rename_column("image", "picture").save_to_disk(str(tmp_path / "no-image-column"))
    no_image = tiny_args(tmp_path / "never", cache_dir)
    no_image[0:2] = ["--dataset_name", str(tmp_path / "no-image-column")]
    args = train.parse_args(no_image)
    with pytest.raises(ValueError, match="no image column 'image'"):
        train.main(args)
    assert not list((tmp_path / "never").glob("checkpoint-*"))
    result = subprocess.run([sys.executable, str(SCRIPT), *no_image], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "train.py: error:" in result.stderr and "no image column" in result.stderr


def test_an_unlabelled_image_folder_trains_with_the_defaults(tmp_path, cache_dir):
    shapes = load_builtin("shapes", resolution=16, factor_sizes=(2, 2, 2, 1, 2, 1), cache_dir=cache_dir)
    folder = tmp_path / "my_images"
    folder.mkdir()
    for index, row in enumerate(shapes):
        row["image"].save(folder / f"{index:03d}.png")
    args = tiny_args(tmp_path / "folder-run", cache_dir)
    args[0:2] = ["--dataset_name", str(folder)]
    factor_flag = args.index("--factor_sizes")
    del args[factor_flag : factor_flag + 7]
    train.main(train.parse_args(args))
    report = json.loads((tmp_path / "folder-run" / "training_report.json").read_text())
    assert report["steps"] == 6 and report["metrics"] is None
    assert all(1 <= count <= 10 for count in report["dyga_fits"][-1]["num_components"])
    assert (tmp_path / "folder-run" / "interchange_grid.png").is_file()
    card = (tmp_path / "folder-run" / "README.md").read_text()
    assert str(folder) in card


def test_latent_training_with_a_local_vae(tmp_path, cache_dir):
    from diffusers import AutoencoderKL

    AutoencoderKL(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, norm_num_groups=8,
    ).save_pretrained(tmp_path / "vae")  # fmt: skip
    args = tiny_args(tmp_path / "latent", cache_dir, "--vae", str(tmp_path / "vae"), "--resolution", "32")
    args[args.index("--max_train_steps") + 1] = "2"
    train.main(train.parse_args(args))
    pipe = DisentangledDiffusionPipeline.from_pretrained(tmp_path / "latent")
    assert pipe.vae is not None and pipe.unet.config.sample_size == 16 and pipe.unet.config.in_channels == 4


def test_timestep_bias_power_shifts_training_timesteps_toward_high_noise():
    torch.manual_seed(0)
    uniform = train.sample_timesteps(20000, 1000, 1.0, torch.device("cpu"))
    biased = train.sample_timesteps(20000, 1000, 3.0, torch.device("cpu"))
    assert uniform.min() >= 0 and uniform.max() <= 999 and biased.min() >= 0 and biased.max() <= 999
    assert abs(uniform.float().mean().item() - 499.5) < 10
    assert abs(biased.float().mean().item() - 750) < 10  # density ~ t**2 has mean 3/4 of the range


def test_preset_heads_follow_attention_head_channels_and_encoder_has_its_own_learning_rate(tmp_path, cache_dir):
    defaults = train.parse_args(tiny_args(tmp_path, cache_dir))
    assert (defaults.learning_rate, defaults.encoder_learning_rate, defaults.coordinate_input) == (1e-3, 2e-4, True)
    args = train.parse_args(tiny_args(tmp_path, cache_dir, "--encoder_learning_rate", "5e-4", "--attention_head_channels", "16"))
    args.vae_scale = 1
    encoder, unet, _, _ = train.build_models(args, in_channels=3, latent_channels=3)
    heads = [block.attentions[0].transformer_blocks[0].attn2.heads for block in unet.down_blocks if hasattr(block, "attentions")]
    assert heads == [32 // 16, 64 // 16, 64 // 16]
    optimizer = train.build_optimizer(args, encoder, unet)
    assert [group["lr"] for group in optimizer.param_groups] == [5e-4, 1e-3]
    assert unet.config.coordinate_input and unet.conv_in.in_channels == 5


def test_broadcast_tokens_gives_the_unet_every_unit_at_every_pixel_and_trains(tmp_path, cache_dir):
    args = train.parse_args(tiny_args(tmp_path, cache_dir, "--broadcast_tokens"))
    assert not train.parse_args(tiny_args(tmp_path, cache_dir)).broadcast_tokens
    args.vae_scale = 1
    encoder, unet, anchorer, noise_scheduler = train.build_models(args, in_channels=3, latent_channels=3)
    assert unet.config.broadcast_tokens == args.num_units
    assert unet.conv_in.in_channels == 3 + 2 + args.num_units
    pixels = torch.rand(4, 3, args.resolution, args.resolution) * 2 - 1
    train.training_loss(args, encoder, unet, anchorer, noise_scheduler, pixels).loss.backward()
    assert unet.token_readout_weight.grad.abs().sum() > 0
    assert all(parameter.grad is not None for parameter in encoder.parameters() if parameter.requires_grad)


def test_swap_consistency_moves_the_units_only_and_leaves_the_parameters_trainable(tmp_path, cache_dir):
    options = ["--swap_consistency_weight", "1", "--swap_consistency_batch_size", "3", "--no-dyga"]
    args = train.parse_args(tiny_args(tmp_path, cache_dir, *options))
    args.vae_scale = 1
    encoder, unet, anchorer, noise_scheduler = train.build_models(args, in_channels=3, latent_channels=3)
    pixels = torch.rand(4, 3, args.resolution, args.resolution) * 2 - 1
    units = encoder.encode(pixels)
    running_mean = encoder.running_mean.clone()
    term = train.swap_consistency(args, encoder, unet, anchorer, noise_scheduler, pixels, units)
    assert term > 0 and torch.equal(encoder.running_mean, running_mean)
    term.backward()
    assert all(parameter.grad is None for parameter in unet.parameters())
    assert encoder.to_units.weight.grad.abs().sum() > 0 and encoder.token_in_weight.grad is None
    assert all(parameter.requires_grad for parameter in [*unet.parameters(), *encoder.parameters()])
    step_loss = train.training_loss(args, encoder, unet, anchorer, noise_scheduler, pixels)
    assert step_loss.swap_consistency > 0 and step_loss.loss > step_loss.denoising


def test_charged_unit_gates_close_and_are_reported(tmp_path, cache_dir):
    gates = {}
    for weight in ("0", "1"):
        output = tmp_path / f"gates-{weight}"
        options = ["--unit_gates", "--unit_gate_weight", weight, "--unit_gate_learning_rate", "1.0", "--lr_warmup_steps", "0"]
        args = train.parse_args(tiny_args(output, cache_dir, *options, "--control_num_sources", "0"))
        encoder, unet, *_ = train.build_models(args, in_channels=3, latent_channels=3)
        groups = train.build_optimizer(args, encoder, unet).param_groups
        assert [group["params"] for group in groups[2:]] == [[encoder.unit_gate_logits]]
        assert all(p is not encoder.unit_gate_logits for p in groups[0]["params"]) and groups[2]["lr"] == 1.0
        train.main(args)
        report = json.loads((output / "training_report.json").read_text())
        gates[weight] = torch.tensor(report["unit_gates"])
        loaded = DisentangledDiffusionPipeline.from_pretrained(output).encoder
        torch.testing.assert_close(loaded.gates, gates[weight])
    assert (gates["1"] < 0.5).all() and (gates["1"] < gates["0"]).all()
    card = (tmp_path / "gates-1" / "README.md").read_text()
    assert "each unit is scaled by a learned gate" in card and "mean gate is added to the loss with weight 1.0" in card
    assert f"the gates end at {', '.join(f'{gate:.2f}' for gate in gates['1'].tolist())} for units 0 to 2" in card
    assert "the gates end at 0.95, 0.10, 0.05 for units 0 to 2 (units 1, 2 closed, below 0.2)" in train.unit_summary(
        args, [0.95, 0.1, 0.05]
    )
    assert "for units 0 to 1;" in train.unit_summary(args, [0.95, 0.5])


def test_a_gaussian_posterior_on_whitened_units_charges_its_width_and_the_card_says_so(tmp_path, cache_dir):
    options = ["--unit_posterior", "gaussian", "--unit_noise", "0", "--unit_kl_weight", "0.003"]
    args = train.parse_args(tiny_args(tmp_path, cache_dir, *options, "--control_num_sources", "0"))
    assert args.unit_whitening
    args.vae_scale = 1
    encoder, unet, anchorer, noise_scheduler = train.build_models(args, in_channels=3, latent_channels=3)
    assert encoder.config.unit_whitening and encoder.config.unit_posterior == "gaussian"
    pixels = torch.rand(8, 3, args.resolution, args.resolution) * 2 - 1
    step_loss = train.training_loss(args, encoder, unet, anchorer, noise_scheduler, pixels)
    assert step_loss.unit_kl > 0
    step_loss.loss.backward()
    assert encoder.to_unit_log_variance.weight.grad.abs().sum() > 0
    summary = train.unit_summary(args)
    assert "units are whitened" in summary and "learned per image" in summary and "weight 0.003" in summary
    assert "charges only that width" in summary

    args = train.parse_args(tiny_args(tmp_path, cache_dir, *options, "--whitening_shrinkage", "0.1"))
    args.vae_scale = 1
    encoder, *_ = train.build_models(args, in_channels=3, latent_channels=3)
    assert encoder.config.whitening_shrinkage == 0.1
    summary = train.unit_summary(args)
    assert "adds 0.1 of the units' mean variance" in summary and "that width and each unit's spread" in summary
    with pytest.raises(SystemExit):
        train.parse_args(tiny_args(tmp_path, cache_dir, "--no-unit_whitening", "--whitening_shrinkage", "0.1"))


def test_attention_resolutions_choose_the_unet_levels_with_cross_attention(tmp_path, cache_dir, capsys):
    args = train.parse_args(tiny_args(tmp_path, cache_dir, "--attention_resolutions", "16", "8", "4"))
    args.vae_scale = 1
    _, unet, _, _ = train.build_models(args, in_channels=3, latent_channels=3)
    assert unet.config.down_block_types == ("CrossAttnDownBlock2D",) * 3
    assert unet.config.up_block_types == ("CrossAttnUpBlock2D",) * 3
    with pytest.raises(SystemExit):
        train.parse_args(tiny_args(tmp_path, cache_dir, "--attention_resolutions", "32"))
    assert "--attention_resolutions [32]: the U-Net's levels are [16, 8, 4] wide" in capsys.readouterr().err


def test_paper_pixel_preset_is_the_official_architecture_and_trains_end_to_end(tmp_path, cache_dir, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(tiny_args(tmp_path, cache_dir, "--model_config", "paper"))
    assert "diffuses 16x16 latents of a VQ-f4 first stage: pass --vae" in capsys.readouterr().err
    output = tmp_path / "paper"
    args = train.parse_args(
        tiny_args(output, cache_dir, "--model_config", "paper-pixel", "--skip_dropout_resolutions", "16", "8",
                  "--max_train_steps", "2", "--dyga_every", "2", "--control_num_sources", "0")
    )  # fmt: skip
    assert (args.adam_weight_decay, args.max_grad_norm, args.lr_warmup_steps, args.use_ema) == (0.01, 0.0, 0, True)
    train.main(args)
    pipe = DisentangledDiffusionPipeline.from_pretrained(output)
    encoder, unet = pipe.encoder.config, pipe.unet.config
    assert (encoder.stem_channels, encoder.norm_type, encoder.act_fn, encoder.token_output_act) == (64, "batch", "relu", True)
    assert list(encoder.hidden_dim) == [4096, 256] and list(encoder.token_hidden_dim) == [256, 512]
    assert unet.down_block_types == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]
    assert list(unet.attention_head_dim) == [8] * 4 and unet.dropout == 0.1 and unet.resnet_time_scale_shift == "scale_shift"
    assert (pipe.anchorer.config.structure, pipe.anchorer.config.lambda_mode, pipe.anchorer.config.covariance_type) == (
        "official", "batch", "full"
    )  # fmt: skip
    assert json.loads((output / "training_report.json").read_text())["steps"] == 2


@pytest.mark.parametrize("fit_on", ["encoded", "anchored"])
def test_dyga_refits_fit_the_encoded_or_the_anchored_tokens(tmp_path, cache_dir, monkeypatch, fit_on):
    from accelerate import Accelerator

    args = train.parse_args(
        tiny_args(tmp_path, cache_dir, "--dyga_fit_on", fit_on, "--dyga_lambda_mode", "fixed", "--dyga_lambda", "0.5")
    )
    dataset = load_builtin("shapes", resolution=16, factor_sizes=(2, 2, 2, 1, 2, 1), cache_dir=cache_dir)
    encoder, _, anchorer, _ = train.build_models(args, in_channels=3, latent_channels=3)
    accelerator = Accelerator(cpu=True)
    images_for_fit = train.training_images(args, accelerator, dataset, channels=3)
    train.fit_anchorer(args, accelerator, encoder, anchorer, images_for_fit, step=1)
    fitted = []
    monkeypatch.setattr(anchorer, "fit", lambda tokens: fitted.append(tokens))
    train.fit_anchorer(args, accelerator, encoder, anchorer, images_for_fit, step=1)
    images = train.prepare_images(dataset["image"], 16, 3)
    with torch.no_grad():
        encoded = encoder.eval()(images).tokens
    rows = fitted[0]
    expected = anchorer.align(encoded) if fit_on == "anchored" else encoded
    order = lambda tokens: tokens.flatten(1).sum(1).argsort()  # noqa: E731 (the fit draws the rows in its own order)
    torch.testing.assert_close(rows[order(rows)], expected[order(expected)], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(anchorer.align(encoded), encoded)
    assert train.PRESETS["paper"]["dyga_fit_on"] == "anchored" and train.PRESETS["tiny"]["dyga_fit_on"] == "encoded"


def test_model_card_shows_the_group_swaps_when_the_anchorer_found_groups():
    swap = {"swap_accuracy": 0.9, "swap_target_accuracy": 0.95, "swap_others_kept": 0.92}
    details = {
        "settings": {"num_sources": 32, "num_inference_steps": 25, "unit_share_threshold": 0.5},
        "factor_classifier": {"held_out_accuracy": {"floor_hue": 1.0}},
        "reconstruction_psnr": 22.0,
        "reconstruction_accuracy": {"floor_hue": 1.0},
        "units": [{"unit": 0, "factor": "floor_hue", "share": 0.99, "traversal_accuracy": 0.6, **swap}],
        "mean_swap_accuracy": 0.9, "mean_traversal_accuracy": 0.6,
        "factors": [{"factor": "floor_hue", "units": [0, 1], **swap}], "mean_factor_swap_accuracy": 0.9,
        "groups": [{"units": [0, 1], "factor": "floor_hue", **swap}], "mean_group_swap_accuracy": 0.9,
    }  # fmt: skip
    section = train.controllability_section({"controllability_details": details})
    assert "| 0, 1 | floor_hue | 0.90 | 0.95 | 0.92 |" in section and "Mean group swap accuracy 0.90." in section
    assert "Group swap" not in train.controllability_section({"controllability_details": {**details, "groups": []}})


def test_model_card_names_an_approximate_dci():
    metrics = {"dci": {"disentanglement": 0.5}, "controllability": {"mean_swap_accuracy": 0.1}}
    sizes = {"num_train": 10000, "num_test": 5000}
    exact = train.encoder_metrics_table(metrics, sizes)
    approximate = train.encoder_metrics_table(metrics, sizes, "histogram")
    assert "| dci/disentanglement | 0.500 |" in exact and "controllability" not in exact
    assert "histogram booster" not in exact and "LightGBM's histogram booster (`--dci_booster histogram`)" in approximate
