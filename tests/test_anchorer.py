import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from diffusers_dyga import DisentangledEncoder, DyGAAnchorer
from diffusers_dyga.data import images_to_tensor, load_builtin, to_model_range


def planted_mixtures(num_samples=3000, num_units=4, dim=8, num_clusters=5, seed=0):
    """Each unit a mixture of `num_clusters` well-separated Gaussians, in an arbitrary affine frame."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_units, num_clusters, dim, generator=generator) * 6
    labels = torch.randint(num_clusters, (num_samples, num_units), generator=generator)
    points = centers[torch.arange(num_units), labels] + 0.5 * torch.randn(num_samples, num_units, dim, generator=generator)
    return points * 3.0 + 10.0, labels, centers * 3.0 + 10.0


def clustered_unit_tokens(cluster_counts=(1, 2, 3, 4, 5, 6), num_samples=2000, spread=0.1, seed=0):
    """Tokens made as the encoder makes them, by each unit's MLP, from scalar units drawn around evenly spaced
    values: unit i has `cluster_counts[i]` values. Returns tokens `(num_samples, num_units, 32)` and the labels."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    encoder = DisentangledEncoder(num_units=len(cluster_counts), unit_dim=32)
    labels = torch.stack([torch.randint(count, (num_samples,), generator=generator) for count in cluster_counts], 1)
    values = [torch.linspace(-2, 2, count) if count > 1 else torch.zeros(1) for count in cluster_counts]
    units = torch.stack([values[unit][labels[:, unit]] for unit in range(len(cluster_counts))], 1)
    units = units + spread * torch.randn(num_samples, len(cluster_counts), generator=generator)
    with torch.no_grad():
        return encoder.embed(units), labels


def test_principal_fit_counts_the_values_of_each_unit():
    counts = (1, 2, 3, 4, 5, 6)
    tokens, labels = clustered_unit_tokens(counts)
    config = {"num_units": 6, "unit_dim": 32, "max_components": 10, "fit_space": "principal"}
    anchorer = DyGAAnchorer(**config, selection_criterion="icl").fit(tokens)
    assert anchorer.num_components.tolist() == list(counts)
    assigned = anchorer.assign(tokens)
    for unit in range(1, 6):
        assert adjusted_rand_score(labels[:, unit], assigned[:, unit]) >= 0.99
    anchors = anchorer.anchors(tokens)
    for unit in range(6):
        for value in range(counts[unit]):
            members = tokens[labels[:, unit] == value, unit]
            torch.testing.assert_close(anchors[labels[:, unit] == value, unit], members.mean(0).expand_as(members), atol=0.05, rtol=0)


def test_unit_groups_join_the_units_that_code_one_factor_together():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    num_samples = 1500
    hue, other, bit = (torch.randint(count, (num_samples,), generator=generator) for count in (3, 3, 2))
    angle = hue * 2 * torch.pi / 3
    # A three-valued factor at the corners of a triangle in units 0 and 1, two independent factors, and a unit of noise.
    units = torch.stack([angle.cos(), angle.sin(), other - 1.0, bit * 2.0 - 1.0, torch.zeros(num_samples)], 1) * 1.5
    units = units + 0.05 * torch.randn(num_samples, 5, generator=generator)
    encoder = DisentangledEncoder(num_units=5, unit_dim=16)
    with torch.no_grad():
        tokens = encoder.embed(units)
    anchorer = DyGAAnchorer(num_units=5, unit_dim=16, max_components=10, fit_space="principal", selection_criterion="icl")
    anchorer.fit(tokens)
    dependence = anchorer.anchor_dependence(tokens)
    assert dependence[0, 1] > 0.6
    assert dependence[torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)].sort().values[-2] < 0.05
    assert anchorer.unit_groups(tokens) == [[0, 1], [2], [3], [4]]
    assert anchorer.unit_groups(tokens, threshold=1.0) == [[0], [1], [2], [3], [4]]
    with pytest.raises(ValueError, match="threshold"):
        anchorer.unit_groups(tokens, threshold=0.0)


