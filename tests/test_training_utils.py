import math

import pytest
import torch
import torch.nn.functional as F

from diffusers import DDPMScheduler

from diffusers_dyga.training_utils import (
    detail_weights,
    predicted_original_sample,
    swap_one_unit,
    unit_dependence,
    unit_kl_divergence,
    unit_kurtosis,
    unit_skewness,
)


def rotation(angle: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin]), torch.stack([sin, cos])])


def rotated_to_minimise_kurtosis(mixed: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """`(num_samples, 2)` codes turned by the angle that 300 Adam steps on `unit_kurtosis(..., floor)` reach."""
    angle = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.Adam([angle], lr=0.02)
    for _ in range(300):
        optimizer.zero_grad()
        unit_kurtosis(mixed @ rotation(angle).T, floor=floor).backward()
        optimizer.step()
    return mixed @ rotation(angle.detach()).T


def three_valued_sources(num_samples: int, seed: int = 0) -> torch.Tensor:
    """`(num_samples, 2)` independent factors with 3 equally likely values each, standardised."""
    generator = torch.Generator().manual_seed(seed)
    sources = torch.randint(0, 3, (num_samples, 2), generator=generator).float() - 1.0
    return (sources - sources.mean(0)) / sources.std(0)


def test_unit_kurtosis_scores_gaussian_three_valued_and_binary_units():
    generator = torch.Generator().manual_seed(0)
    assert unit_kurtosis(torch.randn(200000, 4, generator=generator)).item() == pytest.approx(3.0, abs=0.05)
    assert unit_kurtosis(three_valued_sources(200000)).item() == pytest.approx(1.5, abs=0.02)
    binary = torch.randint(0, 2, (200000, 3), generator=generator).float()
    assert unit_kurtosis(binary).item() == pytest.approx(1.0, abs=0.01)
    assert unit_kurtosis(7.0 * binary + 3.0).item() == pytest.approx(unit_kurtosis(binary).item(), rel=1e-4)


def test_minimising_unit_kurtosis_rotates_mixed_units_back_onto_the_factors():
    sources = three_valued_sources(4096)
    mixed = sources @ rotation(torch.tensor(0.5)).T
    mixed_kurtosis = unit_kurtosis(mixed).item()
    unmixed = rotated_to_minimise_kurtosis(mixed)
    correlation = torch.corrcoef(torch.cat([unmixed, sources], dim=1).T)[:2, 2:].abs()
    assert mixed_kurtosis > 1.9 and unit_kurtosis(unmixed).item() == pytest.approx(1.5, abs=0.02)
    assert correlation.max(dim=1).values.min() > 0.999, correlation


def test_unit_kurtosis_floor_charges_mixtures_without_rewarding_bits():
    generator = torch.Generator().manual_seed(0)
    positions = torch.randint(0, 8, (20000, 2), generator=generator).float() - 3.5
    bits = torch.stack([(positions[:, 0] > 0).float(), (positions[:, 0] + 3.5) % 2], dim=1)
    assert unit_kurtosis(bits).item() < unit_kurtosis(positions).item() - 0.7
    assert unit_kurtosis(bits, floor=1.8).item() == unit_kurtosis(positions, floor=1.8).item() == 0.0
    mixed = positions @ rotation(torch.tensor(0.6)).T
    assert unit_kurtosis(mixed, floor=1.8).item() > 0.4
    unmixed = rotated_to_minimise_kurtosis(mixed, floor=1.8)
    correlation = torch.corrcoef(torch.cat([unmixed, positions], dim=1).T)[:2, 2:].abs()
    assert correlation.max(dim=1).values.min() > 0.99, correlation
    with pytest.raises(ValueError, match="floor must be non-negative, got -1.0"):
        unit_kurtosis(positions, floor=-1.0)


def test_unit_kurtosis_rejects_single_rows_and_wrong_shapes():
    with pytest.raises(ValueError, match=r"units of shape \(batch >= 2, num_units\), got \(1, 4\)"):
        unit_kurtosis(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"got \(2, 3, 4\)"):
        unit_kurtosis(torch.randn(2, 3, 4))


def hue_triangle_and_other_factor(num_samples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred one-hot features `(num_samples, 6)` of two independent, evenly drawn 3-valued factors, their values
    `(num_samples, 2)`, and a `(6, 2)` linear map that puts the first factor on both units as an equilateral triangle
    (the second almost off). `num_samples` is a multiple of 9."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(num_samples)
    values = torch.stack([rows % 3, rows // 3 % 3], dim=1)
    features = torch.cat([F.one_hot(values[:, 0], 3), F.one_hot(values[:, 1], 3)], dim=1).float()
    angles = torch.arange(3) * 2 * math.pi / 3
    triangle = torch.cat([torch.stack([angles.cos(), angles.sin()], dim=1), 0.05 * torch.randn(3, 2, generator=generator)])
    return features - features.mean(dim=0), values, triangle


def whitened(units: torch.Tensor) -> torch.Tensor:
    centred = units - units.mean(dim=0)
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(centred.T))
    return centred @ eigenvectors @ torch.diag(eigenvalues.rsqrt()) @ eigenvectors.T


def factor_shares(units: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Share of each unit's variance `(num_units,)` that its means per value of `factor` explain."""
    means = torch.stack([units[factor == value].mean(dim=0) for value in range(int(factor.max()) + 1)])
    return means[factor].var(dim=0) / units.var(dim=0)


def test_unit_skewness_scores_a_triangle_pair_at_every_rotation_and_one_unit_per_factor_at_zero():
    features, values, triangle = hue_triangle_and_other_factor(18000)
    for angle in (0.0, 0.3, 0.9):
        pair = whitened(features[:, :3] @ triangle[:3] @ rotation(torch.tensor(angle)).T)
        assert unit_skewness(pair).item() == pytest.approx(0.25, abs=0.01)
        assert unit_kurtosis(pair).item() == pytest.approx(1.5, abs=0.02)
    one_unit_each = (values.float() - 1.0) / (values.float() - 1.0).std(dim=0)
    assert unit_skewness(one_unit_each).item() < 1e-3
    assert unit_kurtosis(one_unit_each).item() == pytest.approx(1.5, abs=0.02)
    assert unit_skewness(5.0 * one_unit_each - 2.0).item() == pytest.approx(unit_skewness(one_unit_each).item(), abs=1e-6)


@pytest.mark.parametrize("skewness_weight, split", [(0.0, False), (1.0, False), (3.0, True)])
def test_skewness_above_twice_the_kurtosis_weight_moves_a_triangle_pair_onto_one_unit_per_factor(skewness_weight, split):
    features, values, triangle = hue_triangle_and_other_factor(4095)
    weights = triangle.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weights], lr=0.01)
    for _ in range(1500):
        units = whitened(features @ weights)
        loss = unit_kurtosis(units) + skewness_weight * unit_skewness(units)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    units = whitened(features @ weights).detach()
    first, second = factor_shares(units, values[:, 0]), factor_shares(units, values[:, 1])
    if split:
        assert sorted([first.max().item(), second.max().item()]) > [0.99, 0.99] and first.argmax() != second.argmax()
        assert unit_skewness(units).item() < 1e-3
    else:
        assert first.min().item() > 0.99 and second.max().item() < 0.01


def test_unit_skewness_has_gradients_and_rejects_wrong_shapes():
    units = torch.randn(32, 4, requires_grad=True)
    unit_skewness(units).backward()
    assert torch.isfinite(units.grad).all() and units.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"units of shape \(batch >= 2, num_units\), got \(1, 4\)"):
        unit_skewness(torch.randn(1, 4))


def test_unit_dependence_separates_independent_units_from_functions_of_one_factor():
    generator = torch.Generator().manual_seed(0)
    position = torch.randint(0, 8, (512, 2), generator=generator).float()
    x, y = position.unbind(dim=1)
    independent = unit_dependence(position).item()
    bits_of_x = torch.stack([(x >= 4).float(), (x % 4 >= 2).float(), x % 2], dim=1)
    folded = torch.stack([x, (x - 3.5).abs()], dim=1)
    mixed = torch.stack([x + y, x + (y - 3.5).abs()], dim=1)
    assert independent < 0.01 and unit_dependence(bits_of_x).item() < 0.01
    assert unit_dependence(folded).item() > 0.3 and unit_dependence(mixed).item() > 0.1
    assert unit_dependence(torch.stack([x, 2 * x + 1], dim=1)).item() == pytest.approx(1.0, abs=1e-5)
    assert unit_dependence(10 * position - 3).item() == pytest.approx(independent, abs=1e-5)


def test_unit_dependence_has_gradients_and_rejects_wrong_shapes():
    units = torch.randn(32, 4, requires_grad=True)
    unit_dependence(units).backward()
    assert torch.isfinite(units.grad).all() and units.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(batch >= 2, num_units >= 2\), got \(32, 1\)"):
        unit_dependence(torch.randn(32, 1))
    with pytest.raises(ValueError, match=r"got \(1, 4\)"):
        unit_dependence(torch.randn(1, 4))


def test_detail_weights_favour_edges_and_average_one_per_image():
    images = -torch.ones(2, 3, 16, 16)
    images[0, :, 4:8, 4:8] = 1
    weights = detail_weights(images, 0.5)
    assert weights.shape == (2, 1, 16, 16)
    torch.testing.assert_close(weights.mean(dim=(1, 2, 3)), torch.ones(2))
    assert weights[0, 0, 4, 4] > 2 and weights[0, 0, 6, 6] == 0.5 and weights[0, 0, 12, 12] == 0.5
    assert torch.equal(weights[1], torch.ones(1, 16, 16))
    assert torch.equal(detail_weights(images, 0.0), torch.ones(2, 1, 16, 16))
    latent = detail_weights(images, 0.5, size=(4, 4))
    assert latent.shape == (2, 1, 4, 4) and torch.allclose(latent.mean(dim=(1, 2, 3)), torch.ones(2))


def test_detail_weights_reject_bad_shapes_and_strengths():
    with pytest.raises(ValueError, match=r"\(batch, channels, H, W\)"):
        detail_weights(torch.zeros(3, 16, 16), 0.5)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        detail_weights(torch.zeros(1, 3, 16, 16), 1.5)


def test_unit_kl_divergence_is_the_gaussian_kl_from_the_standard_normal():
    generator = torch.Generator().manual_seed(0)
    means, log_variances = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)
    posterior = torch.distributions.Normal(means, (0.5 * log_variances).exp())
    expected = torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, 1.0)).sum(dim=1).mean()
    torch.testing.assert_close(unit_kl_divergence(means, log_variances), expected)
    assert unit_kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        unit_kl_divergence(torch.zeros(3, 4), torch.zeros(3, 5))


def test_swap_one_unit_takes_exactly_one_unit_of_each_row_from_the_next_row():
    units = torch.randn(6, 5)
    edited, swapped = swap_one_unit(units, generator=torch.Generator().manual_seed(0))
    donors = units.roll(-1, dims=0)
    for row in range(6):
        changed = (edited[row] != units[row]).nonzero().flatten().tolist()
        assert changed == [swapped[row].item()] and edited[row, changed[0]] == donors[row, changed[0]]
    assert len(set(swap_one_unit(units, generator=torch.Generator().manual_seed(1))[1].tolist())) > 1
    with pytest.raises(ValueError, match="batch >= 2"):
        swap_one_unit(torch.randn(1, 5))


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon", "v_prediction"])
def test_predicted_original_sample_recovers_the_clean_sample_from_each_prediction_type(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    clean, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    timesteps = torch.tensor([0, 300, 700, 999])
    noisy = scheduler.add_noise(clean, noise, timesteps)
    target = {"sample": clean, "epsilon": noise, "v_prediction": scheduler.get_velocity(clean, noise, timesteps)}
    recovered = predicted_original_sample(scheduler, noisy, target[prediction_type], timesteps)
    torch.testing.assert_close(recovered, clean, atol=2e-3, rtol=0)
