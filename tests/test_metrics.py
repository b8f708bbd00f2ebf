import math

import numpy as np
import pytest

from diffusers_dyga.data import grid_factors
from diffusers_dyga.evaluation import (
    completeness,
    dci,
    disentanglement,
    downstream_accuracy,
    evaluate_representation,
    factor_vae_score,
    flatten_metrics,
    mig,
    modularity,
    modularity_explicitness,
    sap,
)
from diffusers_dyga.evaluation.utils import discrete_entropy, discrete_mutual_info, histogram_discretize

SIZES = (6, 6, 5, 8)
SMALL = {"num_train": 2000, "num_test": 1000}


@pytest.fixture(scope="module")
def factors():
    return grid_factors(SIZES)


def perfect_codes(factors, rng):
    """The factors, through monotone maps, permuted, with small noise and two pure-noise codes added."""
    transformed = np.stack([np.exp(factors[:, 2] / 4.0), np.tanh((factors[:, 0] - 2.5) / 4.0), factors[:, 3] ** 2, -factors[:, 1]], 1)
    return np.concatenate([transformed + 0.01 * rng.randn(*transformed.shape), 0.5 * rng.randn(len(factors), 2)], 1)


def rotated_codes(factors):
    """A Hadamard rotation: every code mixes every factor with equal weight."""
    hadamard = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2.0
    return (factors / np.array(SIZES)) @ hadamard


@pytest.fixture(scope="module")
def scores(factors):
    rng = np.random.RandomState(1)
    return {
        "perfect": evaluate_representation(perfect_codes(factors, rng), factors, SIZES, **SMALL),
        "rotated": evaluate_representation(rotated_codes(factors), factors, SIZES, **SMALL),
        "noise": evaluate_representation(rng.randn(len(factors), 6), factors, SIZES, **SMALL),
    }


def test_known_factors_score_about_one(scores):
    perfect = scores["perfect"]
    assert perfect["factor_vae"]["eval_accuracy"] >= 0.99
    assert perfect["dci"]["disentanglement"] >= 0.95
    assert perfect["dci"]["informativeness_test"] >= 0.97
    assert perfect["mig"]["mig"] >= 0.9, "noise codes keep a small positive MI on a finite grid"
    assert perfect["downstream"]["mean_accuracy"] >= 0.9
    assert perfect["modularity_explicitness"]["explicitness_test"] >= 0.95


def test_plain_factors_have_mig_one(factors):
    assert mig(factors.astype(float), factors, num_train=5000)["mig"] >= 0.99


def test_rotated_factors_score_low(scores):
    rotated = scores["rotated"]
    assert rotated["dci"]["disentanglement"] < 0.5
    assert rotated["mig"]["mig"] < 0.3
    assert rotated["factor_vae"]["eval_accuracy"] < scores["perfect"]["factor_vae"]["eval_accuracy"] - 0.2
    assert rotated["dci"]["informativeness_test"] > 0.8, "a rotation keeps the information"


def test_noise_scores_about_chance(scores):
    noise = scores["noise"]
    assert noise["factor_vae"]["eval_accuracy"] < 0.4
    assert noise["dci"]["disentanglement"] < 0.1
    assert noise["mig"]["mig"] < 0.05
    assert noise["sap"]["sap"] < 0.05
    chance = np.mean([1 / s for s in SIZES])
    assert abs(noise["downstream"]["mean_accuracy"] - chance) < 0.1


def test_suite_returns_named_floats_and_is_deterministic(factors, scores):
    flat = flatten_metrics(scores["perfect"])
    assert "dci/disentanglement" in flat and "factor_vae/eval_accuracy" in flat
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())
    again = evaluate_representation(perfect_codes(factors, np.random.RandomState(1)), factors, SIZES, **SMALL)
    assert flatten_metrics(again) == flat


def test_entropy_and_mutual_information_by_hand():
    factors = np.array([[0], [0], [1], [1]])
    assert discrete_entropy(factors)[0] == pytest.approx(math.log(2))
    assert discrete_mutual_info(np.array([[0], [0], [1], [1]]), factors)[0, 0] == pytest.approx(math.log(2))
    assert discrete_mutual_info(np.array([[0], [1], [0], [1]]), factors)[0, 0] == pytest.approx(0.0)
    skewed = np.array([[0], [0], [0], [1]])
    assert discrete_entropy(skewed)[0] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    bins = histogram_discretize(np.array([[0.0], [0.49], [0.51], [1.0]]), num_bins=2)
    assert bins[:, 0].tolist() == [1, 1, 2, 2]


