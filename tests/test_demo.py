"""The unit explorer (`UnitExplorer`) and its Gradio app, driven through `gradio_client` on 127.0.0.1."""

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_dyga.explorer import UnitExplorer

from .tiny import NUM_UNITS, SIZE, random_images, tiny_pipeline


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline()


def pil_images(count: int, seed: int = 0) -> list[PIL.Image.Image]:
    pixels = ((random_images(count, seed) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return [PIL.Image.fromarray(image.permute(1, 2, 0).numpy()) for image in pixels]


def test_every_render_of_the_explorer_is_the_pipelines_own_output(pipeline):
    explorer = UnitExplorer(pipeline, num_inference_steps=3, seed=7)
    image = pil_images(1)[0]
    units = explorer.encode(image)
    torch.testing.assert_close(torch.tensor([units]), pipeline.encode([image]).float())
    moved = list(units)
    moved[1] += 1.0
    expected = pipeline(units=torch.tensor([moved]), num_inference_steps=3, generator=torch.Generator().manual_seed(7)).images[0]
    assert np.array_equal(np.asarray(explorer.render(explorer.units_tensor(moved))[0]), np.asarray(expected))
    assert not np.array_equal(np.asarray(explorer.render(explorer.units_tensor(units))[0]), np.asarray(expected))


def test_sliders_span_the_units_and_mark_the_anchorers_components(pipeline):
    explorer = UnitExplorer(pipeline, example_images=pil_images(6))
    assert len(explorer.scales) == NUM_UNITS
    components = pipeline.anchorer.num_components.tolist()
    for scale, count in zip(explorer.scales, components):
        assert scale.low < scale.high and len(scale.anchors) <= count
        assert all(scale.low <= anchor <= scale.high for anchor in scale.anchors)
        assert scale.anchors == sorted(scale.anchors)
    scale = next(s for s in explorer.scales if len(s.anchors) >= 2)
    assert scale.snap(scale.anchors[0] - 10) == scale.anchors[0] and scale.snap(scale.anchors[-1] + 10) == scale.anchors[-1]
    units = explorer.encode(pil_images(1)[0])
    snapped = explorer.units_tensor(units, snap=True)[0]
    for value, scale in zip(snapped.tolist(), explorer.scales):
        assert not scale.anchors or value in scale.anchors


def test_other_sizes_are_resized_and_swaps_walks_grids_and_generation_work(pipeline):
    explorer = UnitExplorer(pipeline, num_inference_steps=2)
    large = pil_images(1)[0].resize((SIZE * 3, SIZE * 3))
    units = explorer.encode(large)
    assert len(units) == NUM_UNITS
    donor = pil_images(1, seed=3)[0]
    swapped = explorer.swap(units, donor, [0, 2])
    donor_units = pipeline.encode([donor]).float()
    expected_units = torch.tensor([units])
    expected_units[0, [0, 2]] = donor_units[0, [0, 2]]
    assert np.array_equal(np.asarray(swapped), np.asarray(explorer.render(expected_units)[0]))
    strip, gif = explorer.traverse(units, 1, num_frames=4)
    assert strip.size == (SIZE * 4, SIZE) and gif[:6] == b"GIF89a"
    assert len(explorer.generate(2)) == 2
    assert explorer.interchange_grid(large, donor).size == (SIZE * (NUM_UNITS + 3), SIZE * 2)
    with pytest.raises(ValueError, match="at least one unit"):
        explorer.swap(units, donor, [])
    with pytest.raises(ValueError, match="unit_index must be in"):
        explorer.traverse(units, NUM_UNITS)
    unfitted = UnitExplorer(tiny_pipeline(fit_anchorer=False), num_inference_steps=2)
    assert all(scale.anchors == [] for scale in unfitted.scales)
    with pytest.raises(ValueError, match="anchorer"):
        unfitted.generate(1)


def test_the_app_renders_what_the_pipeline_renders_through_gradio_client(pipeline, tmp_path):
    pytest.importorskip("gradio")
    from gradio_client import Client, handle_file

    from diffusers_dyga.demo import build_demo

    demo = build_demo(pipeline, examples=pil_images(2))
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        image = pil_images(1)[0]
        image.save(tmp_path / "image.png")
        *sliders, seen, reconstruction = client.predict(handle_file(str(tmp_path / "image.png")), api_name="/encode")
        seen = PIL.Image.open(seen).convert("RGB")
        assert seen.size == (SIZE * (256 // SIZE),) * 2, "the model's input shown enlarged"
        assert np.array_equal(np.asarray(seen.resize((SIZE, SIZE), PIL.Image.NEAREST)), np.asarray(image.convert("RGB")))
        units = [slider["value"] for slider in sliders]
        assert all(slider["minimum"] <= slider["value"] <= slider["maximum"] for slider in sliders)
        torch.testing.assert_close(torch.tensor(units), pipeline.encode([image])[0].float())
        scale = UnitExplorer(pipeline, example_images=pil_images(2)).scales[0]
        units[0] = min(max(units[0], scale.low), scale.high) * 0.5 + (scale.low + scale.high) / 4
        rendered, *used = client.predict(*units, 4, False, api_name="/render")
        explorer = UnitExplorer(pipeline, num_inference_steps=4)
        expected = explorer.render(explorer.units_tensor(units))[0]
        shown = PIL.Image.open(rendered).convert("RGB")
        assert shown.size == (SIZE * (256 // SIZE),) * 2, "shown enlarged"
        assert np.array_equal(np.asarray(shown.resize((SIZE, SIZE), PIL.Image.NEAREST)), np.asarray(expected))
        with pytest.raises(Exception, match="donor"):
            client.predict(*units, None, ["unit 0"], 2, api_name="/swap")
        strip, gif = client.predict(*units, "unit 1", 2, api_name="/traverse")
        assert PIL.Image.open(strip).size == (SIZE * 8 * 2, SIZE * 2) and open(gif, "rb").read(6) == b"GIF89a"
        assert len(client.predict(2, api_name="/generate")) == 4
    finally:
        demo.close()
