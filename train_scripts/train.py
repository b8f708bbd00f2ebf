#!/usr/bin/env python
"""Trains a DisentangledEncoder and a SkipDropoutUNet jointly with the denoising loss (plus, in `tiny`, a kurtosis term
on the units), refitting DyGA on a schedule.

    accelerate launch train_scripts/train.py --dataset builtin:shapes --resolution 32 --model_config tiny \
        --max_train_steps 2000 --output_dir outputs/shapes-tiny

Follows the diffusers example scripts: `Accelerator`, save/load-state hooks, `EMAModel`, `get_scheduler`,
`checkpoint-{step}` folders, `--resume_from_checkpoint latest`, `--push_to_hub`.
"""

import argparse
import hashlib
import importlib.util
import json
import logging
import math
import os
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import (
    DynamoBackend,
    ProjectConfiguration,
    broadcast,
    extract_model_from_parallel,
    gather_object,
    set_seed,
)
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, VQModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils.hub_utils import populate_model_card
from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder
from tqdm.auto import tqdm

from diffusers_dyga import DisentangledDiffusionPipeline, DisentangledEncoder, DyGAAnchorer, SkipDropoutUNet
from diffusers_dyga.checkpointing import (
    check_resume_settings,
    checkpoint_folders,
    checkpoint_step,
    is_complete_checkpoint,
    latest_complete_checkpoint,
    read_checkpoint_marker,
    save_checkpoint,
    save_pipeline,
)
from diffusers_dyga.data import DecodedImages, factor_names, image_channels, to_model_range
from diffusers_dyga.encoder import as_widths
from diffusers_dyga.evaluation import (
    DCI_BOOSTERS,
    REPRESENTATIONS,
    evaluate_controllability,
    evaluate_pipeline,
    flatten_metrics,
)
from diffusers_dyga.pipeline import eval_mode
from diffusers_dyga.training_data import (
    TrainingImages,
    add_data_arguments,
    check_data_arguments,
    load_training_data,
    prepare_images,
)
from diffusers_dyga.training_utils import (
    detail_weights,
    predicted_original_sample,
    swap_one_unit,
    unit_dependence,
    unit_kl_divergence,
    unit_kurtosis,
    unit_skewness,
)

logger = get_logger(__name__)

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "disentangled_diffusion.md"