def test_dci_arithmetic_by_hand():
    identity = np.eye(3)
    assert disentanglement(identity) == pytest.approx(1.0)
    assert completeness(identity) == pytest.approx(1.0)
    uniform = np.ones((3, 3))
    assert disentanglement(uniform) == pytest.approx(0.0, abs=1e-6)
    one_code_two_factors = np.array([[1.0, 1.0], [0.0, 0.0]])
    assert disentanglement(one_code_two_factors) == pytest.approx(0.0, abs=1e-6)
    assert completeness(one_code_two_factors) == pytest.approx(1.0)
    assert disentanglement(np.zeros((2, 2))) == pytest.approx(0.0, abs=1e-6)


def test_dci_values_do_not_depend_on_parallel_fits(factors):
    codes = factors / np.array(SIZES) + 0.05 * np.random.RandomState(0).randn(len(factors), len(SIZES))
    sizes = {"num_train": 200, "num_test": 100}
    assert dci(codes[:, :2], factors[:, :2], n_jobs=None, **sizes) == dci(codes[:, :2], factors[:, :2], n_jobs=2, **sizes)


def test_histogram_dci_booster_stays_near_the_exact_one(factors):
    rng = np.random.RandomState(2)
    for codes in (perfect_codes(factors, rng), rotated_codes(factors), rng.randn(len(factors), 6)):
        exact = dci(codes, factors, **SMALL)
        histogram = dci(codes, factors, booster="histogram", **SMALL)
        for name in ("disentanglement", "completeness", "informativeness_test"):
            assert histogram[name] == pytest.approx(exact[name], abs=0.05), (name, exact, histogram)
    codes = perfect_codes(factors, rng)
    flat = flatten_metrics(evaluate_representation(codes, factors, SIZES, dci_booster="histogram", **SMALL))
    assert flat["dci/disentanglement"] > 0.9


def test_dci_booster_is_checked(factors, monkeypatch):
    codes = np.random.RandomState(0).randn(len(factors), 3)
    with pytest.raises(ValueError, match="dci booster must be one of exact, histogram, got 'lightgbm'"):
        dci(codes, factors, booster="lightgbm")
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lightgbm" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"needs lightgbm: pip install -e \"\.\[fast-dci\]\""):
        dci(codes, factors, booster="histogram")


def test_modularity_by_hand():
    assert modularity(np.array([[1.0, 0.0], [0.0, 2.0]])) == pytest.approx(1.0)
    assert modularity(np.array([[1.0, 1.0]])) == pytest.approx(0.0)
    assert modularity(np.array([[0.0, 0.0], [1.0, 0.0]])) == pytest.approx(0.5)


def test_collapsed_codes_give_finite_scores(factors):
    codes = np.zeros((len(factors), 3))
    codes[:, 1] = factors[:, 0]
    result = evaluate_representation(codes, factors, SIZES, **SMALL)
    flat = flatten_metrics(result)
    assert all(math.isfinite(v) for v in flat.values())
    assert result["factor_vae"]["num_active_dims"] == 1
    all_constant = factor_vae_score(np.ones((len(factors), 2)), factors, SIZES, num_train=100, num_eval=50)
    assert all_constant["eval_accuracy"] == 0.0


def test_factor_with_one_value_and_code_count_mismatch():
    sizes = (1, 8, 9, 10)
    factors = grid_factors(sizes)
    one_code = factors[:, 1:2].astype(float)
    many_codes = np.concatenate([factors[:, 1:].astype(float), np.random.RandomState(0).randn(len(factors), 4)], 1)
    for codes in (one_code, many_codes):
        flat = flatten_metrics(evaluate_representation(codes, factors, sizes, num_train=1000, num_test=500))
        assert all(math.isfinite(v) for v in flat.values()), flat
    assert mig(many_codes, factors, num_train=2000)["mig"] > 0.8
    assert sap(one_code, factors, num_train=500, num_test=300)["sap"] > 0


def test_bad_inputs_raise(factors):
    codes = np.random.RandomState(0).randn(len(factors), 3)
    with pytest.raises(ValueError, match="rows"):
        dci(codes[:-1], factors)
    with pytest.raises(ValueError, match="NaN"):
        mig(np.full_like(codes, np.nan), factors)
    with pytest.raises(ValueError, match="integer"):
        sap(codes, factors.astype(float))
    with pytest.raises(ValueError, match="every factor combination"):
        factor_vae_score(codes[::2], factors[::2], SIZES)
    with pytest.raises(ValueError, match="classifier"):
        downstream_accuracy(codes, factors, classifier="svm")
    explicit = modularity_explicitness(codes, factors, num_train=300, num_test=200)
    assert set(explicit) == {"modularity", "explicitness_train", "explicitness_test"}