def test_token_space_fit_splits_a_token_curve_the_principal_fit_does_not():
    tokens, _ = clustered_unit_tokens((1, 2, 3), spread=0.15)
    curve = DyGAAnchorer(num_units=3, unit_dim=32, max_components=10).fit(tokens)
    line = DyGAAnchorer(num_units=3, unit_dim=32, max_components=10, fit_space="principal", selection_criterion="icl")
    assert (curve.num_components > torch.tensor([1, 2, 3])).all()
    assert line.fit(tokens).num_components.tolist() == [1, 2, 3]


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@pytest.mark.parametrize("init_components", [2, 8])
def test_recovers_planted_mixtures(covariance_type, init_components):
    points, labels, _ = planted_mixtures()
    anchorer = DyGAAnchorer(
        num_units=4, unit_dim=8, max_components=10, init_components=init_components, covariance_type=covariance_type
    ).fit(points)
    assert anchorer.num_components.tolist() == [5, 5, 5, 5]
    assigned = anchorer.assign(points)
    for unit in range(4):
        assert adjusted_rand_score(labels[:, unit], assigned[:, unit]) >= 0.95


def test_anchors_are_the_planted_centers_in_token_space():
    points, labels, centers = planted_mixtures()
    anchorer = DyGAAnchorer(num_units=4, unit_dim=8, init_components=3).fit(points)
    anchors = anchorer.anchors(points)
    true_centers = centers[torch.arange(4), labels]
    assert (anchors - true_centers).norm(dim=-1).max() < 0.5


def test_never_exceeds_max_components():
    points, _, _ = planted_mixtures(num_clusters=5)
    anchorer = DyGAAnchorer(num_units=4, unit_dim=8, max_components=3, init_components=2).fit(points)
    assert anchorer.num_components.max() <= 3
    assert anchorer.weights.shape == (4, 3)


@pytest.mark.parametrize("fit_space", ["tokens", "principal"])
def test_fit_is_deterministic_under_seed(fit_space):
    points, _, _ = planted_mixtures(num_samples=1000)
    config = {"num_units": 4, "unit_dim": 8, "seed": 3, "max_fit_samples": 500, "fit_space": fit_space}
    first = DyGAAnchorer(**config).fit(points)
    second = DyGAAnchorer(**config).fit(points)
    for name, buffer in first.named_buffers():
        assert torch.equal(buffer, dict(second.named_buffers())[name]), name


def test_single_gaussian_units_get_one_component():
    points = torch.randn(4000, 3, 6, generator=torch.Generator().manual_seed(0)) * 2 + 1
    anchorer = DyGAAnchorer(num_units=3, unit_dim=6, init_components=4).fit(points)
    assert anchorer.num_components.tolist() == [1, 1, 1]


def test_collapsed_units_and_single_point_components_fit():
    points = torch.randn(200, 3, 4, generator=torch.Generator().manual_seed(0))
    points[:, 1] = 2.5
    points[0, 2] += 1000.0
    anchorer = DyGAAnchorer(num_units=3, unit_dim=4, init_components=3, min_weight=0.0).fit(points)
    for buffer in (anchorer.means, anchorer.covariances, anchorer.weights):
        assert torch.isfinite(buffer).all()
    assert anchorer.num_components[1] == 1
    aligned = anchorer.align(points)
    assert torch.isfinite(aligned).all()
    torch.testing.assert_close(aligned[:, 1], points[:, 1])
    assert torch.isfinite(anchorer.sample(5)).all()
    DyGAAnchorer(num_units=3, unit_dim=4).fit(torch.zeros(2, 3, 4))


def test_fixed_lambda_is_the_convex_combination():
    points, _, _ = planted_mixtures()
    anchorer = DyGAAnchorer(num_units=4, unit_dim=8, lambda_mode="fixed", lambda_value=0.3).fit(points)
    tokens = points[:10]
    torch.testing.assert_close(anchorer.align(tokens), 0.3 * anchorer.anchors(tokens) + 0.7 * tokens)
    torch.testing.assert_close(anchorer.align(tokens, lambda_value=1.0), anchorer.anchors(tokens))


