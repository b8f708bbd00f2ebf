from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_dyga.data import (
    DecodedImages,
    factor_names,
    factor_row_index,
    factor_sizes,
    factors_array,
    grid_factors,
    image_channels,
    images_to_tensor,
    is_full_grid,
    load_3dshapes_h5,
    load_builtin,
    load_dsprites,
    load_dsprites_npz,
    load_image_dataset,
    load_mpi3d_npz,
    load_shapes,
    render_dsprites,
    render_shapes,
)
from diffusers_dyga.training_data import TrainingImages, prepare_images

SMALL_SHAPES = (2, 2, 3, 2, 4, 3)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dyga-cache"))


def test_shapes_is_a_full_factor_grid(cache_dir):
    dataset = load_shapes(resolution=32, factor_sizes=SMALL_SHAPES, cache_dir=cache_dir)
    assert len(dataset) == np.prod(SMALL_SHAPES)
    assert isinstance(dataset.features["image"], datasets.Image)
    assert factor_names(dataset) == ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
    assert factor_sizes(dataset) == list(SMALL_SHAPES)
    factors = factors_array(dataset)
    assert np.array_equal(factor_row_index(factors, SMALL_SHAPES), np.arange(len(dataset)))
    image = dataset[5]["image"]
    assert image.size == (32, 32) and image.mode == "RGB"
    rendered = render_shapes(factors[5:6], SMALL_SHAPES, resolution=32)[0]
    assert np.array_equal(np.asarray(image), rendered), "stored PNGs are lossless renders"


def test_shapes_factors_change_the_right_pixels():
    base = np.array([[0, 0, 0, 3, 0, 7]])
    image = render_shapes(base).astype(int)

    def changed(column, value):
        other = base.copy()
        other[0, column] = value
        return np.abs(render_shapes(other).astype(int) - image).sum(-1)[0] > 0

    floor, wall, obj = changed(0, 5), changed(1, 5), changed(2, 5)
    assert floor[60].mean() > 0.5 and not floor[5].any(), "floor hue changes the bottom rows only"
    assert wall[5].mean() > 0.9 and not wall[63].any(), "wall hue changes the top rows only"
    assert obj[:, 32].any() and not obj[:, 2].any() and not obj[2].any(), "object hue changes the centre only"
    assert changed(3, 7).sum() > 20 and changed(4, 2).sum() > 20 and changed(5, 0).sum() > 200
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50, "antialiased and shaded, not 3 flat colours"


def test_dsprites_values_and_binary_images(cache_dir):
    sizes = (3, 2, 4, 3, 3)
    dataset = load_dsprites(factor_sizes=sizes, cache_dir=cache_dir)
    assert factor_names(dataset) == ["shape", "scale", "orientation", "pos_x", "pos_y"]
    assert len(dataset) == np.prod(sizes)
    image = np.asarray(dataset[0]["image"])
    assert image.shape == (64, 64) and set(np.unique(image)) <= {0, 255}
    sprites = render_dsprites(grid_factors((3, 6, 40, 32, 32))[[0, 40 * 32 * 32 * 5]])
    assert sprites[1].sum() > 2 * sprites[0].sum(), "scale 1.0 covers more than scale 0.5"
    left = render_dsprites(np.array([[0, 5, 0, 0, 16]]))[0]
    right = render_dsprites(np.array([[0, 5, 0, 31, 16]]))[0]
    assert np.argwhere(left)[:, 1].mean() + 20 < np.argwhere(right)[:, 1].mean()


def test_cache_is_keyed_by_parameters_and_reused(cache_dir, monkeypatch):
    first = load_shapes(resolution=16, factor_sizes=(1, 1, 2, 1, 2, 1), cache_dir=cache_dir)
    import diffusers_dyga.data.shapes as shapes_module

    monkeypatch.setattr(shapes_module, "render_shapes", lambda *a, **k: pytest.fail("rendered again"))
    second = load_shapes(resolution=16, factor_sizes=(1, 1, 2, 1, 2, 1), cache_dir=cache_dir)
    assert second["object_hue"] == first["object_hue"]
    with pytest.raises(pytest.fail.Exception):
        load_shapes(resolution=16, factor_sizes=(1, 1, 3, 1, 2, 1), cache_dir=cache_dir)