PRESETS = {
    "tiny": {
        "resolution": 32,
        "num_units": 10,
        "unit_dim": 32,
        "encoder_channels": [32, 32, 64, 64],
        "encoder_hidden_dim": 256,
        "token_hidden_dim": 64,
        "encoder_stem_channels": None,
        "encoder_norm_type": "none",
        "encoder_act_fn": "silu",
        "token_output_act": False,
        "encoder_coordinate_input": False,
        "unit_noise": 0.3,
        "unit_whitening": True,
        "whitening_shrinkage": 0.0,
        "unit_kurtosis_weight": 0.03,
        "unit_kurtosis_floor": 0.0,
        "unit_skewness_weight": 0.0,
        "unit_dependence_weight": 0.0,
        "swap_consistency_weight": 0.0,
        "swap_consistency_batch_size": 8,
        "unit_posterior": "deterministic",
        "unit_kl_weight": 0.0,
        "unit_gates": False,
        "unit_gate_weight": 0.0,
        "unit_gate_learning_rate": 2e-2,
        "unet_channels": [32, 64, 64],
        "layers_per_block": 1,
        "max_attention_resolution": 16,
        "attention_resolutions": None,
        "attention_head_channels": 32,
        "attention_heads": None,
        "unet_dropout": 0.0,
        "resnet_time_scale_shift": "default",
        "train_batch_size": 32,
        "learning_rate": 1e-3,
        "encoder_learning_rate": 2e-4,
        "lr_warmup_steps": 100,
        "adam_weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "prediction_type": "sample",
        "timestep_bias_power": 1.0,
        "loss": "l2",
        "detail_loss_weight": 0.0,
        "skip_dropout": 0.2,
        "token_dropout": 0.0,
        "guidance_scale": 1.0,
        "coordinate_input": True,
        "broadcast_tokens": False,
        "skip_dropout_resolutions": None,
        "use_ema": False,
        "ema_decay": 0.999,
        "dyga_every": 100,
        "dyga_samples": 2000,
        "dyga_structure": "search",
        "dyga_fit_space": "principal",
        "dyga_selection_criterion": "icl",
        "dyga_covariance_type": "diag",
        "dyga_init_components": 1,
        "dyga_max_components": 10,
        "dyga_max_iterations": 100,
        "dyga_lambda_mode": "adaptive",
        "dyga_fit_on": "encoded",
    },
    "paper": {
        "resolution": 64,
        "num_units": 20,
        "unit_dim": 32,
        "encoder_channels": [128, 256, 256, 256],
        "encoder_hidden_dim": [4096, 256],
        "token_hidden_dim": [256, 512],
        "encoder_stem_channels": 64,
        "encoder_norm_type": "batch",
        "encoder_act_fn": "relu",
        "token_output_act": True,
        "encoder_coordinate_input": False,
        "unit_noise": 0.0,
        "unit_whitening": False,
        "whitening_shrinkage": 0.0,
        "unit_kurtosis_weight": 0.0,
        "unit_kurtosis_floor": 0.0,
        "unit_skewness_weight": 0.0,
        "unit_dependence_weight": 0.0,
        "swap_consistency_weight": 0.0,
        "swap_consistency_batch_size": 8,
        "unit_posterior": "deterministic",
        "unit_kl_weight": 0.0,
        "unit_gates": False,
        "unit_gate_weight": 0.0,
        "unit_gate_learning_rate": 2e-2,
        "unet_channels": [64, 128, 256, 256],
        "layers_per_block": 2,
        "max_attention_resolution": 16,
        "attention_resolutions": [16, 8, 4],
        "attention_head_channels": 32,
        "attention_heads": 8,
        "unet_dropout": 0.1,
        "resnet_time_scale_shift": "scale_shift",
        "train_batch_size": 512,
        "learning_rate": 1e-4,
        "encoder_learning_rate": 1e-4,
        "lr_warmup_steps": 0,
        "adam_weight_decay": 0.01,
        "max_grad_norm": 0.0,
        "num_train_timesteps": 1000,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.0015,
        "beta_end": 0.0155,
        "prediction_type": "epsilon",
        "timestep_bias_power": 1.0,
        "loss": "l1",
        "detail_loss_weight": 0.0,
        "skip_dropout": 0.2,
        "token_dropout": 0.0,
        "guidance_scale": 1.0,
        "coordinate_input": False,
        "broadcast_tokens": False,
        "skip_dropout_resolutions": [16, 8],
        "use_ema": True,
        "ema_decay": 0.9999,
        "dyga_every": 2000,
        "dyga_samples": 10000,
        "dyga_structure": "official",
        "dyga_fit_space": "tokens",
        "dyga_selection_criterion": "bic",
        "dyga_covariance_type": "full",
        "dyga_init_components": 8,
        "dyga_max_components": 32,
        "dyga_max_iterations": 30,
        "dyga_lambda_mode": "batch",
        "dyga_fit_on": "anchored",
    },
}
PRESETS["paper-pixel"] = {**PRESETS["paper"], "attention_resolutions": [16, 8], "skip_dropout_resolutions": [64, 32]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = add_data_arguments(parser)
    data.add_argument("--vae", default=None, help="Local AutoencoderKL or VQModel folder: train in its latent space.")
    model = parser.add_argument_group("model")
    model.add_argument("--model_config", default="tiny", help=f"Preset: {', '.join(PRESETS)}.")
    model.add_argument("--num_units", type=int, default=None)
    model.add_argument("--unit_dim", type=int, default=None)
    model.add_argument("--unit_noise", type=float, default=None, help="Training noise on the units, in batch stds.")
    model.add_argument(
        "--unit_whitening",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Whiten the units so that no two carry the same signal (--no-unit_whitening: off).",
    )
    model.add_argument(
        "--whitening_shrinkage",
        type=float,
        default=None,
        help="Whiten with this fraction of the units' mean variance added to the covariance's diagonal, so that a "
        "unit of small variance stays small and can fall silent (ours; 0 in the presets; pairs with --unit_posterior "
        "gaussian, whose KL then charges each unit's spread).",
    )
    model.add_argument(
        "--unit_kurtosis_weight",
        type=float,
        default=None,
        help="Weight of the units' kurtosis in the loss: turns whitened units toward single factors (0: off).",
    )
    model.add_argument(
        "--unit_kurtosis_floor",
        type=float,
        default=None,
        help="Count each unit's kurtosis only above this value (1.8: a uniform factor's), so that the term charges "
        "mixtures of factors without rewarding a many-valued factor split into two-valued bits (0: plain kurtosis).",
    )
    model.add_argument(
        "--unit_skewness_weight",
        type=float,
        default=None,
        help="Weight of the units' mean squared skewness in the loss: asks for one unit per odd-valued factor where "
        "whitening leaves a three-valued factor on two units as a triangle (ours; 0: off).",
    )
    model.add_argument(
        "--unit_dependence_weight",
        type=float,
        default=None,
        help="Weight of the units' mean pairwise dependence (kernel HSIC) in the loss: keeps any two units from "
        "holding functions of one factor (ours; 0: off).",
    )
    model.add_argument(
        "--swap_consistency_weight",
        type=float,
        default=None,
        help="Weight of the edit-consistency term: the first --swap_consistency_batch_size images of each batch are "
        "rendered (one-step prediction) with one unit taken from another image, and the units the encoder reads from the render are charged for differing from the "
        "edited units, so that a single unit's swap shows in the render and moves only that unit (ours; 0: off).",
    )
    model.add_argument(
        "--swap_consistency_batch_size",
        type=int,
        default=None,
        help="How many of each batch's images the edit-consistency term renders (it costs one more U-Net and encoder "
        "pass on them).",
    )
    model.add_argument(
        "--unit_posterior",
        choices=["deterministic", "gaussian"],
        default=None,
        help="gaussian: each unit is a VAE posterior (mean and log-variance); pair it with --unit_kl_weight and "
        "--unit_noise 0. With --unit_whitening the posterior's width is a training noise learned per image (ours).",
    )
    model.add_argument(
        "--unit_kl_weight",
        type=float,
        default=None,
        help="Weight of the units' KL divergence from N(0, 1) in the loss (needs --unit_posterior gaussian).",
    )
    model.add_argument(
        "--unit_gates",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Scale each whitened unit by a learned gate against absolute training noise (ours; needs --unit_whitening "
        "and --unit_noise above 0).",
    )
    model.add_argument(
        "--unit_gate_weight",
        type=float,
        default=None,
        help="Weight of the units' mean gate in the loss: a unit stays open only where it pays for itself (ours).",
    )
    model.add_argument(
        "--unit_gate_learning_rate", type=float, default=None, help="Learning rate of the unit gates' logits."
    )
    model.add_argument(
        "--attention_resolutions",
        type=int,
        nargs="+",
        default=None,
        help="Spatial sizes of the U-Net levels with cross-attention to the tokens (tiny: 16 and 8; 32 adds the full "
        "resolution of a 32x32 model).",
    )
    model.add_argument(
        "--attention_head_channels", type=int, default=None, help="Channels per attention head (heads = width / this)."
    )
    model.add_argument(
        "--token_dropout",
        type=float,
        default=None,
        help="Share of training images whose tokens are replaced by zeros (the null condition of classifier-free guidance).",
    )
    model.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="Classifier-free guidance scale of validation renders, saved as the pipeline's default (1: none).",
    )
    model.add_argument(
        "--coordinate_input",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Give the U-Net each pixel's coordinates as two extra input channels (--no-coordinate_input: off).",
    )
    model.add_argument(
        "--broadcast_tokens",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Also give the U-Net one scalar read out of each token at every pixel, as extra input channels beside the "
        "coordinates (a spatial broadcast path; ours, off in every preset).",
    )
    model.add_argument(
        "--encoder_coordinate_input",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Give the encoder each pixel's coordinates as two extra input channels (ours; off in every preset).",
    )
    model.add_argument("--skip_dropout", type=float, default=None)
    model.add_argument("--skip_dropout_resolutions", type=int, nargs="+", default=None)
    model.add_argument("--dyga", action=argparse.BooleanOptionalAction, default=True, help="Use DyGA (--no-dyga: off).")
    model.add_argument("--dyga_every", type=int, default=None, help="Refit the anchorer every this many steps.")
    model.add_argument("--dyga_samples", type=int, default=None, help="Images whose tokens each refit uses.")
    model.add_argument(
        "--dyga_structure",
        choices=["search", "official"],
        default=None,
        help="How DyGA finds each unit's components: our criterion search, or the official code's split rules.",
    )
    model.add_argument(
        "--dyga_fit_space",
        choices=["tokens", "principal"],
        default=None,
        help="Where DyGA counts each unit's components: its tokens, or their first principal direction (a line).",
    )
    model.add_argument(
        "--dyga_selection_criterion",
        choices=["bic", "icl"],
        default=None,
        help="What a number of DyGA components must lower: BIC, or ICL (BIC plus the assignments' entropy).",
    )
    model.add_argument("--dyga_covariance_type", choices=["diag", "full"], default=None)
    model.add_argument("--dyga_max_iterations", type=int, default=None, help="EM iterations per fit.")
    model.add_argument("--dyga_init_components", type=int, default=None, help="Used by the token-space search only.")
    model.add_argument("--dyga_max_components", type=int, default=None)
    model.add_argument(
        "--dyga_fit_on",
        choices=["encoded", "anchored"],
        default=None,
        help="What each refit fits: the encoded tokens, or (official) those tokens pulled toward the previous anchors.",
    )
    model.add_argument("--dyga_lambda_mode", choices=["adaptive", "batch", "fixed"], default=None)
    model.add_argument("--dyga_lambda", type=float, default=0.1)
    model.add_argument("--num_train_timesteps", type=int, default=None)
    model.add_argument("--beta_schedule", default=None, choices=["linear", "scaled_linear", "squaredcos_cap_v2"])
    model.add_argument("--beta_start", type=float, default=None)
    model.add_argument("--beta_end", type=float, default=None)
    model.add_argument(
        "--timestep_bias_power",
        type=float,
        default=None,
        help="Training timesteps t have density proportional to t**(power - 1): 1 is uniform, above 1 favours high noise.",
    )
    model.add_argument("--prediction_type", default=None, choices=["epsilon", "v_prediction", "sample"])
    model.add_argument("--loss", default=None, choices=["l1", "l2"])
    model.add_argument(
        "--detail_loss_weight",
        type=float,
        default=None,
        help="Share of the loss's per-pixel weight that follows the image's edges (0: a plain mean; at most 1).",
    )
    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", default="outputs/dyga")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--train_batch_size", type=int, default=None)
    train.add_argument("--num_train_epochs", type=int, default=1)
    train.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--learning_rate", type=float, default=None)
    train.add_argument("--encoder_learning_rate", type=float, default=None, help="Learning rate of the encoder (the U-Net trains at --learning_rate).")
    train.add_argument("--lr_scheduler", default="constant_with_warmup")
    train.add_argument("--lr_warmup_steps", type=int, default=None)
    train.add_argument("--adam_beta1", type=float, default=0.9)
    train.add_argument("--adam_beta2", type=float, default=0.999)
    train.add_argument("--adam_weight_decay", type=float, default=None)
    train.add_argument("--adam_epsilon", type=float, default=1e-8)
    train.add_argument("--max_grad_norm", type=float, default=None, help="Gradient clipping norm (0: no clipping).")
    train.add_argument(
        "--use_ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Keep an EMA of the U-Net and the encoder (--no-use_ema: off).",
    )
    train.add_argument("--ema_decay", type=float, default=None)
    train.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    train.add_argument(
        "--allow_tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="On NVIDIA GPUs from Ampere on, float32 matmuls and convolutions in TF32 (--no-allow_tf32: IEEE float32). "
        "DyGA fits and the metrics run on the CPU either way.",
    )
    train.add_argument(
        "--torch_compile",
        nargs="?",
        const="inductor",
        default=None,
        help="Compile the encoder and the U-Net with torch.compile through accelerate; optionally a backend name "
        "(default inductor).",
    )
    train.add_argument("--dataloader_num_workers", type=int, default=0)
    train.add_argument(
        "--data_path",
        default="auto",
        choices=["auto", "decoded", "stream"],
        help="decoded: decode every image once into one uint8 tensor (cached beside the dataset) and batch by indexing, "
        "converting to [-1, 1] on the device; stream: decode each batch with PIL; auto: decoded when the tensor takes at "
        "most --decoded_max_gib. Both give the same batches.",
    )
    train.add_argument("--decoded_max_gib", type=float, default=4.0, help="The largest decoded tensor auto keeps in memory.")
    train.add_argument("--report_to", default="tensorboard")
    train.add_argument("--logging_dir", default="logs")
    train.add_argument("--checkpointing_steps", type=int, default=500)
    train.add_argument("--checkpoints_total_limit", type=int, default=None)
    train.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help='A checkpoint folder, or "latest": the newest complete one in --output_dir (a new run when it holds none).',
    )
    train.add_argument(
        "--max_train_minutes",
        type=float,
        default=None,
        help="Stop after this many minutes of training with a checkpoint, to go on with --resume_from_checkpoint latest "
        "(for time-limited jobs: the same command repeated trains to --max_train_steps).",
    )
    validation = parser.add_argument_group("validation")
    validation.add_argument("--validation_steps", type=int, default=500)
    validation.add_argument("--num_validation_images", type=int, default=4)
    validation.add_argument("--validation_inference_steps", type=int, default=50)
    validation.add_argument("--eval_max_rows", type=int, default=100000, help="Metrics on grids up to this size.")
    validation.add_argument(
        "--eval_num_train",
        type=int,
        default=10000,
        help="Training rows / votes each metric draws at the final validation (capped at the grid's size at the others).",
    )
    validation.add_argument("--eval_num_test", type=int, default=5000, help="Test rows / evaluation votes, likewise.")
    validation.add_argument(
        "--dci_booster",
        choices=DCI_BOOSTERS,
        default="exact",
        help="DCI's classifiers: exact (disentanglement_lib's) or histogram (LightGBM, faster, approximate; fast-dci extra).",
    )
    validation.add_argument(
        "--control_num_sources",
        type=int,
        default=32,
        help="Sources rendered per edit when scoring controllability on data with factors (0: not scored).",
    )
    hub = parser.add_argument_group("hub")
    hub.add_argument("--push_to_hub", action="store_true")
    hub.add_argument("--hub_model_id", default=None)
    hub.add_argument("--hub_token", default=None)
    hub.add_argument("--hub_private_repo", action="store_true")
    args = parser.parse_args(argv)

    if args.model_config not in PRESETS:
        parser.error(f"Unknown --model_config {args.model_config!r}; choose one of {', '.join(PRESETS)}.")
    check_data_arguments(parser, args)
    preset = PRESETS[args.model_config]
    for name, value in preset.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    check_ranges(parser, args)
    if args.torch_compile is not None and args.torch_compile.upper() not in DynamoBackend.__members__:
        parser.error(f"--torch_compile takes a torch.compile backend accelerate knows, got {args.torch_compile!r}.")
    if args.push_to_hub and args.hub_model_id is None:
        parser.error("--push_to_hub needs --hub_model_id.")
    if args.dci_booster == "histogram" and importlib.util.find_spec("lightgbm") is None:
        parser.error('--dci_booster histogram needs lightgbm: pip install -e ".[fast-dci]".')
    if args.timestep_bias_power <= 0:
        parser.error(f"--timestep_bias_power must be positive, got {args.timestep_bias_power}.")
    if args.unit_whitening and args.train_batch_size <= args.num_units:
        parser.error(
            f"--unit_whitening needs --train_batch_size ({args.train_batch_size}) larger than --num_units ({args.num_units})."
        )
    if args.unit_kl_weight < 0:
        parser.error(f"--unit_kl_weight must be non-negative, got {args.unit_kl_weight}.")
    if args.unit_kl_weight > 0 and args.unit_posterior != "gaussian":
        parser.error("--unit_kl_weight needs --unit_posterior gaussian (a deterministic unit has no posterior).")
    if args.unit_posterior == "gaussian" and args.unit_noise > 0:
        parser.error("--unit_posterior gaussian replaces the unit noise: add --unit_noise 0.")
    if args.whitening_shrinkage < 0 or (args.whitening_shrinkage > 0 and not args.unit_whitening):
        parser.error(
            f"--whitening_shrinkage must be non-negative and needs --unit_whitening, got {args.whitening_shrinkage}."
        )
    if args.unit_gates and not (args.unit_whitening and args.unit_noise > 0):
        parser.error("--unit_gates scales whitened units against the training noise: add --unit_whitening and --unit_noise above 0.")
    if args.unit_gate_weight < 0:
        parser.error(f"--unit_gate_weight must be non-negative, got {args.unit_gate_weight}.")
    if args.unit_gate_weight > 0 and not args.unit_gates:
        parser.error("--unit_gate_weight charges the unit gates: add --unit_gates.")
    if args.unit_gate_learning_rate <= 0:
        parser.error(f"--unit_gate_learning_rate must be positive, got {args.unit_gate_learning_rate}.")
    if args.unit_kurtosis_weight < 0:
        parser.error(f"--unit_kurtosis_weight must be non-negative, got {args.unit_kurtosis_weight}.")
    if args.unit_kurtosis_floor < 0:
        parser.error(f"--unit_kurtosis_floor must be non-negative, got {args.unit_kurtosis_floor}.")
    if args.unit_kurtosis_floor > 0 and args.unit_kurtosis_weight == 0:
        parser.error("--unit_kurtosis_floor only acts on the kurtosis term: set --unit_kurtosis_weight above 0 as well.")
    if args.unit_kurtosis_weight > 0 and args.train_batch_size < 2:
        parser.error("--unit_kurtosis_weight needs --train_batch_size of at least 2 (the kurtosis is taken over the batch).")
    if args.unit_skewness_weight < 0:
        parser.error(f"--unit_skewness_weight must be non-negative, got {args.unit_skewness_weight}.")
    if args.unit_skewness_weight > 0 and args.train_batch_size < 2:
        parser.error("--unit_skewness_weight needs --train_batch_size of at least 2 (the skewness is taken over the batch).")
    if args.unit_dependence_weight < 0:
        parser.error(f"--unit_dependence_weight must be non-negative, got {args.unit_dependence_weight}.")
    if args.unit_dependence_weight > 0 and (args.train_batch_size < 2 or args.num_units < 2):
        parser.error("--unit_dependence_weight needs --train_batch_size and --num_units of at least 2 (pairs over the batch).")
    if args.swap_consistency_weight < 0:
        parser.error(f"--swap_consistency_weight must be non-negative, got {args.swap_consistency_weight}.")
    if args.swap_consistency_weight > 0 and args.vae:
        parser.error("--swap_consistency_weight re-encodes the U-Net's renders, which are latents with --vae: train in pixel space.")
    if args.swap_consistency_weight > 0 and min(args.train_batch_size, args.swap_consistency_batch_size) < 2:
        parser.error(
            "--swap_consistency_weight needs --train_batch_size and --swap_consistency_batch_size of at least 2 (a unit "
            "is taken from another image)."
        )
    if not 0 <= args.token_dropout < 1:
        parser.error(f"--token_dropout must be in [0, 1), got {args.token_dropout}.")
    if args.guidance_scale < 1:
        parser.error(f"--guidance_scale must be at least 1 (1: no guidance), got {args.guidance_scale}.")
    if args.eval_num_train < 1 or args.eval_num_test < 1:
        parser.error(f"--eval_num_train and --eval_num_test must be positive, got {args.eval_num_train} and {args.eval_num_test}.")
    if args.guidance_scale > 1 and args.token_dropout == 0:
        parser.error("--guidance_scale above 1 needs --token_dropout above 0: the U-Net must learn the null condition.")
    if not 0 <= args.detail_loss_weight <= 1:
        parser.error(f"--detail_loss_weight must be in [0, 1], got {args.detail_loss_weight}.")
    if args.unit_noise < 0:
        parser.error(f"--unit_noise must be non-negative, got {args.unit_noise}.")
    if args.attention_heads is None and (
        args.attention_head_channels < 1 or any(c % args.attention_head_channels for c in args.unet_channels)
    ):
        parser.error(
            f"--attention_head_channels {args.attention_head_channels} does not divide the U-Net widths {args.unet_channels}."
        )
    if args.vae is not None:
        try:
            vae_config = read_vae_config(args.vae)
        except (OSError, ValueError) as error:
            parser.error(f"--vae {args.vae}: {error}")
        args.vae_scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
        if args.resolution % args.vae_scale:
            parser.error(f"--resolution {args.resolution} is not divisible by the VAE's downsampling factor {args.vae_scale}.")
    else:
        if args.model_config == "paper":
            parser.error(
                "--model_config paper is the official configuration, which diffuses 16x16 latents of a VQ-f4 first "
                "stage: pass --vae (a local VQModel folder), or use --model_config paper-pixel to train on pixels."
            )
        args.vae_scale = 1
    unet_size = args.resolution // args.vae_scale
    if unet_size % 2 ** (len(args.unet_channels) - 1):
        parser.error(
            f"The U-Net input is {unet_size}x{unet_size} (--resolution {args.resolution} / VAE factor {args.vae_scale}), "
            f"not divisible by 2**{len(args.unet_channels) - 1} for {len(args.unet_channels)} U-Net levels."
        )
    level_sizes = [unet_size // 2**level for level in range(len(args.unet_channels))]
    for name in ("attention_resolutions", "skip_dropout_resolutions"):
        missing = sorted(set(getattr(args, name) or []) - set(level_sizes))
        if missing:
            parser.error(f"--{name} {missing}: the U-Net's levels are {level_sizes} wide (input {unet_size}x{unet_size}).")
    if args.resolution % 2 ** len(args.encoder_channels):
        parser.error(f"--resolution {args.resolution} must be divisible by {2 ** len(args.encoder_channels)} for the encoder.")
    return args


POSITIVE_ARGUMENTS = (
    "resolution", "num_units", "unit_dim", "train_batch_size", "num_train_epochs", "gradient_accumulation_steps",
    "learning_rate", "checkpointing_steps", "validation_steps", "num_validation_images",
    "validation_inference_steps", "dyga_every", "dyga_samples", "dyga_init_components", "dyga_max_components",
    "dyga_max_iterations",
    "num_train_timesteps", "layers_per_block", "max_attention_resolution",
)  # fmt: skip


def check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Signs and ranges of the numeric settings, so that a bad value stops the run before any work."""
    for name in POSITIVE_ARGUMENTS:
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}.")
    for name in ("max_train_steps", "checkpoints_total_limit", "encoder_learning_rate", "max_train_minutes"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name} must be positive, got {value}.")
    non_negative = (
        "lr_warmup_steps", "control_num_sources", "eval_max_rows", "dataloader_num_workers", "adam_weight_decay",
        "decoded_max_gib",
    )  # fmt: skip
    for name in (*non_negative, "max_grad_norm"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be non-negative, got {getattr(args, name)}.")
    widths = [*args.encoder_channels, *args.unet_channels, *as_widths(args.encoder_hidden_dim), *as_widths(args.token_hidden_dim)]
    if any(width <= 0 for width in widths):
        parser.error("Every encoder and U-Net width must be positive.")
    if not 0 <= args.skip_dropout < 1:
        parser.error(f"--skip_dropout must be in [0, 1), got {args.skip_dropout}.")
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema_decay must be in [0, 1), got {args.ema_decay}.")
    if not 0 <= args.dyga_lambda <= 1:
        parser.error(f"--dyga_lambda must be in [0, 1], got {args.dyga_lambda}.")
    if args.dyga_init_components > args.dyga_max_components:
        parser.error(
            f"--dyga_init_components ({args.dyga_init_components}) exceeds --dyga_max_components ({args.dyga_max_components})."
        )
    if not 0 < args.beta_start < args.beta_end < 1:
        parser.error(f"Need 0 < --beta_start < --beta_end < 1, got {args.beta_start} and {args.beta_end}.")


def read_vae_config(path: str) -> dict:
    """The config of a local AutoencoderKL or VQModel folder."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError("not a local VAE folder (no config.json).")
    with open(config_path) as file:
        config = json.load(file)
    if config.get("_class_name") not in ("AutoencoderKL", "VQModel"):
        raise ValueError(f"expected an AutoencoderKL or VQModel, got {config.get('_class_name')}.")
    return config


def attends(args: argparse.Namespace, size: int) -> bool:
    """Whether the U-Net level of this spatial size has cross-attention: one of `attention_resolutions`, else at
    most `max_attention_resolution`."""
    if args.attention_resolutions is not None:
        return size in args.attention_resolutions
    return size <= args.max_attention_resolution


def build_models(args: argparse.Namespace, in_channels: int, latent_channels: int):
    encoder = DisentangledEncoder(
        sample_size=args.resolution,
        in_channels=in_channels,
        num_units=args.num_units,
        unit_dim=args.unit_dim,
        block_out_channels=tuple(args.encoder_channels),
        hidden_dim=args.encoder_hidden_dim,
        token_hidden_dim=args.token_hidden_dim,
        unit_noise=args.unit_noise,
        unit_whitening=args.unit_whitening,
        whitening_shrinkage=args.whitening_shrinkage,
        stem_channels=args.encoder_stem_channels,
        norm_type=args.encoder_norm_type,
        act_fn=args.encoder_act_fn,
        token_output_act=args.token_output_act,
        coordinate_input=args.encoder_coordinate_input,
        unit_posterior=args.unit_posterior,
        unit_gates=args.unit_gates,
    )
    size = args.resolution // args.vae_scale
    attention = [attends(args, size // 2**level) for level in range(len(args.unet_channels))]
    if args.attention_heads is not None:
        heads = (args.attention_heads,) * len(args.unet_channels)
    else:
        heads = tuple(channels // args.attention_head_channels for channels in args.unet_channels)
    unet = SkipDropoutUNet(
        sample_size=size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(args.unet_channels),
        layers_per_block=args.layers_per_block,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        cross_attention_dim=args.unit_dim,
        # UNet2DConditionModel reads `attention_head_dim` as the number of heads (a known diffusers naming quirk).
        attention_head_dim=heads,
        norm_num_groups=min(32, args.unet_channels[0]),
        dropout=args.unet_dropout,
        resnet_time_scale_shift=args.resnet_time_scale_shift,
        skip_dropout=args.skip_dropout,
        skip_dropout_resolutions=args.skip_dropout_resolutions,
        coordinate_input=args.coordinate_input,
        broadcast_tokens=args.num_units if args.broadcast_tokens else 0,
    )
    anchorer = DyGAAnchorer(
        num_units=args.num_units,
        unit_dim=args.unit_dim,
        max_components=args.dyga_max_components,
        init_components=args.dyga_init_components,
        covariance_type=args.dyga_covariance_type,
        max_iterations=args.dyga_max_iterations,
        structure=args.dyga_structure,
        fit_space=args.dyga_fit_space,
        selection_criterion=args.dyga_selection_criterion,
        lambda_mode=args.dyga_lambda_mode,
        lambda_value=args.dyga_lambda,
        seed=args.seed,
    )
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule,
        beta_start=args.beta_start,
        beta_end=args.beta_end,
        prediction_type=args.prediction_type,
    )
    return encoder, unet, anchorer, noise_scheduler


def build_optimizer(args: argparse.Namespace, encoder: DisentangledEncoder, unet: SkipDropoutUNet) -> torch.optim.AdamW:
    """AdamW over both models; the encoder trains at `--encoder_learning_rate` (default: `--learning_rate`), its unit
    gates at `--unit_gate_learning_rate` without weight decay."""
    encoder_parameters = [parameter for name, parameter in encoder.named_parameters() if name != "unit_gate_logits"]
    groups = [
        {"params": encoder_parameters, "lr": args.encoder_learning_rate or args.learning_rate},
        {"params": list(unet.parameters()), "lr": args.learning_rate},
    ]
    if encoder.config.unit_gates:
        groups.append({"params": [encoder.unit_gate_logits], "lr": args.unit_gate_learning_rate, "weight_decay": 0.0})
    return torch.optim.AdamW(
        groups,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )


def sample_timesteps(batch_size: int, num_timesteps: int, power: float, device: torch.device) -> torch.Tensor:
    """`(batch_size,)` training timesteps with density proportional to `t**(power - 1)` (uniform for power 1)."""
    uniform = torch.rand(batch_size, device=device)
    return (uniform ** (1.0 / power) * num_timesteps).long().clamp_max(num_timesteps - 1)


@dataclass
class StepLoss:
    """One batch's training loss and the terms it sums (scalars; a term that is off is `None`)."""

    loss: torch.Tensor
    denoising: torch.Tensor
    kurtosis: torch.Tensor | None = None
    skewness: torch.Tensor | None = None
    dependence: torch.Tensor | None = None
    swap_consistency: torch.Tensor | None = None
    unit_kl: torch.Tensor | None = None
    gates: torch.Tensor | None = None


def anchored(args: argparse.Namespace, anchorer: DyGAAnchorer, tokens: torch.Tensor) -> torch.Tensor:
    """`(batch, num_units, unit_dim)` tokens pulled toward their DyGA anchors, once DyGA is on and fitted."""
    return anchorer.align(tokens) if args.dyga and anchorer.is_fitted else tokens


def training_loss(
    args: argparse.Namespace,
    encoder: torch.nn.Module,
    unet: torch.nn.Module,
    anchorer: DyGAAnchorer,
    noise_scheduler: DDPMScheduler,
    pixels: torch.Tensor,
    latents: torch.Tensor | None = None,
) -> StepLoss:
    """The training objective on one batch: the encoder reads `pixels` `(batch, channels, H, W)` in [-1, 1]; the U-Net
    denoises `latents` (the pixels themselves when no VAE encoded them), reading the units' tokens, pulled toward
    their DyGA anchors once the anchorer is fitted. `encoder` and `unet` may be wrapped (DDP, compiled)."""
    latents = pixels if latents is None else latents
    noise = torch.randn_like(latents)
    num_timesteps = noise_scheduler.config.num_train_timesteps
    timesteps = sample_timesteps(latents.shape[0], num_timesteps, args.timestep_bias_power, latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    encoder_output = encoder(pixels)
    tokens = anchored(args, anchorer, encoder_output.tokens)
    if args.token_dropout > 0:
        kept = torch.rand(tokens.shape[0], 1, 1, device=tokens.device) >= args.token_dropout
        tokens = tokens * kept.to(tokens.dtype)
    prediction = unet(noisy, timesteps, encoder_hidden_states=tokens).sample
    if args.prediction_type == "epsilon":
        target = noise
    elif args.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = latents
    loss_fn = F.l1_loss if args.loss == "l1" else F.mse_loss
    pixel_losses = loss_fn(prediction.float(), target.float(), reduction="none")
    if args.detail_loss_weight > 0:
        pixel_losses = pixel_losses * detail_weights(pixels, args.detail_loss_weight, latents.shape[-2:])
    denoising = pixel_losses.mean()
    step_loss = StepLoss(loss=denoising, denoising=denoising)
    if args.unit_kurtosis_weight > 0:
        step_loss.kurtosis = unit_kurtosis(encoder_output.units, floor=args.unit_kurtosis_floor)
        step_loss.loss = step_loss.loss + args.unit_kurtosis_weight * step_loss.kurtosis
    if args.unit_skewness_weight > 0:
        step_loss.skewness = unit_skewness(encoder_output.units)
        step_loss.loss = step_loss.loss + args.unit_skewness_weight * step_loss.skewness
    if args.unit_dependence_weight > 0:
        step_loss.dependence = unit_dependence(encoder_output.units)
        step_loss.loss = step_loss.loss + args.unit_dependence_weight * step_loss.dependence
    if args.swap_consistency_weight > 0:
        step_loss.swap_consistency = swap_consistency(
            args, encoder, unet, anchorer, noise_scheduler, latents, encoder_output.units
        )
        step_loss.loss = step_loss.loss + args.swap_consistency_weight * step_loss.swap_consistency
    if args.unit_kl_weight > 0:
        step_loss.unit_kl = unit_kl_divergence(encoder_output.units, encoder_output.unit_log_variance)
        step_loss.loss = step_loss.loss + args.unit_kl_weight * step_loss.unit_kl
    if args.unit_gate_weight > 0:
        step_loss.gates = extract_model_from_parallel(encoder).gates.mean()
        step_loss.loss = step_loss.loss + args.unit_gate_weight * step_loss.gates
    return step_loss


@contextmanager
def frozen_parameters(*models: torch.nn.Module) -> Iterator[None]:
    """Operations recorded inside pass gradients to their inputs but not to the models' parameters."""
    parameters = [parameter for model in models for parameter in model.parameters() if parameter.requires_grad]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)


def swap_consistency(
    args: argparse.Namespace,
    encoder: torch.nn.Module,
    unet: torch.nn.Module,
    anchorer: DyGAAnchorer,
    noise_scheduler: DDPMScheduler,
    images: torch.Tensor,
    units: torch.Tensor,
) -> torch.Tensor:
    """The edit-consistency term (ours): each of the first `--swap_consistency_batch_size` of the `(batch, channels,
    H, W)` images is noised to a timestep in the upper half of the schedule, where the tokens decide most of what is
    drawn, and denoised in one step with one of its `(batch, num_units)` units taken from the next image; the encoder
    reads the render back (whitened with its running statistics, which the render does not update), and the term is
    the mean squared distance from the edited units. The U-Net and the encoder render and read with their weights
    frozen, so the term moves only the units themselves (through the encoder's pass on the images): toward codes
    whose single-unit edits can be drawn and read back, which a factor spread over two units is not, since taking
    one of them asks for a combination no image has. (With the weights free, the U-Net and the reader learn to pass
    the edit along in the render's pixels instead.)"""
    model = extract_model_from_parallel(encoder)
    images, units = images[: args.swap_consistency_batch_size], units[: args.swap_consistency_batch_size]
    edited, _ = swap_one_unit(units)
    num_timesteps = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(num_timesteps // 2, num_timesteps, (images.shape[0],), device=images.device)
    noisy = noise_scheduler.add_noise(images, torch.randn_like(images), timesteps)
    with frozen_parameters(model, unet):
        tokens = anchored(args, anchorer, model.embed(edited))
        prediction = unet(noisy, timesteps, encoder_hidden_states=tokens).sample
        render = predicted_original_sample(noise_scheduler, noisy, prediction, timesteps).clamp(-1.0, 1.0)
        read_back = model.units_from_features(model.features(render), running_statistics=True)
    return F.mse_loss(read_back.float(), edited.float())


def set_tf32(allow: bool) -> None:
    """TF32 for float32 matmuls and cuDNN convolutions (used by Ampere and later; ignored by older GPUs and CPUs)."""
    precision = "tf32" if allow else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision


def training_images(args, accelerator, dataset: datasets.Dataset, channels: int) -> TrainingImages:
    """The training images by `--data_path`: decoded once into a uint8 tensor (by the main process first, which
    caches it) or decoded per batch."""
    num_bytes = DecodedImages.num_bytes(len(dataset), args.resolution, channels)
    if args.data_path == "stream" or (args.data_path == "auto" and num_bytes > args.decoded_max_gib * 2**30):
        logger.info(f"Images decoded per batch ({num_bytes / 2**30:.2f} GiB decoded would exceed --decoded_max_gib).")
        return TrainingImages(dataset, args.resolution, channels)
    start = time.perf_counter()
    with accelerator.main_process_first():
        decoded = DecodedImages.from_dataset(dataset, args.resolution, channels)
    logger.info(f"Images held decoded: {num_bytes / 2**20:.1f} MiB of uint8, ready in {time.perf_counter() - start:.1f} s.")
    return TrainingImages(dataset, args.resolution, channels, decoded)


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of the rows that depends only on the seed and the epoch, so a resumed run sees the same
    batches as an uninterrupted one."""

    def __init__(self, num_rows: int, seed: int):
        self.num_rows, self.seed, self.epoch = num_rows, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(np.random.RandomState(self.seed + self.epoch).permutation(self.num_rows).tolist())

    def __len__(self) -> int:
        return self.num_rows


RESUME_SETTINGS = (
    "resolution", "vae", "num_units", "unit_dim", "encoder_channels", "encoder_hidden_dim", "token_hidden_dim",
    "encoder_stem_channels", "encoder_norm_type", "encoder_act_fn", "token_output_act",
    "encoder_coordinate_input",
    "unit_noise", "unit_whitening", "whitening_shrinkage", "unit_kurtosis_weight", "unit_kurtosis_floor",
    "unit_skewness_weight", "unit_dependence_weight", "swap_consistency_weight", "swap_consistency_batch_size",
    "unit_posterior", "unit_kl_weight", "unit_gates", "unit_gate_weight", "unit_gate_learning_rate",
    "unet_channels", "layers_per_block",
    "max_attention_resolution", "attention_resolutions", "attention_head_channels", "attention_heads", "unet_dropout",
    "resnet_time_scale_shift", "coordinate_input", "broadcast_tokens", "skip_dropout",
    "skip_dropout_resolutions", "token_dropout", "dyga", "dyga_every", "dyga_samples", "dyga_structure",
    "dyga_covariance_type", "dyga_max_iterations", "dyga_fit_space",
    "dyga_selection_criterion", "dyga_init_components", "dyga_max_components", "dyga_lambda_mode", "dyga_lambda",
    "dyga_fit_on",
    "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "timestep_bias_power", "prediction_type", "loss",
    "detail_loss_weight", "train_batch_size", "gradient_accumulation_steps", "use_ema", "ema_decay", "seed",
)  # fmt: skip


def resume_settings(args: argparse.Namespace) -> dict:
    """The settings a checkpoint records and a resume must match: the objective, every shape, the data order."""
    return {name: getattr(args, name) for name in RESUME_SETTINGS}


def resume_candidates(args: argparse.Namespace) -> list[str]:
    """The checkpoints `--resume_from_checkpoint` may load, first choice first: the named one, or every complete one,
    newest first, for `latest` (a save killed midway leaves an incomplete folder, which is skipped with a warning)."""
    if args.resume_from_checkpoint != "latest":
        if not os.path.isdir(args.resume_from_checkpoint):
            raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: no such folder.")
        return [args.resume_from_checkpoint]
    newest, skipped = latest_complete_checkpoint(args.output_dir)
    if skipped:
        logger.warning(f"Skipping incomplete checkpoints (their saves were interrupted): {', '.join(skipped)}")
    if newest is None and not skipped:
        logger.info(f"--resume_from_checkpoint latest: no checkpoint in {args.output_dir} yet; starting a new run.")
        return []
    if newest is None:
        raise ValueError(f"--resume_from_checkpoint latest: no complete checkpoint in {args.output_dir}.")
    complete = [os.path.join(args.output_dir, name) for name in reversed(checkpoint_folders(args.output_dir))]
    return [path for path in complete if is_complete_checkpoint(path)]


def load_checkpoint(accelerator: Accelerator, path: str, args: argparse.Namespace) -> float | None:
    """Loads a complete checkpoint saved with the same settings, its random states included, or raises ValueError.
    Returns the seconds of training behind it (None where the checkpoint does not record them)."""
    marker = read_checkpoint_marker(path)
    check_resume_settings(marker["settings"], resume_settings(args), path)
    random_states = os.path.join(path, f"random_states_{accelerator.process_index}.pkl")
    if not os.path.isfile(random_states):
        raise ValueError(f"{random_states} is missing: the resumed run would not reproduce the uninterrupted one.")
    empty = [os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names]
    empty = [file for file in empty if os.path.getsize(file) == 0]
    if empty:
        raise ValueError(f"{path} holds empty files (a write cut short): {', '.join(sorted(empty))}.")
    try:
        accelerator.load_state(path)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path} could not be loaded ({type(error).__name__}: {error}).") from error
    return marker.get("training_seconds")


def anchorer_checksum(anchorer: DyGAAnchorer) -> str:
    digest = hashlib.sha256()
    for name, buffer in sorted(anchorer.state_dict().items()):
        digest.update(name.encode())
        digest.update(buffer.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def fit_anchorer(args, accelerator, encoder, anchorer, images: TrainingImages, step: int) -> dict:
    """Encodes `dyga_samples` distinct rows (all of a smaller dataset; split across processes) with the encoder in eval
    mode, as the pipeline encodes (with `--dyga_fit_on anchored`, as the official code, the tokens are first pulled
    toward the previous fit's anchors, in chunks of 256), gathers the tokens on every process, fits the anchorer, then
    broadcasts rank 0's state so every rank holds exactly the same anchors."""
    per_process = max(1, min(args.dyga_samples, len(images)) // accelerator.num_processes)
    rows = np.random.RandomState(args.seed + step).choice(
        len(images), per_process * accelerator.num_processes, replace=False
    )
    mine = rows[accelerator.process_index :: accelerator.num_processes]
    tokens = []
    with eval_mode(encoder):
        for start in range(0, len(mine), 256):
            pixels = images.read(mine[start : start + 256].tolist(), accelerator.device)
            chunk = encoder(pixels.to(dtype=encoder.dtype)).tokens
            if args.dyga_fit_on == "anchored" and anchorer.is_fitted:
                chunk = anchorer.align(chunk)
            tokens.append(chunk.float())
    all_tokens = accelerator.gather(torch.cat(tokens))
    start = time.perf_counter()
    anchorer.fit(all_tokens.cpu())
    seconds = time.perf_counter() - start
    anchorer.to(accelerator.device)
    for buffer in anchorer.buffers():
        buffer.copy_(broadcast(buffer.clone(), from_process=0))
    checksums = gather_object([anchorer_checksum(anchorer)])
    if len(set(checksums)) != 1:
        raise RuntimeError(f"DyGA state differs across processes after the fit at step {step}: {checksums}")
    return {"step": step, "seconds": seconds, "num_components": anchorer.num_components.tolist(), "checksums": checksums}


def evaluate(pipeline: DisentangledDiffusionPipeline, dataset: datasets.Dataset, args, final: bool) -> dict | None:
    """The metric suite on the whole factor grid and, at the `final` validation with `--control_num_sources`, the
    controllability of the renders, when the dataset has factors and is small enough."""
    if not factor_names(dataset) or len(dataset) > args.eval_max_rows:
        return None
    representations = REPRESENTATIONS if final else ("units",)
    sizes = metric_sizes(args, len(dataset), final)
    options = {"n_jobs": -1} if final else {}
    metrics, codes = evaluate_pipeline(
        pipeline, dataset, representations, **sizes, random_state=args.seed, dci_booster=args.dci_booster, **options
    )
    if final and args.control_num_sources > 0:
        report = evaluate_controllability(
            pipeline,
            dataset,
            codes=codes,
            cache_dir=args.cache_dir,
            num_sources=args.control_num_sources,
            num_inference_steps=args.validation_inference_steps,
            seed=args.seed,
        )
        metrics["controllability"] = controllability_summary(report)
        metrics["controllability_details"] = report
    return metrics


def metric_sizes(args, num_rows: int, final: bool) -> dict[str, int]:
    """Rows each metric draws (with replacement): `--eval_num_train` / `--eval_num_test` (disentanglement_lib's
    10,000 / 5,000 by default) at the final validation; capped at the grid's size at the others, which are quicker."""
    if final:
        return {"num_train": args.eval_num_train, "num_test": args.eval_num_test}
    return {"num_train": min(args.eval_num_train, num_rows), "num_test": min(args.eval_num_test, num_rows)}


def controllability_summary(report: dict) -> dict[str, float]:
    """The scalar figures of a controllability report, for loggers and the metrics table."""
    summary = {f"reconstruction_accuracy_{name}": value for name, value in report["reconstruction_accuracy"].items()}
    summary["reconstruction_psnr"] = report["reconstruction_psnr"]
    summary["mean_swap_accuracy"] = report["mean_swap_accuracy"]
    summary["mean_traversal_accuracy"] = report["mean_traversal_accuracy"]
    summary["mean_factor_swap_accuracy"] = report["mean_factor_swap_accuracy"]
    if report["mean_group_swap_accuracy"] is not None:
        summary["mean_group_swap_accuracy"] = report["mean_group_swap_accuracy"]
    summary["num_units_holding_a_factor"] = float(report["num_units_holding_a_factor"])
    return summary


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The metrics without the per-unit controllability details, flattened to `group/name` floats."""
    return flatten_metrics({group: values for group, values in metrics.items() if group != "controllability_details"})


def validation_sources(dataset: datasets.Dataset, args, channels: int, num_images: int | None = None) -> torch.Tensor:
    """`num_images` (default `--num_validation_images`) rows drawn under `--seed`, as `(B, channels, res, res)`."""
    num_images = args.num_validation_images if num_images is None else num_images
    rows = np.random.RandomState(args.seed).choice(len(dataset), size=min(num_images, len(dataset)), replace=False)
    return prepare_images(dataset.select(sorted(rows.tolist()))["image"], args.resolution, channels)


def interchange_columns(pipeline: DisentangledDiffusionPipeline, dataset: datasets.Dataset, args, channels: int) -> list[int | list[int]]:
    """The swap columns of the validation grid: every unit, then every group of two or more units that the fitted
    anchorer links (`pipe.unit_groups` on up to 512 training images), whose swap moves the attribute they share."""
    columns: list[int | list[int]] = list(range(pipeline.encoder.config.num_units))
    if pipeline.anchorer is None or not pipeline.anchorer.is_fitted:
        return columns
    images = validation_sources(dataset, args, channels, num_images=512)
    return columns + [group for group in pipeline.unit_groups(images) if len(group) > 1]


def log_validation(pipeline, dataset, args, accelerator, step: int, final: bool = False) -> tuple[PIL.Image.Image, dict | None]:
    logger.info(f"step {step}: {'final ' if final else ''}validation started")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    channels = pipeline.encoder.config.in_channels
    sources = validation_sources(dataset, args, channels)
    columns = interchange_columns(pipeline, dataset, args, channels)
    grid = pipeline.interchange_grid(
        sources, unit_indices=columns, num_inference_steps=args.validation_inference_steps, generator=generator
    )
    os.makedirs(os.path.join(args.output_dir, "validation"), exist_ok=True)
    grid.save(os.path.join(args.output_dir, "validation", f"interchange-{step}.png"))
    metrics = evaluate(pipeline, dataset, args, final)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("interchange_grid", np.asarray(grid), step, dataformats="HWC")
    if metrics is not None:
        accelerator.log({f"metrics/{k}": v for k, v in scalar_metrics(metrics).items()}, step=step)
        logger.info(f"step {step}: " + ", ".join(f"{k}={v:.3f}" for k, v in scalar_metrics(metrics).items()))
    logger.info(f"step {step}: validation took {time.perf_counter() - start:.0f} s")
    return grid, metrics


def encoder_metrics_table(metrics: dict | None, sizes: dict[str, int], dci_booster: str = "exact") -> str:
    if metrics is None:
        return "No factor labels for this dataset (or the grid is larger than --eval_max_rows): not measured."
    encoder_metrics = {group: values for group, values in metrics.items() if not group.startswith("controllability")}
    rows = [f"| {name} | {value:.3f} |" for name, value in flatten_metrics(encoder_metrics).items()]
    intro = (
        f"Each metric draws {sizes['num_train']:,} training and {sizes['num_test']:,} test rows of the factor grid, with "
        "replacement. Plain names score the scalar units; `token_pca/` names score the first principal component of "
        "each unit's anchored token, as the official evaluation does."
    )
    if dci_booster == "histogram":
        intro += (
            " DCI was scored with LightGBM's histogram booster (`--dci_booster histogram`), an approximation of "
            "disentanglement_lib's classifiers: compare it only with figures scored the same way."
        )
    return intro + "\n\n| metric | value |\n|---|---|\n" + "\n".join(rows)


def controllability_section(metrics: dict | None) -> str:
    """The card's account of the renders: reconstruction per factor, then swap and traversal per unit."""
    if metrics is None or "controllability_details" not in metrics:
        return "Not measured (it needs a dataset with factor labels, and `--control_num_sources` above 0)."
    details = metrics["controllability_details"]
    settings = details["settings"]
    lines = [
        f"A factor classifier trained on the dataset's own images (held-out accuracy "
        f"{min(details['factor_classifier'].get('held_out_accuracy', {'-': float('nan')}).values()):.2f} for its "
        f"weakest factor) reads the renders. {settings['num_sources']} sources, {settings['num_inference_steps']} "
        f"sampling steps. Reconstruction PSNR {details['reconstruction_psnr']:.1f} dB.",
        "",
        "| factor | reconstruction accuracy |",
        "|---|---|",
        *(f"| {name} | {value:.2f} |" for name, value in details["reconstruction_accuracy"].items()),
        "",
    ]
    if not details["units"]:
        lines.append(f"No unit holds a factor (at least {settings['unit_share_threshold']:.0%} of its variance).")
        return "\n".join(lines)
    lines += [
        f"Units that hold a factor (it explains at least {settings['unit_share_threshold']:.0%} of the unit's "
        "variance). Swap: the unit taken from a donor with another value of the factor; a render counts when the "
        "donor's value is read and every other factor that some unit holds keeps the source's. Traversal: the unit set to its mean at each "
        "value of the factor; a render counts when that value is read.",
        "",
        "| unit | factor | share | swap accuracy | donor value read | others kept | traversal accuracy |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {u['unit']} | {u['factor']} | {u['share']:.2f} | {u['swap_accuracy']:.2f} | "
            f"{u['swap_target_accuracy']:.2f} | {u['swap_others_kept']:.2f} | {u['traversal_accuracy']:.2f} |"
            for u in details["units"]
        ),
        "",
        f"Mean swap accuracy {details['mean_swap_accuracy']:.2f}, mean traversal accuracy "
        f"{details['mean_traversal_accuracy']:.2f}.",
        "",
        "Factor swap: every unit that holds the factor taken from the donor at once.",
        "",
        "| factor | units | swap accuracy | donor value read | others kept |",
        "|---|---|---|---|---|",
        *(
            f"| {f['factor']} | {', '.join(map(str, f['units']))} | {f['swap_accuracy']:.2f} | "
            f"{f['swap_target_accuracy']:.2f} | {f['swap_others_kept']:.2f} |"
            for f in details["factors"]
        ),
        "",
        f"Mean factor swap accuracy {details['mean_factor_swap_accuracy']:.2f}.",
    ]
    if details["groups"]:
        lines += [
            "",
            "Group swap: the edit made without labels. Units whose anchor assignments depend on each other form a "
            "group (`pipe.unit_groups(images)`), and the whole group is taken from the donor.",
            "",
            "| units | factor | swap accuracy | donor value read | others kept |",
            "|---|---|---|---|---|",
            *(
                f"| {', '.join(map(str, g['units']))} | {g['factor']} | {g['swap_accuracy']:.2f} | "
                f"{g['swap_target_accuracy']:.2f} | {g['swap_others_kept']:.2f} |"
                for g in details["groups"]
            ),
            "",
            f"Mean group swap accuracy {details['mean_group_swap_accuracy']:.2f}.",
        ]
    return "\n".join(lines)


def unit_summary(args, gates: list[float] | None = None) -> str:
    """The card's sentence on the units; `gates` are the `(num_units,)` final gates of an encoder with `unit_gates`."""
    parts = []
    if args.unit_gates:
        parts.append(
            f"The units are whitened (no two carry the same signal), each unit is scaled by a learned gate, and while "
            f"training noise of {args.unit_noise} standard deviations of a whitened unit is added to each, so that a "
            f"gate sets how much its unit can carry"
        )
        if args.unit_gate_weight > 0:
            parts.append(f"the mean gate is added to the loss with weight {args.unit_gate_weight}")
        if gates is not None:
            closed = [str(unit) for unit, gate in enumerate(gates) if gate < 0.2]
            parts.append(
                f"the gates end at {', '.join(f'{gate:.2f}' for gate in gates)} for units 0 to {len(gates) - 1}"
                + (f" (unit{'s' if len(closed) > 1 else ''} {', '.join(closed)} closed, below 0.2)" if closed else "")
            )
    else:
        if args.unit_noise > 0:
            parts.append(f"While training, noise of {args.unit_noise} batch standard deviations is added to each unit")
        if args.unit_whitening:
            parts.append("the units are whitened (no two carry the same signal)")
    if args.unit_whitening and args.whitening_shrinkage > 0:
        parts.append(
            f"the whitening adds {args.whitening_shrinkage} of the units' mean variance to their covariance's diagonal, "
            f"so that a unit of small variance stays small"
        )
    if args.unit_kurtosis_weight > 0:
        parts.append(f"the units' kurtosis is added to the loss with weight {args.unit_kurtosis_weight}")
        if args.unit_kurtosis_floor > 0:
            parts[-1] += f", counting only what lies above {args.unit_kurtosis_floor}"
    if args.unit_skewness_weight > 0:
        parts.append(f"the units' squared skewness is added to the loss with weight {args.unit_skewness_weight}")
    if args.unit_dependence_weight > 0:
        parts.append(
            f"their mean pairwise dependence (kernel HSIC) is added to the loss with weight {args.unit_dependence_weight}"
        )
    if args.swap_consistency_weight > 0:
        parts.append(
            f"the first {min(args.swap_consistency_batch_size, args.train_batch_size)} images of each batch are also "
            f"rendered with one unit taken from another image, and the distance between the units read back from that "
            f"render and the edited units is added to the loss with weight {args.swap_consistency_weight}"
        )
    if args.unit_posterior == "gaussian" and args.unit_whitening:
        charged = "that width and each unit's spread" if args.whitening_shrinkage > 0 else "only that width"
        parts.append(
            f"while training, each whitened unit is the mean of a Gaussian posterior whose width the encoder predicts "
            f"(a training noise learned per image and per unit), and its KL divergence from N(0, 1), which for "
            f"whitened units charges {charged}, is added to the loss with weight {args.unit_kl_weight}"
        )
    elif args.unit_posterior == "gaussian":
        parts.append(
            f"each unit is the mean of a Gaussian posterior whose KL divergence from N(0, 1) is added to the loss "
            f"with weight {args.unit_kl_weight}"
        )
    if not parts:
        return "No noise, whitening or kurtosis term on the units."
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def render_model_card(
    args,
    metrics: dict | None,
    num_images: int,
    wall_minutes: float,
    total_minutes: float | None,
    num_processes: int,
    device: str,
    gates: list[float] | None = None,
) -> ModelCard:
    dataset = args.dataset or args.dataset_name
    card_data = ModelCardData(
        library_name="diffusers", license="apache-2.0", tags=["disentanglement", "dyga", "diffusers-dyga"]
    )
    total_batch = args.train_batch_size * num_processes * args.gradient_accumulation_steps
    if args.dyga:
        criterion = {"bic": "BIC", "icl": "ICL (BIC plus the entropy of the assignments)"}[args.dyga_selection_criterion]
        if args.dyga_structure == "official":
            components = (
                f"the official rules: {args.dyga_init_components} Gaussians per unit started at random tokens, split "
                f"by density or at random up to {args.dyga_max_components}, components under 10 tokens pruned"
            )
        elif args.dyga_fit_space == "principal":
            components = (
                f"each unit's number of Gaussians (at most {args.dyga_max_components}) chosen by {criterion} on the "
                "first principal direction of its tokens"
            )
        else:
            components = (
                f"{args.dyga_init_components} Gaussians per unit to start with, split and merged by {criterion} up to "
                f"at most {args.dyga_max_components}, over the unit's tokens"
            )
        strength = {
            "adaptive": "the paper's pull 0.1 exp(-mean |(c - mu) / c|) per token",
            "batch": "the official pull 0.1 exp(-mean |(c - mu) / c|), one per batch",
            "fixed": f"a fixed pull of {args.dyga_lambda}",
        }[args.dyga_lambda_mode]
        dyga_summary = f"refitted every {args.dyga_every} steps on {args.dyga_samples} images, {components}, {strength}"
    else:
        dyga_summary = "off"
    if args.token_dropout > 0:
        guidance_summary = (
            f"tokens dropped for {args.token_dropout:.0%} of the training images; the pipeline renders at guidance "
            f"scale {args.guidance_scale} by default (`guidance_scale=` overrides it)"
        )
    else:
        guidance_summary = "off"
    card = ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARD_TEMPLATE),
        model_name=args.hub_model_id or Path(args.output_dir).name,
        repo_id=args.hub_model_id or args.output_dir,
        dataset=dataset + (f" with factor sizes {', '.join(map(str, args.factor_sizes))}" if args.factor_sizes else ""),
        num_images=num_images,
        resolution=args.resolution,
        model_config=args.model_config,
        num_units=args.num_units,
        unit_dim=args.unit_dim,
        unit_summary=unit_summary(args, gates),
        max_train_steps=args.max_train_steps,
        total_batch_size=total_batch,
        train_batch_size=args.train_batch_size,
        num_processes=num_processes,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        encoder_learning_rate=args.encoder_learning_rate or args.learning_rate,
        lr_scheduler=args.lr_scheduler,
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule,
        beta_start=args.beta_start,
        beta_end=args.beta_end,
        prediction_type=args.prediction_type,
        loss=args.loss + (
            f" weighted toward the image's edges ({args.detail_loss_weight:.0%} of each pixel's weight)"
            if args.detail_loss_weight > 0
            else ""
        ),
        timestep_summary=(
            "training timesteps drawn uniformly"
            if args.timestep_bias_power == 1
            else f"training timesteps drawn with density proportional to t^{args.timestep_bias_power - 1:g}"
        ),
        skip_dropout=args.skip_dropout,
        dyga_summary=dyga_summary,
        guidance_summary=guidance_summary,
        ema_summary=f"decay {args.ema_decay}" if args.use_ema else "off",
        training_time=(
            f"{total_minutes:.1f} minutes" if total_minutes is not None
            else f"{wall_minutes:.1f} minutes in the last resumed part (earlier parts' checkpoints did not record theirs)"
        ),  # fmt: skip
        device=device,
        metrics_table=encoder_metrics_table(metrics, metric_sizes(args, num_images, final=True), args.dci_booster),
        controllability_section=controllability_section(metrics),
    )
    return populate_model_card(card, tags=["disentangled-representation-learning"])


def main(args: argparse.Namespace) -> str:
    logging_dir = os.path.join(args.output_dir, args.logging_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        dynamo_backend=args.torch_compile,
        log_with=args.report_to if args.report_to != "none" else None,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise ValueError(
            f"{launched} processes were launched but accelerate did not set up distributed training, so each would "
            "train alone and overwrite the others' output. On CPUs, set ACCELERATE_USE_CPU=true (or pick multi-CPU "
            "in `accelerate config`)."
        )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    set_tf32(args.allow_tf32)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    with accelerator.main_process_first():
        dataset = load_training_data(args)
    in_channels = image_channels(dataset)

    vae = None
    if args.vae is not None:
        vae_class = AutoencoderKL if read_vae_config(args.vae)["_class_name"] == "AutoencoderKL" else VQModel
        vae = vae_class.from_pretrained(args.vae).requires_grad_(False).eval()
        if vae.config.in_channels != in_channels:
            raise ValueError(f"The VAE takes {vae.config.in_channels} channels, the images have {in_channels}.")
    latent_channels = vae.config.latent_channels if vae is not None else in_channels
    encoder, unet, anchorer, noise_scheduler = build_models(args, in_channels, latent_channels)

    ema_unet = ema_encoder = None
    if args.use_ema:
        ema_unet = EMAModel(unet.parameters(), decay=args.ema_decay, model_cls=SkipDropoutUNet, model_config=unet.config)
        ema_encoder = EMAModel(
            encoder.parameters(), decay=args.ema_decay, model_cls=DisentangledEncoder, model_config=encoder.config
        )

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                unwrapped = accelerator.unwrap_model(model)
                name = "unet" if isinstance(unwrapped, SkipDropoutUNet) else "encoder"
                unwrapped.save_pretrained(os.path.join(output_dir, name))
            anchorer.save_pretrained(os.path.join(output_dir, "anchorer"))
            if args.use_ema:
                # EMAModel.save_pretrained builds a randomly initialised model: keep the training's random stream as it
                # was, so that saving a checkpoint does not change the run.
                with torch.random.fork_rng(devices=[]):
                    ema_unet.save_pretrained(os.path.join(output_dir, "unet_ema"))
                    ema_encoder.save_pretrained(os.path.join(output_dir, "encoder_ema"))
        while weights:
            weights.pop()

    def load_model_hook(models, input_dir):
        while models:
            model = accelerator.unwrap_model(models.pop())
            model_class = type(model)
            name = "unet" if isinstance(model, SkipDropoutUNet) else "encoder"
            loaded = model_class.from_pretrained(input_dir, subfolder=name)
            model.load_state_dict(loaded.state_dict())
            del loaded
        anchorer.load_state_dict(DyGAAnchorer.from_pretrained(input_dir, subfolder="anchorer").state_dict())
        anchorer.to(accelerator.device)
        if args.use_ema:
            for ema, name, model_class in ((ema_unet, "unet_ema", SkipDropoutUNet), (ema_encoder, "encoder_ema", DisentangledEncoder)):
                loaded = EMAModel.from_pretrained(os.path.join(input_dir, name), model_cls=model_class)
                ema.load_state_dict(loaded.state_dict())
                ema.to(accelerator.device)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    optimizer = build_optimizer(args, encoder, unet)

    images = training_images(args, accelerator, dataset, in_channels)
    sampler = EpochSampler(len(dataset), args.seed)
    train_dataloader = torch.utils.data.DataLoader(
        images.batch_source(),
        batch_size=args.train_batch_size,
        sampler=sampler,
        collate_fn=images.collate,
        num_workers=args.dataloader_num_workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    if len(train_dataloader) == 0:
        raise ValueError(f"The dataset has {len(dataset)} images, fewer than one batch of {args.train_batch_size}.")

    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    encoder, unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        encoder, unet, optimizer, train_dataloader, lr_scheduler
    )
    anchorer.to(accelerator.device)
    if vae is not None:
        vae.to(accelerator.device)
    if args.use_ema:
        ema_unet.to(accelerator.device)
        ema_encoder.to(accelerator.device)
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)

    if accelerator.is_main_process:
        tracker_config = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
        accelerator.init_trackers("diffusers-dyga", config=tracker_config)

    global_step, first_epoch, resume_step = 0, 0, 0
    earlier_seconds: float | None = 0.0
    candidates = resume_candidates(args) if args.resume_from_checkpoint else []
    if candidates:
        for index, path in enumerate(candidates):
            try:
                earlier_seconds = load_checkpoint(accelerator, path, args)
                break
            except ValueError as error:
                if index == len(candidates) - 1 or args.resume_from_checkpoint != "latest":
                    raise
                logger.warning(f"{error} Falling back to {candidates[index + 1]}.")
        accelerator.print(f"Resuming from {path}")
        global_step = checkpoint_step(path)
        first_epoch = global_step // num_update_steps_per_epoch
        resume_step = (global_step % num_update_steps_per_epoch) * args.gradient_accumulation_steps

    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(f"  Num examples = {len(dataset)}; total batch size = {total_batch_size}; steps = {args.max_train_steps}")
    progress_bar = tqdm(range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process)
    scaling = getattr(vae.config, "scaling_factor", 1.0) if vae is not None else 1.0
    dyga_fits = []
    initial_step = global_step
    time_up = False
    on_gpu = accelerator.device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    start_time = time.perf_counter()

    def training_seconds() -> float | None:
        """Seconds of training behind the current weights, over this run and the runs it resumed."""
        return None if earlier_seconds is None else earlier_seconds + time.perf_counter() - start_time

    def to_latents(pixels: torch.Tensor) -> torch.Tensor:
        if vae is None:
            return pixels
        with torch.no_grad():
            encoded = vae.encode(pixels.to(vae.dtype))
            latents = encoded.latent_dist.sample() if hasattr(encoded, "latent_dist") else encoded.latents
        return latents * scaling

    for epoch in range(first_epoch, num_train_epochs):
        train_dataloader.set_epoch(epoch)
        epoch_loader = train_dataloader
        if epoch == first_epoch and resume_step:
            epoch_loader = accelerator.skip_first_batches(train_dataloader, resume_step)
            epoch_loader.set_epoch(epoch)
        for batch in epoch_loader:
            if global_step >= args.max_train_steps:
                break
            with accelerator.accumulate(encoder, unet):
                pixels = batch["pixel_values"]
                pixels = to_model_range(pixels) if pixels.dtype == torch.uint8 else pixels
                try:
                    step_loss = training_loss(args, encoder, unet, anchorer, noise_scheduler, pixels, to_latents(pixels))
                except FloatingPointError as error:
                    stop_diverged_run(args, global_step + 1, f"the encoder failed: {error}", lr_scheduler.get_last_lr()[0])
                loss, denoising_loss = step_loss.loss, step_loss.denoising
                if not torch.isfinite(loss):
                    stop_diverged_run(
                        args, global_step + 1, f"the loss is {loss.item()} (denoising loss {denoising_loss.item()})",
                        lr_scheduler.get_last_lr()[0],
                    )  # fmt: skip
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    parameters = list(encoder.parameters()) + list(unet.parameters())
                    grad_norm = accelerator.clip_grad_norm_(parameters, args.max_grad_norm or math.inf)
                    if args.mixed_precision != "fp16" and grad_norm is not None and not torch.isfinite(grad_norm):
                        stop_diverged_run(
                            args, global_step + 1, f"the gradient norm is {grad_norm.item()}", lr_scheduler.get_last_lr()[0]
                        )
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()

            if not accelerator.sync_gradients:
                continue
            if args.use_ema:
                ema_unet.step(unet.parameters())
                ema_encoder.step(encoder.parameters())
            progress_bar.update(1)
            global_step += 1
            logs = {
                "loss": loss.detach().item(),
                "denoising_loss": denoising_loss.detach().item(),
                "lr": lr_scheduler.get_last_lr()[0],
            }
            if step_loss.kurtosis is not None:
                logs["unit_kurtosis"] = step_loss.kurtosis.detach().item()
            if step_loss.skewness is not None:
                logs["unit_skewness"] = step_loss.skewness.detach().item()
            if step_loss.dependence is not None:
                logs["unit_dependence"] = step_loss.dependence.detach().item()
            if step_loss.swap_consistency is not None:
                logs["swap_consistency"] = step_loss.swap_consistency.detach().item()
            if step_loss.unit_kl is not None:
                logs["unit_kl"] = step_loss.unit_kl.detach().item()
            if step_loss.gates is not None:
                logs["unit_gates"] = step_loss.gates.detach().item()
            if args.dyga and global_step % args.dyga_every == 0:
                fit = fit_anchorer(args, accelerator, accelerator.unwrap_model(encoder), anchorer, images, global_step)
                dyga_fits.append(fit)
                logs["dyga/mean_components"] = float(np.mean(fit["num_components"]))
                logs["dyga/fit_seconds"] = fit["seconds"]
                logger.info(f"step {global_step}: DyGA refitted in {fit['seconds']:.1f} s, components per unit {fit['num_components']}")
            accelerator.log(logs, step=global_step)
            progress_bar.set_postfix(loss=logs["loss"])

            if global_step % args.checkpointing_steps == 0:
                saved = save_checkpoint(
                    accelerator, args.output_dir, global_step, resume_settings(args), args.checkpoints_total_limit,
                    training_seconds(),
                )  # fmt: skip
                logger.info(f"Saved {saved}")

            if accelerator.is_main_process and global_step % args.validation_steps == 0 and global_step < args.max_train_steps:
                with ema_weights(args, ema_unet, ema_encoder, unet, encoder):
                    pipeline = make_pipeline(args, accelerator, encoder, unet, anchorer if args.dyga else None, vae, noise_scheduler)
                    log_validation(pipeline, dataset, args, accelerator, global_step)
            time_up = global_step < args.max_train_steps and out_of_time(args, accelerator, start_time)
            if global_step >= args.max_train_steps or time_up:
                break
        if global_step >= args.max_train_steps or time_up:
            break

    if time_up:
        if global_step % args.checkpointing_steps:
            saved = save_checkpoint(
                accelerator, args.output_dir, global_step, resume_settings(args), args.checkpoints_total_limit,
                training_seconds(),
            )  # fmt: skip
            logger.info(f"Saved {saved}")
        accelerator.print(
            f"Stopped after {args.max_train_minutes} minutes at step {global_step} of {args.max_train_steps}; the same "
            "command with --resume_from_checkpoint latest goes on from there."
        )
        accelerator.end_training()
        return args.output_dir

    accelerator.wait_for_everyone()
    encoder, unet = accelerator.unwrap_model(encoder), accelerator.unwrap_model(unet)
    if args.use_ema:
        ema_unet.copy_to(unet.parameters())
        ema_encoder.copy_to(encoder.parameters())
    refitted_last_step = bool(dyga_fits) and dyga_fits[-1]["step"] == global_step
    if args.dyga and (args.use_ema or not refitted_last_step):
        dyga_fits.append(fit_anchorer(args, accelerator, encoder, anchorer, images, global_step))
    if accelerator.is_main_process:
        wall_minutes = (time.perf_counter() - start_time) / 60
        total_seconds = training_seconds()
        total_minutes = None if total_seconds is None else total_seconds / 60
        pipeline = make_pipeline(args, accelerator, encoder, unet, anchorer if args.dyga else None, vae, noise_scheduler)
        save_pipeline(pipeline, args.output_dir)
        logger.info(f"Saved the pipeline to {args.output_dir}")
        grid, metrics = log_validation(pipeline, dataset, args, accelerator, global_step, final=True)
        grid.save(os.path.join(args.output_dir, "interchange_grid.png"))
        device = torch.cuda.get_device_name(accelerator.device) if on_gpu else f"CPU ({os.cpu_count()} cores)"
        report = {
            "steps": global_step,
            "wall_minutes": wall_minutes,
            "total_training_minutes": total_minutes,
            "process_cpu_minutes": time.process_time() / 60,
            "device": device,
            "mixed_precision": accelerator.mixed_precision,
            "tf32": on_gpu and args.allow_tf32 and torch.cuda.get_device_capability(accelerator.device)[0] >= 8,
            "torch_compile": args.torch_compile,
            "images_per_second": (global_step - initial_step) * total_batch_size / (wall_minutes * 60),
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(accelerator.device) / 2**30 if on_gpu else None,
            "metrics": metrics,
            "dci_booster": args.dci_booster,
            "metric_sizes": {
                "validation": metric_sizes(args, len(dataset), final=False),
                "final": metric_sizes(args, len(dataset), final=True),
            },
            "dyga_fits": dyga_fits,
            "unit_gates": encoder.gates.tolist() if encoder.config.unit_gates else None,
        }
        with open(os.path.join(args.output_dir, "training_report.json"), "w") as file:
            json.dump(report, file, indent=2)
        card = render_model_card(
            args, metrics, len(dataset), wall_minutes, total_minutes, accelerator.num_processes, device, report["unit_gates"]
        )
        card.save(os.path.join(args.output_dir, "README.md"))
        logger.info(f"Saved the training report and the model card to {args.output_dir}")
        if args.push_to_hub:
            repo_id = create_repo(args.hub_model_id, exist_ok=True, token=args.hub_token, private=args.hub_private_repo).repo_id
            upload_folder(
                repo_id=repo_id,
                folder_path=args.output_dir,
                commit_message="Upload DisentangledDiffusionPipeline trained with diffusers-dyga",
                ignore_patterns=["checkpoint-*", "checkpoint-*/**", f"{args.logging_dir}/**", "validation/**", "step_*", "epoch_*"],
                token=args.hub_token,
            )
    accelerator.end_training()
    return args.output_dir


def out_of_time(args, accelerator: Accelerator, start_time: float) -> bool:
    """Whether `--max_train_minutes` have passed, as the main process's clock says (so every process stops together)."""
    if args.max_train_minutes is None:
        return False
    elapsed = torch.tensor([time.perf_counter() - start_time], device=accelerator.device)
    return bool(broadcast(elapsed)[0] >= args.max_train_minutes * 60)


def stop_diverged_run(args, step: int, what: str, learning_rate: float) -> None:
    """Stops a diverged run before its weights are stepped, so that every saved checkpoint is finite."""
    newest, _ = latest_complete_checkpoint(args.output_dir)
    raise FloatingPointError(
        f"At step {step} {what}, at learning rate {learning_rate:g}: the run stopped before this step changed any "
        f"weight. Last complete checkpoint: {newest or 'none'}. Lower --learning_rate (or --encoder_learning_rate) "
        "and resume from it or restart."
    )


@contextmanager
def ema_weights(args, ema_unet, ema_encoder, unet, encoder) -> Iterator[None]:
    """The U-Net and encoder hold their EMA weights inside, their training weights again after."""
    pairs = [(ema_unet, unet), (ema_encoder, encoder)] if args.use_ema else []
    for ema, model in pairs:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    try:
        yield
    finally:
        for ema, model in pairs:
            ema.restore(model.parameters())


def make_pipeline(args, accelerator, encoder, unet, anchorer, vae, noise_scheduler) -> DisentangledDiffusionPipeline:
    pipeline = DisentangledDiffusionPipeline(
        encoder=accelerator.unwrap_model(encoder),
        unet=accelerator.unwrap_model(unet),
        scheduler=DDIMScheduler.from_config(noise_scheduler.config),
        anchorer=anchorer,
        vae=vae,
        guidance_scale=args.guidance_scale,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


if __name__ == "__main__":
    parsed = parse_args()
    try:
        main(parsed)
    except (ValueError, FloatingPointError) as error:
        raise SystemExit(f"train.py: error: {error}") from error
