"""`UNet2DConditionModel` with Skip Dropout on its skip connections."""

import inspect

import torch
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' loader looks it up here)
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from torch import nn

from .coordinates import append_coordinates
from .loading import StrictLoadingMixin


class SkipDropoutUNet(StrictLoadingMixin, UNet2DConditionModel):
    """
    A [`UNet2DConditionModel`] whose decoder skip connections are dropped during training (Skip Dropout), and that
    can read the pixel coordinates and the tokens at every pixel.

    While `training`, each skip tensor `(batch, channels, h, w)` at the chosen resolutions is multiplied by a
    per-sample, per-channel Bernoulli keep-mask with keep probability `1 - skip_dropout`, rescaled by
    `1 / (1 - skip_dropout)`. In eval mode the model is exactly its parent. All parent arguments are accepted
    unchanged; a plain `UNet2DConditionModel` checkpoint loads with the default skip dropout. Like any model with
    dropout, two forward passes in training mode differ (fresh masks): compare outputs after `.eval()`.

    Args:
        skip_dropout (`float`, defaults to 0.2): drop rate `p` of the skip channels, in `[0, 1)`.
        skip_dropout_resolutions (`tuple[int]`, *optional*): spatial sizes (in pixels of the U-Net input, e.g.
            `(32, 16, 8)` for a 32x32 input) of the skips to drop. Defaults to every resolution but the lowest. The
            official implementation drops the skips whose width is not in its attention list `[1, 2, 4]`: in its
            four-level U-Net on 16x16 latents, the 16x16 and 8x8 skips, keeping 4x4 and 2x2: the top two levels,
            which `(16, 8)` selects there (`(64, 32)` for a four-level U-Net on 64x64 pixels). Requires `sample_size`
            when given.
        coordinate_input (`bool`, defaults to `False`): append two channels holding each pixel's x and y coordinate
            (in [-1, 1]) to the input of `conv_in` (CoordConv). A convolutional U-Net fed pure noise otherwise knows a
            pixel's position only through the zero padding, so it can colour the image from the tokens but hardly
            place what they describe (an object, a wall's corner). `in_channels` stays the channels of the sample.
        broadcast_tokens (`int`, defaults to 0): when positive, the number of tokens `encoder_hidden_states` must hold;
            each token `(batch, num_tokens, cross_attention_dim)` is read out to one scalar by its own linear map and
            appended to the input of `conv_in` as a constant channel (a spatial broadcast: every pixel reads every unit
            beside its coordinates, added to the cross-attention, not replacing it). Ours, off by default.
    """

    def __init__(
        self,
        *args,
        skip_dropout: float = 0.2,
        skip_dropout_resolutions: tuple[int, ...] | None = None,
        coordinate_input: bool = False,
        broadcast_tokens: int = 0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if not 0.0 <= skip_dropout < 1.0:
            raise ValueError(f"skip_dropout must be in [0, 1), got {skip_dropout}.")
        if broadcast_tokens < 0:
            raise ValueError(f"broadcast_tokens must be >= 0, got {broadcast_tokens}.")
        if broadcast_tokens and not isinstance(self.config.cross_attention_dim, int):
            raise ValueError("broadcast_tokens needs one cross_attention_dim shared by every block.")
        self.register_to_config(
            skip_dropout=skip_dropout,
            skip_dropout_resolutions=None if skip_dropout_resolutions is None else list(skip_dropout_resolutions),
            coordinate_input=coordinate_input,
            broadcast_tokens=broadcast_tokens,
        )
        for index in self.dropped_up_blocks():
            self.up_blocks[index].register_forward_pre_hook(self._drop_skips, with_kwargs=True)
        self._broadcast_values: torch.Tensor | None = None
        if broadcast_tokens:
            dim = self.config.cross_attention_dim
            self.token_readout_weight = nn.Parameter(torch.randn(broadcast_tokens, dim) / dim**0.5)
            self.token_readout_bias = nn.Parameter(torch.zeros(broadcast_tokens))
        extra_channels = (2 if coordinate_input else 0) + broadcast_tokens
        if extra_channels:
            conv = self.conv_in
            self.conv_in = nn.Conv2d(
                conv.in_channels + extra_channels, conv.out_channels, conv.kernel_size, padding=conv.padding
            )
        if coordinate_input:
            self.conv_in.register_forward_pre_hook(self._append_coordinates)
        if broadcast_tokens:
            self.conv_in.register_forward_pre_hook(self._append_broadcast_tokens)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, *args, **kwargs):
        """The parent's forward; with `broadcast_tokens`, the tokens' read-outs also enter `conv_in`."""
        num_tokens = self.config.broadcast_tokens
        if not num_tokens:
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[1] != num_tokens:
            raise ValueError(
                f"This U-Net broadcasts {num_tokens} tokens; got encoder_hidden_states of shape "
                f"{tuple(encoder_hidden_states.shape)}, expected (batch, {num_tokens}, {self.config.cross_attention_dim})."
            )
        readout = torch.einsum("bnd,nd->bn", encoder_hidden_states, self.token_readout_weight.to(encoder_hidden_states))
        self._broadcast_values = readout + self.token_readout_bias.to(readout)
        try:
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        finally:
            self._broadcast_values = None

    def skip_resolutions(self) -> list[int]:
        """Spatial size of the skips each up block reads, lowest resolution (first up block) first."""
        sample_size = self.config.sample_size
        if sample_size is None:
            raise ValueError("skip_dropout_resolutions needs the U-Net's sample_size to be set.")
        height = sample_size if isinstance(sample_size, int) else sample_size[0]
        num_levels = len(self.up_blocks)
        return [height // 2 ** (num_levels - 1 - index) for index in range(num_levels)]

    def dropped_up_blocks(self) -> list[int]:
        """Indices of the up blocks whose skips are dropped."""
        resolutions = self.config.skip_dropout_resolutions
        if resolutions is None:
            return list(range(1, len(self.up_blocks)))
        available = self.skip_resolutions()
        unknown = sorted(set(resolutions) - set(available))
        if unknown:
            raise ValueError(f"skip_dropout_resolutions {unknown} are not skip resolutions of this U-Net ({available}).")
        return [index for index, size in enumerate(available) if size in resolutions]

    @staticmethod
    def _append_coordinates(module: nn.Module, args: tuple) -> tuple:
        return (append_coordinates(args[0]),) + args[1:]

    def _append_broadcast_tokens(self, module: nn.Module, args: tuple) -> tuple:
        sample, values = args[0], self._broadcast_values
        channels = values.to(sample.dtype)[:, :, None, None].expand(-1, -1, *sample.shape[2:])
        return (torch.cat([sample, channels], dim=1),) + args[1:]

    def _drop_skips(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        rate = self.config.skip_dropout
        if not self.training or rate == 0.0:
            return args, kwargs
        skips = kwargs["res_hidden_states_tuple"]
        kwargs["res_hidden_states_tuple"] = tuple(
            skip * torch.empty(skip.shape[:2] + (1, 1), device=skip.device, dtype=skip.dtype).bernoulli_(1.0 - rate)
            / (1.0 - rate)
            for skip in skips
        )
        return args, kwargs


def _signature_with_skip_dropout() -> inspect.Signature:
    # ConfigMixin reads the init signature to decide which config keys reach `__init__`; exposing the parent's
    # parameters here keeps every U-Net setting on reload instead of silently falling back to the defaults.
    parent = inspect.signature(UNet2DConditionModel.__init__)
    extra = [
        inspect.Parameter("skip_dropout", inspect.Parameter.KEYWORD_ONLY, default=0.2, annotation=float),
        inspect.Parameter(
            "skip_dropout_resolutions", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=tuple[int, ...] | None
        ),
        inspect.Parameter("coordinate_input", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool),
        inspect.Parameter("broadcast_tokens", inspect.Parameter.KEYWORD_ONLY, default=0, annotation=int),
    ]
    return parent.replace(parameters=list(parent.parameters.values()) + extra)


SkipDropoutUNet.__init__.__signature__ = _signature_with_skip_dropout()
