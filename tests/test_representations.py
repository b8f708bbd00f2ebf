import numpy as np
import pytest
import torch

from diffusers_dyga.data import load_builtin
from diffusers_dyga.evaluation import encode_representation, token_pca
from diffusers_dyga.training_data import prepare_images

from .tiny import NUM_UNITS, SIZE, tiny_pipeline


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dyga-cache"))


def test_token_pca_recovers_each_units_scalar_up_to_sign():
    rng = np.random.RandomState(0)
    scalars = rng.uniform(-1, 1, size=(500, 3))
    directions = rng.normal(size=(3, 16))
    tokens = scalars[..., None] * directions[None] + 0.01 * rng.normal(size=(500, 3, 16))
    codes = token_pca(tokens)
    assert codes.shape == (500, 3)
    for unit in range(3):
        assert abs(np.corrcoef(codes[:, unit], scalars[:, unit])[0, 1]) > 0.999
    with pytest.raises(ValueError, match=r"\(n, num_units, unit_dim\)"):
        token_pca(tokens[:, 0])


def test_encode_representation_gives_one_code_per_unit_for_every_row(cache_dir):
    pipe = tiny_pipeline()
    dataset = load_builtin("shapes", resolution=SIZE, factor_sizes=(2, 2, 2, 1, 2, 1), cache_dir=cache_dir)
    units = encode_representation(pipe, dataset, "units")
    tokens = encode_representation(pipe, dataset, "token_pca")
    assert units.shape == tokens.shape == (len(dataset), NUM_UNITS)
    with torch.no_grad():
        anchored = pipe.condition(torch.from_numpy(units)).numpy()
    np.testing.assert_allclose(np.abs(tokens), np.abs(token_pca(anchored)), atol=1e-4)
    with pytest.raises(ValueError, match="Unknown representation 'latents'"):
        encode_representation(pipe, dataset, "latents")


def test_a_grid_stored_at_another_size_is_resized_as_training_resizes_it(cache_dir):
    pipe = tiny_pipeline()
    sizes = (2, 2, 2, 1, 2, 1)
    native = load_builtin("shapes", resolution=SIZE, factor_sizes=sizes, cache_dir=cache_dir)
    larger = load_builtin("shapes", resolution=SIZE * 2, factor_sizes=sizes, cache_dir=cache_dir)
    units = encode_representation(pipe, larger, "units")
    assert units.shape == (len(larger), NUM_UNITS)
    resized = prepare_images(larger["image"], SIZE, 3)
    np.testing.assert_allclose(units, pipe.encode(resized).numpy(), atol=1e-5)
    assert not np.allclose(units, encode_representation(pipe, native, "units"), atol=1e-5)