def test_adaptive_lambda_pulls_toward_anchors_and_keeps_gradients():
    points, _, _ = planted_mixtures()
    anchorer = DyGAAnchorer(num_units=4, unit_dim=8).fit(points)
    tokens = points[:16].clone().requires_grad_(True)
    aligned = anchorer.align(tokens)
    anchors = anchorer.anchors(tokens)
    plain = tokens.detach()
    lam = 0.1 * torch.exp(-((plain - anchors) / plain.abs()).abs().mean(-1, keepdim=True))
    torch.testing.assert_close(aligned.detach(), lam * anchors + (1 - lam) * plain)
    assert lam.mean() > 0.02
    assert ((aligned - anchors).norm(dim=-1) <= (tokens - anchors).norm(dim=-1)).all()
    aligned.sum().backward()
    assert tokens.grad is not None and torch.all(tokens.grad > 0)
    alone = anchorer.align(points[:1])
    torch.testing.assert_close(alone, aligned[:1].detach()), "no dependence on the rest of the batch"


def test_sample_follows_the_mixture():
    points, labels, _ = planted_mixtures()
    anchorer = DyGAAnchorer(num_units=4, unit_dim=8).fit(points)
    samples = anchorer.sample(4000, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4000, 4, 8)
    drawn = torch.stack([torch.bincount(c, minlength=10)[:10] for c in anchorer.assign(samples).T]).float() / 4000
    torch.testing.assert_close(drawn, anchorer.weights, atol=0.04, rtol=0)
    repeat = anchorer.sample(4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, repeat)


def test_unfitted_use_raises():
    anchorer = DyGAAnchorer(num_units=2, unit_dim=3)
    assert not anchorer.is_fitted
    tokens = torch.zeros(4, 2, 3)
    for call in (anchorer.assign, anchorer.anchors, anchorer.align):
        with pytest.raises(RuntimeError, match="not fitted"):
            call(tokens)
    with pytest.raises(RuntimeError, match="not fitted"):
        anchorer.sample(2)


@pytest.mark.parametrize("shape", [(4, 3, 3), (4, 2, 5), (2, 3)])
def test_wrong_token_shape_names_the_expected_dims(shape):
    with pytest.raises(ValueError, match=r"\(batch, 2, 3\)"):
        DyGAAnchorer(num_units=2, unit_dim=3).fit(torch.zeros(shape))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_raise(bad):
    tokens = torch.randn(10, 2, 3)
    tokens[3, 1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        DyGAAnchorer(num_units=2, unit_dim=3).fit(tokens)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="covariance_type"):
        DyGAAnchorer(covariance_type="spherical")
    with pytest.raises(ValueError, match="lambda_mode"):
        DyGAAnchorer(lambda_mode="cosine")
    with pytest.raises(ValueError, match="init_components"):
        DyGAAnchorer(init_components=12, max_components=10)
    with pytest.raises(ValueError, match="fit_space"):
        DyGAAnchorer(fit_space="units")
    with pytest.raises(ValueError, match="selection_criterion"):
        DyGAAnchorer(selection_criterion="aic")


@pytest.mark.parametrize("covariance_type,fit_space", [("diag", "tokens"), ("full", "tokens"), ("diag", "principal")])
def test_save_load_round_trip_keeps_state_and_shapes(tmp_path, covariance_type, fit_space):
    points, _, _ = planted_mixtures(num_samples=1000)
    config = {"num_units": 4, "unit_dim": 8, "covariance_type": covariance_type, "fit_space": fit_space}
    anchorer = DyGAAnchorer(**config).fit(points)
    anchorer.save_pretrained(tmp_path)
    loaded = DyGAAnchorer.from_pretrained(tmp_path)
    assert loaded.is_fitted
    for name, buffer in anchorer.named_buffers():
        assert torch.equal(buffer, dict(loaded.named_buffers())[name]), name
    assert torch.equal(loaded.align(points[:20]), anchorer.align(points[:20]))
    DyGAAnchorer(**config).save_pretrained(tmp_path / "empty")
    assert not DyGAAnchorer.from_pretrained(tmp_path / "empty").is_fitted


def test_corrupt_checkpoint_raises(tmp_path):
    DyGAAnchorer(num_units=2, unit_dim=3).save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(Exception, match="(?i)safetensors|header|deserializ|invalid|unable"):
        DyGAAnchorer.from_pretrained(tmp_path)


OFFICIAL = dict(
    structure="official", covariance_type="full", init_components=8, max_components=32, max_iterations=30, seed=3
)  # fmt: skip


