import numpy as np
import pytest
import torch

from diffusers_dyga.data import load_builtin
from diffusers_dyga.evaluation import encode_representation, token_pca

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
