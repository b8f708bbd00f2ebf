import pytest
import torch
from transformers import AutoBackbone, ConvNextConfig, ResNetConfig

from diffusers_dyga import DisentangledEncoder
from diffusers_dyga.training_utils import unit_kl_divergence

from .tiny import NUM_UNITS, SIZE, UNIT_DIM, random_images, tiny_encoder


def test_shapes_and_output_dataclass():
    encoder = tiny_encoder()
    out = encoder(random_images(5))
    assert out.units.shape == (5, NUM_UNITS)
    assert out.tokens.shape == (5, NUM_UNITS, UNIT_DIM)
    units, tokens = encoder(random_images(5), return_dict=False)
    assert torch.equal(units, out.units) and torch.equal(tokens, out.tokens)


def test_batched_token_mlps_match_one_mlp_per_unit():
    encoder = tiny_encoder()
    units = torch.randn(3, NUM_UNITS)
    tokens = encoder.embed(units)
    for n in range(NUM_UNITS):
        hidden = torch.nn.functional.silu(units[:, n : n + 1] * encoder.token_in_weight[n] + encoder.token_in_bias[n])
        expected = hidden @ encoder.token_out_weight[n] + encoder.token_out_bias[n]
        torch.testing.assert_close(tokens[:, n], expected)


def test_each_token_depends_only_on_its_own_unit():
    encoder = tiny_encoder()
    units = torch.randn(2, NUM_UNITS)
    changed = units.clone()
    changed[:, 1] += 1.0
    diff = (encoder.embed(changed) - encoder.embed(units)).abs().sum(dim=(0, 2))
    assert diff[1] > 0 and torch.all(diff[[0, 2, 3]] == 0)


def test_unit_noise_perturbs_training_tokens_only():
    encoder = tiny_encoder(unit_noise=0.3)
    images = random_images(8)
    units = encoder.encode(images)
    clean = encoder.embed(units)
    torch.manual_seed(1)
    noisy = encoder(images).tokens
    torch.manual_seed(1)
    expected = encoder.embed(units + 0.3 * units.std(dim=0, keepdim=True) * torch.randn_like(units))
    torch.testing.assert_close(noisy, expected)
    assert not torch.allclose(noisy, clean)
    encoder.eval()
    torch.testing.assert_close(encoder(images).tokens, clean)
    with pytest.raises(ValueError, match="unit_noise must be non-negative"):
        tiny_encoder(unit_noise=-0.1)


def test_unit_whitening_decorrelates_training_batches_and_tracks_running_statistics():
    encoder = tiny_encoder(unit_whitening=True, whitening_momentum=0.5)
    plain = tiny_encoder()
    images = random_images(32)
    raw = plain.encode(images)
    assert (torch.corrcoef(raw.T).abs() - torch.eye(NUM_UNITS)).abs().max() > 0.1
    for _ in range(30):
        units = encoder.encode(images)
    torch.testing.assert_close(units.mean(dim=0), torch.zeros(NUM_UNITS), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cov(units.T), torch.eye(NUM_UNITS), atol=1e-3, rtol=0)
    units.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.to_units.parameters())
    encoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode(images), units.detach(), atol=1e-3, rtol=0)
        one = encoder.encode(images[:1])
    torch.testing.assert_close(one, units[:1].detach(), atol=1e-3, rtol=0)


def test_running_statistics_whiten_a_training_batch_as_eval_mode_does_and_leave_the_statistics_alone():
    encoder = tiny_encoder(unit_whitening=True, whitening_momentum=0.5)
    images = random_images(16)
    for _ in range(3):
        encoder.encode(images)
    mean, covariance = encoder.running_mean.clone(), encoder.running_covariance.clone()
    read = encoder.units_from_features(encoder.features(images[:2]), running_statistics=True)
    assert encoder.training and torch.equal(encoder.running_mean, mean) and torch.equal(encoder.running_covariance, covariance)
    read.sum().backward()
    assert all(p.grad is not None for p in encoder.to_units.parameters())
    encoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(read.detach(), encoder.encode(images[:2]))


