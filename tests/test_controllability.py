from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffusers_dyga import DisentangledEncoder, DyGAAnchorer
from diffusers_dyga.data import factor_row_index, factors_array, load_builtin
from diffusers_dyga.evaluation import (
    controllability,
    dataset_images,
    load_or_train_factor_classifier,
    unit_factor_shares,
)
from diffusers_dyga.evaluation import factor_classifier as factor_classifier_module
from diffusers_dyga.evaluation.factor_classifier import degrade

SIZES = (3, 3, 1, 1, 1, 1)


@pytest.fixture(scope="module")
def hues(tmp_path_factory):
    """A 16x16 `shapes` grid where only the floor and wall hues vary (9 images)."""
    return load_builtin("shapes", resolution=16, factor_sizes=SIZES, cache_dir=str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("classifiers"))


@pytest.fixture(scope="module")
def classifier(hues, classifier_cache):
    classifier, _ = load_or_train_factor_classifier(hues, cache_dir=classifier_cache, num_steps=300, held_out_fraction=0.0)
    return classifier


class LookupRenderer:
    """Renders units that are factor indices (one unit per factor) as the dataset's image of those factors; a
    renderer that ignores unit `ignored` always renders value 0 of that factor."""

    device = torch.device("cpu")
    anchorer = None

    def __init__(self, dataset, ignored: int | None = None):
        self.images = (dataset_images(dataset) + 1) / 2
        self.sizes, self.ignored = [int(s) for s in SIZES], ignored

    def __call__(self, units, num_inference_steps=None, generator=None, output_type="pt"):
        indices = units.round().long().clamp_min(0).numpy()
        indices = np.minimum(indices, np.array(self.sizes) - 1)
        if self.ignored is not None:
            indices[:, self.ignored] = 0
        return SimpleNamespace(images=self.images[factor_row_index(indices, self.sizes)])


