import pytest
import torch
from diffusers import UNet2DConditionModel

from diffusers_dyga import SkipDropoutUNet

from .tiny import SIZE, UNIT_DIM, tiny_unet, tiny_unet_kwargs


def unet_inputs(batch: int = 3):
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, 3, SIZE, SIZE, generator=generator)
    timesteps = torch.tensor([1, 40, 90])[:batch]
    tokens = torch.randn(batch, 4, UNIT_DIM, generator=generator)
    return sample, timesteps, tokens


def plain_unet_with_same_weights(unet: SkipDropoutUNet) -> UNet2DConditionModel:
    plain = UNet2DConditionModel(**tiny_unet_kwargs())
    plain.load_state_dict(unet.state_dict())
    return plain


def test_eval_mode_equals_plain_unet_exactly():
    unet = tiny_unet(skip_dropout=0.5).eval()
    plain = plain_unet_with_same_weights(unet).eval()
    assert torch.equal(unet(*unet_inputs()).sample, plain(*unet_inputs()).sample)


def test_training_mode_drops_skips_and_zero_rate_does_not():
    plain = plain_unet_with_same_weights(tiny_unet()).train()
    unet = tiny_unet(skip_dropout=0.5).train()
    assert not torch.allclose(unet(*unet_inputs()).sample, plain(*unet_inputs()).sample)
    unet_off = tiny_unet(skip_dropout=0.0).train()
    assert torch.equal(unet_off(*unet_inputs()).sample, plain(*unet_inputs()).sample)


def test_mask_is_per_sample_per_channel_and_rescaled():
    unet = tiny_unet(skip_dropout=0.25).train()
    skips = (torch.ones(64, 32, 4, 4), torch.ones(64, 32, 4, 4))
    torch.manual_seed(0)
    _, kwargs = unet._drop_skips(unet.up_blocks[1], (), {"res_hidden_states_tuple": skips})
    for dropped in kwargs["res_hidden_states_tuple"]:
        assert torch.all((dropped == 0) | torch.isclose(dropped, torch.tensor(1 / 0.75)))
        assert torch.all(dropped == dropped[:, :, :1, :1]), "mask must be constant over space"
        assert dropped[:, :, 0, 0].std(dim=0).sum() > 0, "mask must differ between samples"
        keep_rate = (dropped[:, :, 0, 0] > 0).float().mean()
        assert abs(keep_rate - 0.75) < 0.05
    first, second = kwargs["res_hidden_states_tuple"]
    assert not torch.equal(first, second), "each skip tensor draws its own mask"