def test_unit_gates_scale_the_whitened_units_against_absolute_training_noise(tmp_path):
    encoder = tiny_encoder(unit_whitening=True, unit_noise=0.3, unit_gates=True)
    with torch.no_grad():
        encoder.unit_gate_logits.copy_(torch.tensor([4.0, 0.0, -4.0, -8.0]))
    images = random_images(16)
    whitened = encoder.whiten(encoder.to_units(encoder.features(images)))
    units = encoder.encode(images)
    torch.testing.assert_close(units, whitened * encoder.gates)
    torch.testing.assert_close(units.std(dim=0), encoder.gates, atol=1e-3, rtol=0)
    torch.manual_seed(1)
    noisy = encoder(images).tokens
    torch.manual_seed(1)
    expected = encoder.embed(units + 0.3 * torch.randn_like(units))
    torch.testing.assert_close(noisy, expected)
    units.sum().backward()
    assert encoder.unit_gate_logits.grad is not None and encoder.unit_gate_logits.grad.abs().min() > 0
    encoder.save_pretrained(tmp_path)
    loaded = DisentangledEncoder.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.gates, encoder.gates, rtol=0, atol=0)
    assert tiny_encoder().gates is None
    for config in [{"unit_whitening": False, "unit_noise": 0.3}, {"unit_whitening": True, "unit_noise": 0.0}]:
        with pytest.raises(ValueError, match="unit_gates scales whitened units against absolute training noise"):
            tiny_encoder(unit_gates=True, **config)


def test_unit_whitening_needs_batches_larger_than_the_unit_count():
    encoder = tiny_encoder(unit_whitening=True)
    with pytest.raises(ValueError, match=f"larger than num_units={NUM_UNITS}"):
        encoder.encode(random_images(NUM_UNITS))


def test_a_non_finite_training_batch_raises_and_leaves_the_whitening_statistics_alone():
    encoder = tiny_encoder(unit_whitening=True).train()
    encoder(random_images(16))
    before = {name: buffer.clone() for name, buffer in encoder.named_buffers()}
    images = random_images(16)
    images[3] = torch.nan
    with pytest.raises(FloatingPointError, match="not finite"):
        encoder(images)
    for name, buffer in encoder.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_unit_whitening_statistics_round_trip(tmp_path):
    encoder = tiny_encoder(unit_whitening=True)
    encoder.encode(random_images(16))
    encoder.save_pretrained(tmp_path)
    loaded = DisentangledEncoder.from_pretrained(tmp_path).eval()
    assert loaded.config.unit_whitening
    torch.testing.assert_close(loaded.running_covariance, encoder.running_covariance, rtol=0, atol=0)
    images = random_images(3)
    torch.testing.assert_close(loaded.encode(images), encoder.eval().encode(images), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(2, 1, SIZE, SIZE), (2, 3, SIZE * 2, SIZE * 2), (3, SIZE, SIZE)])
def test_wrong_image_shape_names_expected_shape(shape):
    with pytest.raises(ValueError, match=rf"\(batch, 3, {SIZE}, {SIZE}\)"):
        tiny_encoder().encode(torch.zeros(shape))


def test_wrong_units_shape_raises():
    with pytest.raises(ValueError, match=rf"\(batch, {NUM_UNITS}\)"):
        tiny_encoder().embed(torch.zeros(2, NUM_UNITS + 1))


def test_sample_size_must_fit_the_trunk():
    with pytest.raises(ValueError, match="divisible"):
        DisentangledEncoder(sample_size=20, block_out_channels=(8, 8, 8))


OFFICIAL_ENCODER = dict(
    stem_channels=64, block_out_channels=(128, 256, 256, 256), norm_type="batch", act_fn="relu",
    hidden_dim=(4096, 256), token_hidden_dim=(256, 512), token_output_act=True,
)  # fmt: skip