def test_unit_factor_shares_are_the_variance_each_factor_explains():
    factors = np.stack(np.meshgrid(np.arange(3), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
    codes = np.stack([factors[:, 0], factors[:, 1], factors[:, 0] + factors[:, 1], (factors[:, 0] == 1) * 1.0], 1)
    shares = unit_factor_shares(codes.astype(float), factors, [3, 4])
    np.testing.assert_allclose(shares[0], [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(shares[1], [0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(shares[2], [2 / 3 / (2 / 3 + 5 / 4), 5 / 4 / (2 / 3 + 5 / 4)], atol=1e-12)
    assert shares[3, 0] == pytest.approx(1.0) and shares[3, 1] == pytest.approx(0.0)


def test_degrade_blurs_and_adds_noise_per_image():
    images = torch.zeros(2, 3, 16, 16)
    images[:, :, 8, 8] = 1.0
    out = degrade(images, torch.tensor([0.0, 1.5]), torch.zeros(2))
    torch.testing.assert_close(out[0], images[0], atol=1e-6, rtol=0)
    assert out[1, 0, 8, 8] < 0.2 and out[1, 0, 8, 9] > 0.05 and out[1].sum() == pytest.approx(3.0, rel=1e-4)
    noisy = degrade(images, torch.zeros(2), torch.tensor([0.0, 0.1]), torch.Generator().manual_seed(0))
    assert torch.equal(noisy[0], out[0]) and 0.05 < (noisy[1] - images[1]).std() < 0.15


def test_classifier_reads_the_factors_and_is_cached(hues, classifier, classifier_cache, monkeypatch):
    readings = classifier.predict(dataset_images(hues))
    assert (readings == factors_array(hues)).mean(axis=0).min() == 1.0

    def no_training(*args, **kwargs):
        raise AssertionError("a cached classifier was trained again")

    monkeypatch.setattr(factor_classifier_module, "train_factor_classifier", no_training)
    cached, report = load_or_train_factor_classifier(hues, cache_dir=classifier_cache, num_steps=300, held_out_fraction=0.0)
    for name, value in classifier.state_dict().items():
        assert torch.equal(cached.state_dict()[name], value)
    assert report["num_train"] == 9 and report["num_steps"] == 300
    with pytest.raises(AssertionError, match="trained again"):
        load_or_train_factor_classifier(hues, cache_dir=classifier_cache, num_steps=301, held_out_fraction=0.0)


def test_classifier_reports_held_out_accuracy_clean_and_degraded(hues, tmp_path):
    _, report = load_or_train_factor_classifier(hues, cache_dir=str(tmp_path), num_steps=20, held_out_fraction=0.34)
    assert report["num_held_out"] == 3 and report["num_train"] == 6
    assert set(report["held_out_accuracy"]) == set(report["held_out_degraded_accuracy"]) == {
        "floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"
    }  # fmt: skip
    assert report["degradation"] == {"blur_sigma": 1.0, "noise_std": 0.05}


def test_classifier_needs_factor_columns(hues):
    with pytest.raises(ValueError, match="factor"):
        load_or_train_factor_classifier(hues.remove_columns(["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]))


def test_a_renderer_that_follows_the_units_is_fully_controllable(hues, classifier):
    codes = factors_array(hues).astype(np.float64)
    report = controllability(LookupRenderer(hues), hues, classifier, codes=codes, num_sources=9, num_traversal_sources=9)
    assert report["reconstruction_accuracy"] == {name: 1.0 for name in report["reconstruction_accuracy"]}
    assert report["reconstruction_psnr"] > 60
    assert [(u["unit"], u["factor"]) for u in report["units"]] == [(0, "floor_hue"), (1, "wall_hue")]
    assert report["num_units_holding_a_factor"] == 2
    assert report["mean_swap_accuracy"] == 1.0 and report["mean_traversal_accuracy"] == 1.0
    assert [(f["factor"], f["units"]) for f in report["factors"]] == [("floor_hue", [0]), ("wall_hue", [1])]
    assert report["mean_factor_swap_accuracy"] == 1.0


def test_a_factor_held_by_two_units_fails_the_unit_swap_but_not_the_factor_swap(hues, classifier):
    factors = factors_array(hues).astype(np.float64)
    # The floor hue is split over two units: the first says whether it is 2, the second holds it when it is not.
    codes = np.stack([(factors[:, 0] == 2) * 2.0, np.where(factors[:, 0] == 2, 0.0, factors[:, 0]), factors[:, 1]], 1)

    class SplitRenderer(LookupRenderer):
        def __call__(self, units, **kwargs):
            floor = torch.where(units[:, 0] > 1, 2.0, units[:, 1])
            joined = torch.cat([torch.stack([floor, units[:, 2]], 1), torch.zeros(len(units), 4)], 1)
            return super().__call__(joined, **kwargs)

    report = controllability(SplitRenderer(hues), hues, classifier, codes=codes, num_sources=9, num_traversal_sources=9)
    floor = [u for u in report["units"] if u["factor"] == "floor_hue"]
    assert len(floor) == 2 and max(u["swap_accuracy"] for u in floor) < 1.0
    assert report["factors"][0] == {
        "factor": "floor_hue", "units": [0, 1], "swap_accuracy": 1.0, "swap_target_accuracy": 1.0, "swap_others_kept": 1.0
    }  # fmt: skip


def test_the_anchorer_groups_a_factor_held_by_two_units_and_the_group_swap_succeeds(hues, classifier):
    factors = factors_array(hues)
    corners = np.stack([np.cos(np.arange(3) * 2 * np.pi / 3), np.sin(np.arange(3) * 2 * np.pi / 3)], 1)
    # The floor hue at the corners of a triangle in units 0 and 1: one unit alone can land on the third corner.
    codes = np.concatenate([corners[factors[:, 0]], factors[:, 1:2]], 1).astype(np.float64)

    class TriangleRenderer(LookupRenderer):
        def __init__(self, dataset):
            super().__init__(dataset)
            torch.manual_seed(0)
            self.encoder = DisentangledEncoder(num_units=3, unit_dim=8)
            anchorer = DyGAAnchorer(num_units=3, unit_dim=8, max_components=6, fit_space="principal", selection_criterion="icl")
            noisy = torch.from_numpy(np.tile(codes, (40, 1))).float() + 0.02 * torch.randn(40 * len(codes), 3)
            with torch.no_grad():
                self.anchorer = anchorer.fit(self.encoder.embed(noisy))

        def __call__(self, units, **kwargs):
            distances = torch.cdist(units[:, :2].double(), torch.from_numpy(corners))
            joined = torch.cat([distances.argmin(1, keepdim=True).double(), units[:, 2:], torch.zeros(len(units), 4)], 1)
            return super().__call__(joined, **kwargs)

    report = controllability(TriangleRenderer(hues), hues, classifier, codes=codes, num_sources=9, num_traversal_sources=9)
    assert report["mean_swap_accuracy"] < 1.0
    assert [(g["units"], g["factor"], g["swap_accuracy"]) for g in report["groups"]] == [
        ([0, 1], "floor_hue", 1.0), ([2], "wall_hue", 1.0)
    ]  # fmt: skip
    assert report["mean_group_swap_accuracy"] == 1.0
    assert report["settings"]["group_threshold"] == 0.25


def test_without_an_anchorer_there_are_no_groups(hues, classifier):
    report = controllability(LookupRenderer(hues), hues, classifier, codes=factors_array(hues).astype(np.float64), num_sources=9)
    assert report["groups"] == [] and report["mean_group_swap_accuracy"] is None


def test_a_renderer_that_ignores_a_unit_fails_its_swap_and_traversal(hues, classifier):
    codes = factors_array(hues).astype(np.float64)
    report = controllability(
        LookupRenderer(hues, ignored=0), hues, classifier, codes=codes, num_sources=9, num_traversal_sources=9
    )
    floor, wall = report["units"]
    assert floor["swap_target_accuracy"] <= 2 / 3 and floor["traversal_accuracy"] == pytest.approx(1 / 3)
    assert report["reconstruction_accuracy"]["floor_hue"] == pytest.approx(1 / 3)
    assert report["reconstruction_accuracy"]["wall_hue"] == 1.0 and wall["swap_target_accuracy"] == 1.0
    assert wall["swap_others_kept"] == pytest.approx(1 / 3) and report["mean_swap_accuracy"] < 0.5


def test_controllability_rejects_a_classifier_of_other_factors(hues, classifier, tmp_path):
    other = load_builtin("shapes", resolution=16, factor_sizes=(2, 3, 1, 1, 1, 1), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="factor sizes"):
        controllability(LookupRenderer(hues), other, classifier, codes=factors_array(other).astype(float))
