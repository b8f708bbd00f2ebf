"""Training checkpoints and final saves that a kill cannot leave half-written.

A checkpoint is written by `accelerate` into a hidden `.checkpoint-{step}.partial` folder, marked complete with a small
JSON file holding the step, the settings it was trained with and the seconds of training behind it, and only then
renamed to `checkpoint-{step}`; old checkpoints are rotated out after that. A final pipeline is written beside the
output folder's components and swapped in with `model_index.json` last, so a folder either loads as one model or
does not load at all.
"""

import json
import os
import re
import shutil
from typing import Any

from accelerate import Accelerator
from diffusers import DiffusionPipeline


CHECKPOINT_MARKER = "checkpoint_complete.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
_PARTIAL_NAME = re.compile(r"^\.checkpoint-\d+\.partial$")


def checkpoint_folders(output_dir: str) -> list[str]:
    """The `checkpoint-{step}` folder names in `output_dir`, complete or not, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = [name for name in os.listdir(output_dir) if _CHECKPOINT_NAME.match(name)]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str) -> int:
    """The training step of a `checkpoint-{step}` folder."""
    match = _CHECKPOINT_NAME.match(os.path.basename(os.path.normpath(path)))
    if match is None:
        raise ValueError(f"{path} is not a checkpoint-{{step}} folder.")
    return int(match.group(1))


def is_complete_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CHECKPOINT_MARKER))


def latest_complete_checkpoint(output_dir: str) -> tuple[str | None, list[str]]:
    """The newest complete checkpoint in `output_dir` (or None) and the names of newer, incomplete ones it skipped."""
    skipped = []
    for name in reversed(checkpoint_folders(output_dir)):
        path = os.path.join(output_dir, name)
        if is_complete_checkpoint(path):
            return path, skipped
        skipped.append(name)
    return None, skipped


def read_checkpoint_marker(path: str) -> dict[str, Any]:
    """A complete checkpoint's marker: `step`, `settings` and `training_seconds` (None, or absent in checkpoints saved
    before it was recorded); a clear error for an incomplete or unreadable one."""
    marker = os.path.join(path, CHECKPOINT_MARKER)
    if not os.path.isfile(marker):
        raise ValueError(f"{path} is not a complete checkpoint (no {CHECKPOINT_MARKER}: its save was interrupted).")
    try:
        with open(marker) as file:
            content = json.load(file)
        if not isinstance(content.get("settings"), dict):
            raise KeyError("settings")
        return content
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise ValueError(f"{marker} is unreadable ({error}); the checkpoint cannot be trusted.") from error


def check_resume_settings(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    """Refuses to resume when a setting that changes the objective or a parameter's shape differs from the checkpoint's."""
    changed = [
        f"--{name}: {saved[name]!r} in the checkpoint, {current[name]!r} now"
        for name in sorted(current)
        if name in saved and saved[name] != current[name]
    ]
    if changed:
        raise ValueError(
            f"Cannot resume from {path} with changed settings ({'; '.join(changed)}). "
            "Pass the checkpoint's values, or start a new --output_dir."
        )


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str,
    step: int,
    settings: dict[str, Any],
    total_limit: int | None,
    training_seconds: float | None = None,
) -> str:
    """Saves the training state as `output_dir/checkpoint-{step}`, complete or not at all, then keeps the newest
    `total_limit` complete checkpoints, each old one unmarked before it is deleted. `training_seconds`: the wall-clock
    seconds of training behind this state, over every run that led to it. Called on every process."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    partial = os.path.join(output_dir, f".checkpoint-{step}.partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(partial, CHECKPOINT_MARKER), "w") as file:
            json.dump({"step": step, "settings": settings, "training_seconds": training_seconds}, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(partial, final)
        for name in os.listdir(output_dir):
            if _PARTIAL_NAME.match(name):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
        if total_limit is not None:
            complete = [name for name in checkpoint_folders(output_dir) if is_complete_checkpoint(os.path.join(output_dir, name))]
            for name in complete[: max(0, len(complete) - total_limit)]:
                os.remove(os.path.join(output_dir, name, CHECKPOINT_MARKER))
                shutil.rmtree(os.path.join(output_dir, name))
    accelerator.wait_for_everyone()
    return final


def save_pipeline(pipeline: DiffusionPipeline, output_dir: str) -> None:
    """`pipeline.save_pretrained(output_dir)`, written into a hidden folder beside the components and swapped in.

    The old `model_index.json` goes first and the new one comes last: a save killed midway leaves a folder that
    `from_pretrained` refuses (no `model_index.json`) instead of one that loads a mix of old and new components.
    """
    os.makedirs(output_dir, exist_ok=True)
    staging = os.path.join(output_dir, ".pipeline.partial")
    shutil.rmtree(staging, ignore_errors=True)
    pipeline.save_pretrained(staging)
    index = os.path.join(output_dir, "model_index.json")
    if os.path.exists(index):
        os.remove(index)
    for name in sorted(os.listdir(staging)):
        if name == "model_index.json":
            continue
        target = os.path.join(output_dir, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        elif os.path.exists(target):
            os.remove(target)
        os.replace(os.path.join(staging, name), target)
    os.replace(os.path.join(staging, "model_index.json"), index)
    shutil.rmtree(staging)