def test_official_shaped_encoder_matches_a_plain_torch_build_of_it(tmp_path):
    encoder = DisentangledEncoder(sample_size=64, num_units=20, unit_dim=32, **OFFICIAL_ENCODER).eval()
    reference_trunk = [torch.nn.Conv2d(3, 64, 7, 1, 3), torch.nn.BatchNorm2d(64), torch.nn.ReLU()]
    for channels, out_channels in [(64, 128), (128, 256), (256, 256), (256, 256)]:
        reference_trunk += [torch.nn.Conv2d(channels, out_channels, 4, 2, 1), torch.nn.BatchNorm2d(out_channels), torch.nn.ReLU()]
    reference_trunk += [torch.nn.Flatten(), torch.nn.Linear(256 * 4 * 4, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 256)]
    reference_trunk += [torch.nn.ReLU(), torch.nn.Linear(256, 20)]
    reference_token = [torch.nn.Linear(1, 256), torch.nn.ReLU(), torch.nn.Linear(256, 512), torch.nn.ReLU()]
    reference_token += [torch.nn.Linear(512, 32), torch.nn.ReLU()]
    token_parameters = sum(p.numel() for p in torch.nn.Sequential(*reference_token).parameters())
    assert encoder.num_parameters() == sum(p.numel() for p in torch.nn.Sequential(*reference_trunk).parameters()) + (
        20 * token_parameters
    )
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    output = encoder(images)
    assert output.units.shape == (2, 20) and output.tokens.shape == (2, 20, 32) and (output.tokens >= 0).all()
    unit = 7
    token_mlp = torch.nn.Sequential(*reference_token)
    with torch.no_grad():
        token_mlp[0].weight.copy_(encoder.token_in_weight[unit][:, None])
        token_mlp[0].bias.copy_(encoder.token_in_bias[unit])
        token_mlp[2].weight.copy_(encoder.token_hidden_weights[0][unit].T)
        token_mlp[2].bias.copy_(encoder.token_hidden_biases[0][unit])
        token_mlp[4].weight.copy_(encoder.token_out_weight[unit].T)
        token_mlp[4].bias.copy_(encoder.token_out_bias[unit])
    torch.testing.assert_close(output.tokens[:, unit], token_mlp(output.units[:, unit : unit + 1]))
    encoder.save_pretrained(tmp_path)
    loaded = DisentangledEncoder.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(images).tokens, output.tokens, rtol=0, atol=0)


def test_save_load_round_trip(tmp_path):
    encoder = tiny_encoder()
    encoder.save_pretrained(tmp_path)
    loaded = DisentangledEncoder.from_pretrained(tmp_path)
    for key in ("sample_size", "num_units", "unit_dim", "hidden_dim", "token_hidden_dim", "backbone_config"):
        assert loaded.config[key] == encoder.config[key], key
    assert tuple(loaded.config.block_out_channels) == tuple(encoder.config.block_out_channels)
    images = random_images(3)
    torch.testing.assert_close(loaded(images).tokens, encoder(images).tokens, rtol=0, atol=0)


def test_coordinate_input_gives_the_trunk_each_pixels_position(tmp_path):
    encoder = tiny_encoder(coordinate_input=True).eval()
    first_conv = encoder.trunk.convs[0]
    assert encoder.config.in_channels == 3 and first_conv.in_channels == 5
    seen = []
    first_conv.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    images = random_images(2)
    with torch.no_grad():
        tokens = encoder(images).tokens
    assert seen[0].shape == (2, 5, SIZE, SIZE) and torch.equal(seen[0][:, :3], images)
    assert seen[0][0, 3, 0].tolist() == torch.linspace(-1, 1, SIZE).tolist()
    assert seen[0][1, 4, :, 0].tolist() == torch.linspace(-1, 1, SIZE).tolist()

    encoder.save_pretrained(tmp_path)
    reloaded = DisentangledEncoder.from_pretrained(tmp_path).eval()
    assert reloaded.config.coordinate_input and reloaded.trunk.convs[0].in_channels == 5
    with torch.no_grad():
        assert torch.equal(reloaded(images).tokens, tokens)


def test_gaussian_posterior_on_whitened_units_starts_at_the_preset_noise_and_charges_only_its_width():
    encoder = tiny_encoder(unit_posterior="gaussian", unit_whitening=True).train()
    training = encoder(random_images(NUM_UNITS + 6))
    torch.testing.assert_close(training.unit_log_variance.mul(0.5).exp(), torch.full_like(training.units, 0.3))
    torch.testing.assert_close(training.units.var(dim=0), torch.ones(NUM_UNITS), atol=1e-2, rtol=0)
    unit_kl_divergence(training.units, training.unit_log_variance).backward()
    width_gradient = encoder.to_unit_log_variance.bias.grad.abs().min()
    assert width_gradient > 0.1
    assert encoder.to_units.weight.grad.abs().max() < 0.01 * width_gradient