def test_official_rules_split_past_the_planted_clusters_but_never_mix_two():
    points, labels, _ = planted_mixtures(num_samples=2000)
    official = DyGAAnchorer(num_units=4, unit_dim=8, **OFFICIAL).fit(points)
    again = DyGAAnchorer(num_units=4, unit_dim=8, **OFFICIAL).fit(points)
    for name, buffer in official.named_buffers():
        assert torch.equal(buffer, dict(again.named_buffers())[name]), name
    counts = official.num_components.tolist()
    assert all(5 <= count <= 32 for count in counts) and counts != [5, 5, 5, 5]
    assigned = official.assign(points)
    for unit in range(4):
        for component in assigned[:, unit].unique():
            assert labels[assigned[:, unit] == component, unit].unique().numel() == 1
        assert adjusted_rand_score(labels[:, unit], assigned[:, unit]) > 0.3
    largest, smallest = points.amax(dim=(0, 2)), points.amin(dim=(0, 2))
    torch.testing.assert_close(official.feature_mean[:, 0], largest)
    torch.testing.assert_close(official.feature_scale[:, 0], largest - smallest + 1e-6)
    anchors = official.anchors(points)
    assert (anchors - points).norm(dim=-1).mean() < (points - points.mean(0)).norm(dim=-1).mean() / 4


def test_official_rules_prune_components_with_few_points():
    points, _, _ = planted_mixtures(num_samples=400, num_units=1, num_clusters=2)
    anchorer = DyGAAnchorer(num_units=1, unit_dim=8, **{**OFFICIAL, "min_component_points": 150}).fit(points)
    counts = torch.softmax(anchorer._log_prob(anchorer._normalise(points).transpose(0, 1), anchorer._state()), 2)[0].sum(0)
    assert anchorer.num_components.item() >= 1 and (counts[anchorer.active[0]] >= 100).all()


def test_batch_lambda_is_one_differentiated_scalar_per_batch():
    points, _, _ = planted_mixtures(num_samples=500)
    anchorer = DyGAAnchorer(num_units=4, unit_dim=8, lambda_mode="batch").fit(points)
    tokens = points[:16].clone().requires_grad_(True)
    reference = points[:16].clone().requires_grad_(True)
    anchors = anchorer.anchors(tokens)
    expected_lambda = 0.1 * torch.exp(-((reference - anchors) / (reference + 1e-6)).abs().mean())
    expected = expected_lambda * anchors + (1 - expected_lambda) * reference
    aligned = anchorer.align(tokens)
    torch.testing.assert_close(aligned, expected)
    aligned.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(tokens.grad, reference.grad)
    without_lambda_gradient = expected_lambda.detach() * anchors + (1 - expected_lambda.detach()) * reference
    assert not torch.allclose(torch.autograd.grad(without_lambda_gradient.square().sum(), reference)[0], tokens.grad)


def test_official_full_covariance_fit_takes_tokens_far_from_zero_relative_to_their_spread():
    # An untrained encoder with batch norm and ReLU tokens (the `paper` preset's kind) barely moves its tokens
    # between images; the second-moment covariance lost its small eigenvalues to rounding there and Cholesky failed.
    dataset = load_builtin("shapes", resolution=32, factor_sizes=(3,) * 6)
    images = to_model_range(images_to_tensor(dataset["image"]))
    torch.manual_seed(0)
    encoder = DisentangledEncoder(
        sample_size=32, num_units=2, block_out_channels=(32, 64), hidden_dim=(256, 64), token_hidden_dim=(64, 128),
        stem_channels=16, norm_type="batch", act_fn="relu", token_output_act=True,
    ).eval()  # fmt: skip
    with torch.no_grad():
        tokens = encoder(images).tokens
    assert (tokens.std(0) < 1e-2 * tokens.abs().amax()).all()
    anchorer = DyGAAnchorer(num_units=2, unit_dim=32, **OFFICIAL).fit(tokens)
    active = anchorer.covariances[anchorer.active]
    assert (torch.linalg.cholesky_ex(active).info == 0).all()
    assert torch.linalg.eigvalsh(active).amin() > 0.5 * anchorer.config.variance_floor
    assert torch.isfinite(anchorer.align(tokens)).all() and torch.isfinite(anchorer.sample(8)).all()