def test_default_drops_all_but_the_lowest_resolution():
    unet = tiny_unet()
    assert unet.skip_resolutions() == [SIZE // 2, SIZE]
    assert unet.dropped_up_blocks() == [1]
    assert len(unet.up_blocks[0]._forward_pre_hooks) == 0
    assert len(unet.up_blocks[1]._forward_pre_hooks) == 1


def test_lowest_resolution_skips_reach_the_block_unchanged():
    unet = tiny_unet(skip_dropout=0.9).train()
    seen = {}

    def record_skips(module, args, kwargs):
        seen["up"] = kwargs["res_hidden_states_tuple"]

    def record_down(module, args, output):
        seen.setdefault("down", []).extend(output[1])

    unet.up_blocks[0].register_forward_pre_hook(record_skips, with_kwargs=True)
    for block in unet.down_blocks:
        block.register_forward_hook(record_down)
    unet(*unet_inputs())
    lowest = [skip for skip in seen["down"] if skip.shape[-1] == SIZE // 2]
    assert len(seen["up"]) == len(lowest) == 2
    for got, expected in zip(seen["up"], lowest):
        assert torch.equal(got, expected)


def test_chosen_resolutions(tmp_path):
    unet = tiny_unet(skip_dropout_resolutions=(SIZE // 2,))
    assert unet.dropped_up_blocks() == [0]
    with pytest.raises(ValueError, match="not skip resolutions"):
        tiny_unet(skip_dropout_resolutions=(5,))
    with pytest.raises(ValueError, match="skip_dropout must be in"):
        tiny_unet(skip_dropout=1.0)


def test_config_round_trips_through_save_and_from_config(tmp_path):
    unet = tiny_unet(skip_dropout=0.35, skip_dropout_resolutions=(SIZE // 2, SIZE))
    unet.save_pretrained(tmp_path)
    loaded = SkipDropoutUNet.from_pretrained(tmp_path)
    rebuilt = SkipDropoutUNet.from_config(unet.config)
    for other in (loaded, rebuilt):
        assert other.config.skip_dropout == 0.35
        assert list(other.config.skip_dropout_resolutions) == [SIZE // 2, SIZE]
        assert tuple(other.config.block_out_channels) == (16, 32)
        assert other.config.cross_attention_dim == UNIT_DIM
        assert other.dropped_up_blocks() == [0, 1]
    loaded.eval(), unet.eval()
    assert torch.equal(loaded(*unet_inputs()).sample, unet(*unet_inputs()).sample)


def test_loads_a_plain_unet_checkpoint(tmp_path):
    torch.manual_seed(0)
    plain = UNet2DConditionModel(**tiny_unet_kwargs()).eval()
    plain.save_pretrained(tmp_path)
    loaded = SkipDropoutUNet.from_pretrained(tmp_path)
    assert isinstance(loaded, SkipDropoutUNet)
    assert loaded.config.skip_dropout == 0.2
    assert tuple(loaded.config.block_out_channels) == (16, 32)
    assert torch.equal(loaded(*unet_inputs()).sample, plain(*unet_inputs()).sample)


def test_coordinate_input_gives_the_first_conv_each_pixels_position(tmp_path):
    unet = tiny_unet(coordinate_input=True).eval()
    assert unet.config.in_channels == 3 and unet.conv_in.in_channels == 5
    seen = []
    unet.conv_in.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    sample, tokens = torch.zeros(2, 3, SIZE, SIZE), torch.randn(2, 4, UNIT_DIM)
    with torch.no_grad():
        output = unet(sample, 10, encoder_hidden_states=tokens).sample
    coordinates = seen[0][:, 3:]
    assert output.shape == sample.shape and seen[0].shape == (2, 5, SIZE, SIZE)
    assert coordinates[0, 0, 0].tolist() == torch.linspace(-1, 1, SIZE).tolist()
    assert coordinates[0, 1, :, 0].tolist() == torch.linspace(-1, 1, SIZE).tolist()
    assert torch.equal(coordinates[0], coordinates[1])

    unet.save_pretrained(tmp_path)
    reloaded = SkipDropoutUNet.from_pretrained(tmp_path).eval()
    assert reloaded.config.coordinate_input and reloaded.conv_in.in_channels == 5
    with torch.no_grad():
        assert torch.equal(reloaded(sample, 10, encoder_hidden_states=tokens).sample, output)


def test_broadcast_tokens_give_every_pixel_each_tokens_readout(tmp_path):
    unet = tiny_unet(coordinate_input=True, broadcast_tokens=4).eval()
    assert unet.config.in_channels == 3 and unet.conv_in.in_channels == 3 + 2 + 4
    seen = []
    unet.conv_in.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    sample, timesteps, tokens = unet_inputs()
    with torch.no_grad():
        output = unet(sample, timesteps, encoder_hidden_states=tokens).sample
        readout = (tokens * unet.token_readout_weight).sum(-1) + unet.token_readout_bias
    broadcast = seen[0][:, 5:]
    assert broadcast.shape == (3, 4, SIZE, SIZE)
    assert torch.allclose(broadcast, readout[:, :, None, None].expand_as(broadcast))
    assert torch.equal(seen[0][:, :3], sample)

    with torch.no_grad():
        unet.token_readout_bias.add_(1.0)
        assert not torch.allclose(unet(sample, timesteps, encoder_hidden_states=tokens).sample, output)
        unet.token_readout_bias.sub_(1.0)
    unet.save_pretrained(tmp_path)
    reloaded = SkipDropoutUNet.from_pretrained(tmp_path).eval()
    assert reloaded.config.broadcast_tokens == 4 and reloaded.conv_in.in_channels == 9
    with torch.no_grad():
        assert torch.equal(reloaded(sample, timesteps, encoder_hidden_states=tokens).sample, output)


def test_broadcast_tokens_refuses_another_number_of_tokens():
    unet = tiny_unet(broadcast_tokens=4).eval()
    sample, timesteps, tokens = unet_inputs()
    with pytest.raises(ValueError, match=r"broadcasts 4 tokens.*\(3, 3, 8\)"):
        unet(sample, timesteps, encoder_hidden_states=tokens[:, :3])
    with pytest.raises(ValueError, match="broadcast_tokens must be >= 0"):
        tiny_unet(broadcast_tokens=-1)
