"""The explorer in a real browser: headless Chromium (the system's `chromium` and `chromedriver`, driven by selenium)
loads the page, uploads an image, drags a unit's slider, and the render that appears is the pipeline's own for the
units the sliders then hold. A screenshot goes to `$TEST_ARTIFACTS_DIR` (default: the test's temporary folder).

Run alone: `apt-get install chromium chromium-driver && python -m pytest tests/test_demo_browser.py`."""

import base64
import io
import os
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from diffusers_dyga.explorer import UnitExplorer

from .test_demo import pil_images
from .tiny import SIZE, tiny_pipeline

pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMEDRIVER is None, reason="needs the system's chromium and chromedriver")


def wait_for(condition, timeout: float = 60.0, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise TimeoutError(f"Timed out waiting for {what}.")


def image_pixels(source: str) -> np.ndarray:
    if source.startswith("data:"):
        data = base64.b64decode(source.split(",", 1)[1])
    else:
        data = urllib.request.urlopen(source, timeout=30).read()
    image = PIL.Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(image.resize((SIZE, SIZE), PIL.Image.NEAREST))


def test_dragging_a_slider_renders_the_pipelines_own_output(tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from diffusers_dyga.demo import build_demo

    pipeline = tiny_pipeline()
    demo = build_demo(pipeline)
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    artifacts = Path(os.environ.get("TEST_ARTIFACTS_DIR", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        browser.get(demo.local_url)
        upload = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#source input[type=file]"), what="the upload field")[0]
        image = pil_images(1)[0]
        image.save(tmp_path / "image.png")
        upload.send_keys(str(tmp_path / "image.png"))

        def render_source() -> str | None:
            renders = browser.find_elements(By.CSS_SELECTOR, "#render img")
            return renders[0].get_attribute("src") if renders else None

        first = wait_for(render_source, what="the reconstruction")
        num_units = pipeline.encoder.config.num_units
        slider = browser.find_element(By.CSS_SELECTOR, "#unit-0 input[type=range]")
        ActionChains(browser).click_and_hold(slider).move_by_offset(40, 0).release().perform()
        moved = wait_for(lambda: render_source() not in (None, first) and render_source(), what="the render after the slider move")
        time.sleep(0.5)
        units = [
            float(browser.find_element(By.CSS_SELECTOR, f"#unit-{i} input[type=number]").get_attribute("value"))
            for i in range(num_units)
        ]
        browser.save_screenshot(str(artifacts / "demo_after_slider_move.png"))
        shown = image_pixels(moved)
        explorer = UnitExplorer(pipeline)
        expected = np.asarray(explorer.render(explorer.units_tensor(units))[0].convert("RGB"))
        assert shown.shape == expected.shape
        assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 2
        assert not np.array_equal(shown, image_pixels(first))
        torch.testing.assert_close(torch.tensor(units[1:]), torch.tensor(explorer.encode(image)[1:]), rtol=0, atol=1e-3)
    finally:
        browser.quit()
        demo.close()