def test_whitening_shrinkage_keeps_a_small_direction_small_so_the_kl_can_silence_its_unit(tmp_path):
    spreads = torch.tensor([1.0, 1.0, 0.05] + [1.0] * (NUM_UNITS - 3))
    raw = torch.randn(256, NUM_UNITS, generator=torch.Generator().manual_seed(0)) * spreads
    plain = tiny_encoder(unit_whitening=True).whiten(raw).std(dim=0)
    shrunk = tiny_encoder(unit_whitening=True, whitening_shrinkage=0.1).whiten(raw).std(dim=0)
    torch.testing.assert_close(plain, torch.ones(NUM_UNITS), atol=0.02, rtol=0)
    assert shrunk[2] < 0.2 and (shrunk[spreads == 1] > 0.9).all()

    encoder = tiny_encoder(unit_posterior="gaussian", unit_whitening=True, whitening_shrinkage=0.1).train()
    training = encoder(random_images(NUM_UNITS + 6))
    assert (training.units.var(dim=0) < 0.95).all()
    unit_kl_divergence(training.units, training.unit_log_variance).backward()
    assert encoder.to_units.weight.grad.abs().max() > 1e-3
    encoder.save_pretrained(tmp_path)
    assert DisentangledEncoder.from_pretrained(tmp_path).config.whitening_shrinkage == 0.1
    with pytest.raises(ValueError, match="whitening_shrinkage must be non-negative and needs unit_whitening"):
        tiny_encoder(whitening_shrinkage=0.1)
    with pytest.raises(ValueError, match="whitening_shrinkage must be non-negative"):
        tiny_encoder(unit_whitening=True, whitening_shrinkage=-0.1)


def test_gaussian_unit_posterior_samples_tokens_in_training_and_uses_the_means_otherwise(tmp_path):
    encoder = tiny_encoder(unit_posterior="gaussian")
    images = random_images(5)
    training = encoder.train()(images)
    assert training.unit_log_variance.shape == (5, NUM_UNITS)
    torch.testing.assert_close(training.unit_log_variance.mul(0.5).exp(), torch.full((5, NUM_UNITS), 0.05))
    assert not torch.allclose(training.tokens, encoder.embed(training.units))
    evaluation = encoder.eval()(images)
    torch.testing.assert_close(evaluation.units, training.units)
    torch.testing.assert_close(evaluation.tokens, encoder.embed(evaluation.units))
    torch.testing.assert_close(encoder.encode(images), evaluation.units)
    (training.tokens.sum() + training.unit_log_variance.sum()).backward()
    assert encoder.to_unit_log_variance.weight.grad.abs().sum() > 0

    encoder.save_pretrained(tmp_path)
    reloaded = DisentangledEncoder.from_pretrained(tmp_path).eval()
    assert reloaded.config.unit_posterior == "gaussian"
    torch.testing.assert_close(reloaded(images).unit_log_variance, evaluation.unit_log_variance)
    assert tiny_encoder()(images).unit_log_variance is None
    with pytest.raises(ValueError, match="replaces unit_noise"):
        tiny_encoder(unit_posterior="gaussian", unit_whitening=True, unit_noise=0.3)
    with pytest.raises(ValueError, match="unit_posterior must be"):
        tiny_encoder(unit_posterior="laplace")


BACKBONES = {
    "resnet": ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"]),
    "convnext": ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"]),
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_transformers_backbone_trunk_trains_and_round_trips(name, tmp_path):
    encoder = tiny_encoder(backbone_config=BACKBONES[name].to_dict())
    assert type(encoder.trunk.backbone).__name__.lower().startswith(name)
    images = random_images(3)
    out = encoder(images)
    assert out.tokens.shape == (3, NUM_UNITS, UNIT_DIM)
    out.tokens.sum().backward()
    assert all(p.grad is not None for p in encoder.trunk.parameters() if p.requires_grad)
    encoder.eval()
    encoder.save_pretrained(tmp_path)
    loaded = DisentangledEncoder.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(images).units, encoder(images).units, rtol=0, atol=0)


def test_from_backbone_loads_local_pretrained_weights(tmp_path):
    backbone = AutoBackbone.from_config(BACKBONES["resnet"])
    backbone.save_pretrained(tmp_path / "resnet")
    encoder = DisentangledEncoder.from_backbone(
        str(tmp_path / "resnet"), sample_size=SIZE, num_units=NUM_UNITS, unit_dim=UNIT_DIM, hidden_dim=32
    )
    for key, value in backbone.state_dict().items():
        assert torch.equal(encoder.trunk.backbone.state_dict()[key], value), key
