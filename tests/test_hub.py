"""Sharing through a Hub: push, load by repo id (our class and plain diffusers), revisions, offline reuse, variants
and incomplete downloads, against the real HTTP client talking to the test server of `hub_server.py`."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import IncompleteSnapshotError

from diffusers_dyga import DisentangledDiffusionPipeline
from diffusers_dyga.hub_layout import COMPONENT_MODULES, PIPELINE_SOURCE

from .tiny import random_images, tiny_pipeline

REPO_ID = "someone/tiny-dyga"
PIPELINE_FILE = Path(__file__).resolve().parents[1] / "pipelines" / "disentangled_diffusion.py"


def render(pipe, **kwargs) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline()


def repo_files(hub, revision: str = "main") -> dict[str, bytes]:
    repo = hub.repos[REPO_ID]
    return repo.commits[repo.resolve(revision)]


def test_the_pipelines_file_is_the_one_saved_with_every_checkpoint():
    assert PIPELINE_FILE.read_text() == PIPELINE_SOURCE


def test_push_then_load_by_repo_id_renders_the_same_and_runs_no_repo_code(hub, pipeline, tmp_path):
    pipeline.push_to_hub(REPO_ID)
    files = repo_files(hub)
    index = json.loads(files["model_index.json"])
    assert index["_class_name"] == ["disentangled_diffusion", "DisentangledDiffusionPipeline"]
    for name, (module, class_name) in COMPONENT_MODULES.items():
        assert index[name] == [module, class_name] and f"{name}/{module}.py" in files
    assert files["disentangled_diffusion.py"].decode() == PIPELINE_SOURCE and "README.md" in files

    loaded = DisentangledDiffusionPipeline.from_pretrained(REPO_ID)
    images = random_images(2)
    assert torch.equal(render(loaded, images=images), render(pipeline, images=images))
    assert not list(Path(loaded.name_or_path).rglob("*.py")), "our loader downloads no module file"


def test_revisions_offline_reuse_and_force_download(hub, pipeline, tmp_path, monkeypatch):
    first = pipeline.push_to_hub(REPO_ID).oid
    changed = tiny_pipeline()
    with torch.no_grad():
        changed.unet.conv_out.bias.add_(0.5)
    changed.push_to_hub(REPO_ID, commit_message="second commit")
    huggingface_hub.create_branch(REPO_ID, branch="before", revision=first)
    images = random_images(2)
    old, new = render(pipeline, images=images), render(changed, images=images)

    assert torch.equal(render(DisentangledDiffusionPipeline.from_pretrained(REPO_ID), images=images), new)
    assert torch.equal(render(DisentangledDiffusionPipeline.from_pretrained(REPO_ID, revision=first), images=images), old)
    assert torch.equal(render(DisentangledDiffusionPipeline.from_pretrained(REPO_ID, revision="before"), images=images), old)

    weight_downloads = len(hub.downloads(".safetensors"))
    DisentangledDiffusionPipeline.from_pretrained(REPO_ID)
    assert len(hub.downloads(".safetensors")) == weight_downloads, "a cached download is not fetched again"
    DisentangledDiffusionPipeline.from_pretrained(REPO_ID, force_download=True)
    assert len(hub.downloads(".safetensors")) == weight_downloads + 3, "force_download fetches the three weight files"

    requests = len(hub.log)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert torch.equal(render(DisentangledDiffusionPipeline.from_pretrained(REPO_ID), images=images), new)
    assert torch.equal(render(DisentangledDiffusionPipeline.from_pretrained(REPO_ID, revision="before"), images=images), old)
    assert len(hub.log) == requests, "offline loads make no request"


def test_a_variant_downloads_only_its_own_weights(hub, pipeline, tmp_path):
    folder = tmp_path / "both"
    pipeline.save_pretrained(folder)
    pipeline.to(torch.float16).save_pretrained(folder, variant="fp16")
    pipeline.to(torch.float32)
    huggingface_hub.create_repo(REPO_ID)
    huggingface_hub.upload_folder(repo_id=REPO_ID, folder_path=folder)

    half = DisentangledDiffusionPipeline.from_pretrained(REPO_ID, variant="fp16", torch_dtype=torch.float16)
    assert half.unet.dtype == torch.float16
    downloaded = hub.downloads(".safetensors")
    assert len(downloaded) == 3 and all(path.endswith(".fp16.safetensors") for path in downloaded)
    DisentangledDiffusionPipeline.from_pretrained(REPO_ID)
    assert not [path for path in hub.downloads(".safetensors")[3:] if ".fp16." in path] and len(hub.downloads(".safetensors")) == 6
    with pytest.raises(ValueError, match="has no 'bf16' weights for its 'anchorer'"):
        DisentangledDiffusionPipeline.from_pretrained(REPO_ID, variant="bf16")


def test_an_incomplete_download_is_named_as_such(hub, pipeline, tmp_path, monkeypatch):
    pipeline.push_to_hub(REPO_ID)
    snapshot_download(REPO_ID, allow_patterns=["model_index.json", "*/config.json"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(IncompleteSnapshotError, match="incomplete: .*missing .*anchorer/diffusion_pytorch_model.safetensors"):
        DisentangledDiffusionPipeline.from_pretrained(REPO_ID)

    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "filled-by-hand"
    pipeline.save_pretrained(cache / "models--someone--partial" / "snapshots" / commit)
    (cache / "models--someone--partial" / "refs").mkdir()
    (cache / "models--someone--partial" / "refs" / "main").write_text(commit)
    (cache / "models--someone--partial" / "snapshots" / commit / "anchorer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match="download of someone/partial .* is incomplete.*no weights for its 'anchorer'.*force_download"):
        DisentangledDiffusionPipeline.from_pretrained("someone/partial", cache_dir=cache)


PLAIN_DIFFUSERS_SCRIPT = textwrap.dedent(
    """
    import sys

    import torch
    from diffusers import DiffusionPipeline

    assert not [name for name in sys.modules if name.startswith("diffusers_dyga")]
    repo_id, custom_pipeline, out = sys.argv[1], sys.argv[2] or None, sys.argv[3]
    pipe = DiffusionPipeline.from_pretrained(repo_id, custom_pipeline=custom_pipeline, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    images = torch.load(out + ".in")
    rendered = pipe(images=images, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    torch.save({"class": type(pipe).__name__, "images": rendered.images}, out)
    """
)


@pytest.mark.parametrize("custom_pipeline", ["", str(PIPELINE_FILE)], ids=["own-file", "custom_pipeline"])
def test_plain_diffusers_loads_a_repo_id_in_a_fresh_process_online_and_offline(hub, pipeline, tmp_path, custom_pipeline):
    pipeline.push_to_hub(REPO_ID)
    images = random_images(2)
    torch.save(images, tmp_path / "result.in")
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_CACHE": constants.HF_HUB_CACHE,
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": str(torch.get_num_threads()),  # the same reductions as this process, hence the same bits
    }
    # Offline, diffusers (0.42) fetches a repo's own pipeline file through `model_info` and fails; with
    # `custom_pipeline` naming a local file it loads from the cache.
    for offline in ("0", "1") if custom_pipeline else ("0",):
        command = [sys.executable, "-c", PLAIN_DIFFUSERS_SCRIPT, REPO_ID, custom_pipeline, str(tmp_path / "result")]
        result = subprocess.run(command, env={**env, "HF_HUB_OFFLINE": offline}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        rendered = torch.load(tmp_path / "result")
        assert rendered["class"] == "DisentangledDiffusionPipeline"
        assert torch.equal(rendered["images"], render(pipeline, images=images)), f"offline={offline}"
