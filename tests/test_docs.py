"""The README's usage snippets run as written, against a small saved pipeline in their `outputs/shapes-tiny`."""

import re
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from diffusers_dyga import DisentangledDiffusionPipeline, DyGAAnchorer

from .tiny import tiny_encoder, tiny_unet

README = Path(__file__).resolve().parents[1] / "README.md"


def usage_snippets() -> list[str]:
    usage = README.read_text().split("\n## Usage\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", usage, flags=re.DOTALL)


def test_the_readme_usage_runs_as_written(tmp_path, monkeypatch):
    encoder = tiny_encoder(sample_size=32, num_units=10)
    anchorer = DyGAAnchorer(num_units=10, unit_dim=encoder.config.unit_dim, max_components=3, init_components=2)
    with torch.no_grad():
        anchorer.fit(encoder(torch.rand(64, 3, 32, 32) * 2 - 1).tokens)
    pipeline = DisentangledDiffusionPipeline(
        encoder=encoder, unet=tiny_unet(sample_size=32), scheduler=DDIMScheduler(num_train_timesteps=100), anchorer=anchorer
    )
    pipeline.save_pretrained(tmp_path / "outputs" / "shapes-tiny")
    monkeypatch.chdir(tmp_path)
    snippets = usage_snippets()
    assert len(snippets) == 2, "the usage section's snippets: our class, then plain diffusers"
    namespace: dict = {}
    for snippet in snippets:
        exec(compile(snippet, str(README), "exec"), namespace)
    assert len(namespace["out"].images) == 4 and len(namespace["samples"]) == 8
    assert type(namespace["pipe"]).__name__ == "DisentangledDiffusionPipeline"