def test_bad_generation_options_raise(cache_dir):
    with pytest.raises(ValueError, match="6 positive factor sizes"):
        load_shapes(factor_sizes=(2, 2), cache_dir=cache_dir)
    with pytest.raises(ValueError, match="At most 4 shapes"):
        load_shapes(factor_sizes=(1, 1, 1, 1, 5, 1), cache_dir=cache_dir)
    with pytest.raises(ValueError, match="Unknown built-in dataset"):
        load_builtin("mnist")
    with pytest.raises(ValueError, match="out of range"):
        factor_row_index(np.array([[0, 5]]), (2, 5))


def test_images_to_tensor_handles_rgb_and_grayscale(cache_dir):
    rgb = load_shapes(resolution=16, factor_sizes=(1, 1, 2, 1, 2, 1), cache_dir=cache_dir)[:2]["image"]
    tensor = images_to_tensor(rgb)
    assert tensor.shape == (2, 3, 16, 16) and tensor.min() >= -1 and tensor.max() <= 1
    gray = images_to_tensor(np.zeros((3, 8, 8), dtype=np.uint8) + 255)
    assert gray.shape == (3, 1, 8, 8) and gray.eq(1).all()


def test_3dshapes_h5_adapter(tmp_path, cache_dir):
    h5py = pytest.importorskip("h5py")
    sizes = (2, 1, 1, 1, 2, 3)
    factors = grid_factors(sizes)
    values = [np.linspace(0, 0.9, s) if s > 1 else np.zeros(1) for s in sizes]
    labels = np.stack([values[i][factors[:, i]] for i in range(6)], axis=1)
    images = np.random.RandomState(0).randint(0, 255, (len(factors), 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "3dshapes.h5"
    with h5py.File(path, "w") as file:
        file["images"], file["labels"] = images, labels
    dataset = load_3dshapes_h5(str(path), cache_dir=cache_dir)
    assert factor_sizes(dataset) == list(sizes)
    assert np.array_equal(factors_array(dataset), factors)
    assert np.array_equal(np.asarray(dataset[7]["image"]), images[7])
    with h5py.File(tmp_path / "bad.h5", "w") as file:
        file["images"] = images
    with pytest.raises(ValueError, match="lacks \\['labels'\\]"):
        load_3dshapes_h5(str(tmp_path / "bad.h5"), cache_dir=cache_dir)
    with pytest.raises(FileNotFoundError, match="3dshapes.h5 file not found"):
        load_3dshapes_h5(str(tmp_path / "missing.h5"))


def test_dsprites_npz_adapter(tmp_path, cache_dir):
    sizes = (3, 2, 2, 2, 2)
    factors = grid_factors(sizes)
    latents = np.concatenate([np.zeros((len(factors), 1), np.int64), factors], axis=1)
    imgs = (np.random.RandomState(0).rand(len(factors), 8, 8) > 0.5).astype(np.uint8)
    np.savez(tmp_path / "dsprites.npz", imgs=imgs, latents_classes=latents)
    dataset = load_dsprites_npz(str(tmp_path / "dsprites.npz"), cache_dir=cache_dir)
    assert factor_sizes(dataset) == list(sizes)
    assert np.array_equal(np.asarray(dataset[3]["image"]), imgs[3] * 255)
    np.savez(tmp_path / "shuffled.npz", imgs=imgs, latents_classes=latents[::-1])
    with pytest.raises(ValueError, match="not a full factor grid"):
        load_dsprites_npz(str(tmp_path / "shuffled.npz"), cache_dir=cache_dir)
    np.savez(tmp_path / "wrong.npz", pictures=imgs)
    with pytest.raises(ValueError, match="not a dSprites .npz"):
        load_dsprites_npz(str(tmp_path / "wrong.npz"), cache_dir=cache_dir)


def test_mpi3d_npz_adapter_checks_the_grid(tmp_path, cache_dir):
    np.savez(tmp_path / "mpi3d_toy.npz", images=np.zeros((10, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="expected 1036800 images"):
        load_mpi3d_npz(str(tmp_path / "mpi3d_toy.npz"), cache_dir=cache_dir)
    with pytest.raises(FileNotFoundError, match="MPI3D"):
        load_mpi3d_npz(str(tmp_path / "nothing.npz"))


def test_image_dataset_without_factors(tmp_path, cache_dir):
    shapes = load_shapes(resolution=16, factor_sizes=(1, 1, 2, 1, 2, 1), cache_dir=cache_dir)
    shapes.rename_column("image", "picture").save_to_disk(str(tmp_path / "saved"))
    dataset = load_image_dataset(str(tmp_path / "saved"), image_column="picture")
    assert "image" in dataset.column_names and "picture" not in dataset.column_names
    with pytest.raises(ValueError, match="no image column 'image'.*picture"):
        load_image_dataset(str(tmp_path / "saved"))
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, row in enumerate(shapes):
        row["image"].save(folder / f"{i}.png")
    from_folder = load_image_dataset(str(folder))
    assert len(from_folder) == len(shapes) and from_folder[0]["image"].size == (16, 16)


def test_class_subfolder_labels_are_not_taken_as_factors_but_a_saved_grid_is(tmp_path, cache_dir):
    folder = tmp_path / "classes"
    for label, colour in (("cats", (200, 30, 30)), ("dogs", (30, 30, 200))):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            PIL.Image.new("RGB", (16 + 4 * i, 16), colour).save(folder / label / f"{i}.png")
    from_folder = load_image_dataset(str(folder))
    assert "label" in from_folder.column_names and factor_names(from_folder) == []
    shapes = load_shapes(resolution=16, factor_sizes=(1, 1, 2, 1, 2, 1), cache_dir=cache_dir)
    shapes.save_to_disk(str(tmp_path / "grid"))
    assert is_full_grid(shapes) and factor_names(load_image_dataset(str(tmp_path / "grid"))) == factor_names(shapes)
    assert not is_full_grid(shapes.select([0, 1, 2, 2]))


def test_image_channels_look_past_a_grayscale_first_image(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    PIL.Image.new("L", (8, 8), 128).save(folder / "0.png")
    PIL.Image.new("L", (8, 8), 64).save(folder / "1.png")
    assert image_channels(load_image_dataset(str(folder))) == 1
    PIL.Image.new("RGB", (8, 8), (10, 200, 10)).save(folder / "2.png")
    dataset = load_image_dataset(str(folder))
    assert dataset[0]["image"].mode == "L" and image_channels(dataset) == 3


def test_decoded_images_equal_the_per_batch_path_and_are_cached_beside_the_dataset(cache_dir, caplog):
    dataset = load_shapes(resolution=16, factor_sizes=SMALL_SHAPES, cache_dir=cache_dir)
    decoded = DecodedImages.from_dataset(dataset, 16, 3)
    path = DecodedImages.cache_path(dataset, 16, 3)
    assert path.parent == Path(dataset.cache_files[0]["filename"]).parent and path.is_file()
    assert decoded.pixels.shape == (len(dataset), 16, 16, 3) and decoded.pixels.dtype == torch.uint8
    rows = [5, 0, 17, 3]
    streamed, indexed = TrainingImages(dataset, 16, 3), TrainingImages(dataset, 16, 3, decoded)
    assert torch.equal(indexed.read(rows), streamed.read(rows))
    expected = prepare_images(dataset.select(rows)["image"], 16, 3)
    assert torch.equal(indexed.read(rows), expected) and indexed.read(rows).stride() == expected.stride(), "same layout"
    assert torch.equal(DecodedImages.from_dataset(dataset, 16, 3).pixels, decoded.pixels), "loaded from the cache"

    path.write_bytes(b"not a safetensors file")
    with caplog.at_level("WARNING"):
        again = DecodedImages.from_dataset(dataset, 16, 3)
    assert "could not be read" in caplog.text and torch.equal(again.pixels, decoded.pixels)
    assert DecodedImages.from_dataset(dataset, 8, 1).pixels.shape == (len(dataset), 8, 8, 1), "keyed by size and channels"
    with pytest.raises(ValueError, match=f"decoded tensor has 3 rows, the dataset {len(dataset)}"):
        TrainingImages(dataset, 16, 3, DecodedImages(decoded.pixels[:3]))


def test_decoded_images_crop_resize_and_convert_like_the_per_batch_path(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(folder / "0.png")
    PIL.Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(folder / "1.png")
    dataset = load_image_dataset(str(folder))
    for channels in (3, 1):
        decoded = DecodedImages.from_dataset(dataset, 8, channels, cache_dir=tmp_path / "decoded")
        torch.testing.assert_close(
            TrainingImages(dataset, 8, channels, decoded).read([0, 1]), prepare_images(dataset["image"], 8, channels), rtol=0, atol=0
        )
    assert DecodedImages.cache_path(dataset.from_dict({"image": dataset["image"]}), 8, 3) is None, "in memory: no file"
