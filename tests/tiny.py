"""Tiny component factories shared by the tests."""

import torch
from diffusers import DDIMScheduler

from diffusers_dyga import DisentangledDiffusionPipeline, DisentangledEncoder, DyGAAnchorer, SkipDropoutUNet

NUM_UNITS = 4
UNIT_DIM = 8
SIZE = 16


def tiny_unet_kwargs(**overrides) -> dict:
    kwargs = dict(
        sample_size=SIZE,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=UNIT_DIM,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    kwargs.update(overrides)
    return kwargs


def tiny_encoder(**overrides) -> DisentangledEncoder:
    torch.manual_seed(0)
    kwargs = dict(
        sample_size=SIZE,
        in_channels=3,
        num_units=NUM_UNITS,
        unit_dim=UNIT_DIM,
        block_out_channels=(8, 16),
        hidden_dim=32,
        token_hidden_dim=16,
    )
    kwargs.update(overrides)
    return DisentangledEncoder(**kwargs)


def tiny_unet(**overrides) -> SkipDropoutUNet:
    torch.manual_seed(0)
    return SkipDropoutUNet(**tiny_unet_kwargs(**overrides))


def random_images(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def tiny_pipeline(fit_anchorer: bool = True) -> DisentangledDiffusionPipeline:
    encoder = tiny_encoder()
    anchorer = DyGAAnchorer(num_units=NUM_UNITS, unit_dim=UNIT_DIM, max_components=4, init_components=2)
    if fit_anchorer:
        with torch.no_grad():
            anchorer.fit(encoder(random_images(64, seed=1)).tokens)
    pipe = DisentangledDiffusionPipeline(
        encoder=encoder, unet=tiny_unet(), scheduler=DDIMScheduler(num_train_timesteps=100), anchorer=anchorer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
