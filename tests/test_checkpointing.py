import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from accelerate.state import AcceleratorState

from diffusers_dyga import DisentangledDiffusionPipeline
from diffusers_dyga.checkpointing import CHECKPOINT_MARKER, checkpoint_folders

from .test_train import SCRIPT, cache_dir, fresh_accelerator_state, tiny_args, train  # noqa: F401 (fixtures)

# Runs train.py in a child process that kills itself (SIGKILL, by its own PID) at one moment of a save.
KILLED_CHILD = """
import importlib.util, os, shutil, signal, sys
import accelerate

script, moment, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
save_state, replace, rmtree = accelerate.Accelerator.save_state, os.replace, shutil.rmtree

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def killing_save_state(self, output_dir=None, **kwargs):
    result = save_state(self, output_dir, **kwargs)
    if moment == "while_writing_state" and output_dir.endswith(".checkpoint-6.partial"):
        open(os.path.join(output_dir, "optimizer.bin"), "w").close()
        die()
    return result

def killing_replace(source, target, *args, **kwargs):
    if moment == "before_rename" and str(source).endswith(".checkpoint-6.partial"):
        die()
    if moment == "while_saving_the_pipeline" and str(target).endswith("unet"):
        die()
    return replace(source, target, *args, **kwargs)

def killing_rmtree(path, *args, **kwargs):
    if moment == "while_rotating" and os.path.basename(str(path)) == "checkpoint-3":
        os.remove(os.path.join(path, "optimizer.bin"))
        die()
    return rmtree(path, *args, **kwargs)

accelerate.Accelerator.save_state = killing_save_state
os.replace, shutil.rmtree = killing_replace, killing_rmtree
spec = importlib.util.spec_from_file_location("dyga_train", script)
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
train.main(train.parse_args(argv))
"""


def quick_args(output, cache_dir, *extra) -> list[str]:
    return tiny_args(output, cache_dir, "--control_num_sources", "0", *extra)


def run_killed(moment: str, args: list[str]) -> None:
    child = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD, str(SCRIPT), moment, *args], capture_output=True, text=True, timeout=600
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


def resume(output, cache_dir, capsys, *extra) -> str:
    capsys.readouterr()
    train.main(train.parse_args(quick_args(output, cache_dir, "--resume_from_checkpoint", "latest", *extra)))
    printed = capsys.readouterr().out
    return next(line for line in printed.splitlines() if line.startswith("Resuming from"))


@pytest.mark.parametrize(
    "moment, resumed_from",
    [("while_writing_state", "checkpoint-3"), ("before_rename", "checkpoint-3"), ("while_rotating", "checkpoint-6")],
)
def test_a_kill_during_a_checkpoint_save_leaves_a_complete_checkpoint_to_resume(tmp_path, cache_dir, capsys, moment, resumed_from):
    output = tmp_path / "run"
    run_killed(moment, quick_args(output, cache_dir, "--checkpoints_total_limit", "1"))
    assert "checkpoint-3" in checkpoint_folders(str(output))
    assert resume(output, cache_dir, capsys, "--checkpoints_total_limit", "1").endswith(resumed_from)
    complete = [name for name in checkpoint_folders(str(output)) if (output / name / CHECKPOINT_MARKER).is_file()]
    assert complete == ["checkpoint-6"]
    assert not [name for name in os.listdir(output) if name.endswith(".partial")]
    assert json.loads((output / "training_report.json").read_text())["steps"] == 6
    DisentangledDiffusionPipeline.from_pretrained(output)


def test_a_kill_during_the_final_save_leaves_no_mix_of_old_and_new_components(tmp_path, cache_dir, capsys):
    output = tmp_path / "run"
    train.main(train.parse_args(quick_args(output, cache_dir)))
    AcceleratorState._reset_state(True)
    longer = ["--max_train_steps", "9"]
    run_killed("while_saving_the_pipeline", quick_args(output, cache_dir, "--resume_from_checkpoint", "latest", *longer))
    assert (output / "encoder").is_dir() and not (output / "model_index.json").exists()
    with pytest.raises(ValueError, match="it has no model_index.json"):
        DisentangledDiffusionPipeline.from_pretrained(output)
    assert resume(output, cache_dir, capsys, *longer).endswith("checkpoint-9")
    assert json.loads((output / "training_report.json").read_text())["steps"] == 9
    DisentangledDiffusionPipeline.from_pretrained(output)


def test_latest_falls_back_past_incomplete_and_unreadable_checkpoints(tmp_path, cache_dir, capsys, caplog):
    output = tmp_path / "run"
    with caplog.at_level("INFO"):
        train.main(train.parse_args(quick_args(output, cache_dir)))
    for said in ("step 3: DyGA refitted in", "Saved " + str(output / "checkpoint-6"), "step 6: final validation started",
                 "validation took", f"Saved the pipeline to {output}", "Saved the training report and the model card"):  # fmt: skip
        assert said in caplog.text, said
    caplog.clear()
    (output / "checkpoint-9").mkdir()
    (output / "checkpoint-6" / "optimizer.bin").write_bytes(b"")
    AcceleratorState._reset_state(True)
    with caplog.at_level("WARNING"):
        assert resume(output, cache_dir, capsys).endswith("checkpoint-3")
    assert "Skipping incomplete checkpoints (their saves were interrupted): checkpoint-9" in caplog.text
    assert "checkpoint-6 holds empty files (a write cut short): " in caplog.text and "Falling back to" in caplog.text

    (output / "checkpoint-6" / "scheduler.bin").write_bytes(b"not a pickle")
    AcceleratorState._reset_state(True)
    named = quick_args(output, cache_dir, "--resume_from_checkpoint", str(output / "checkpoint-6"))
    with pytest.raises(ValueError, match="checkpoint-6 could not be loaded"):
        train.main(train.parse_args(named))
    AcceleratorState._reset_state(True)
    named[-1] = str(output / "checkpoint-9")
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        train.main(train.parse_args(named))


def test_resume_refuses_changed_settings_and_missing_random_states(tmp_path, cache_dir):
    output = tmp_path / "run"
    halfway = quick_args(output, cache_dir)
    halfway[halfway.index("--max_train_steps") + 1] = "3"
    train.main(train.parse_args(halfway))
    for flag, value, message in [
        ("--prediction_type", "epsilon", "--prediction_type: 'sample' in the checkpoint, 'epsilon' now"),
        ("--num_units", "2", "--num_units: 3 in the checkpoint, 2 now"),
        ("--use_ema", None, "--use_ema: False in the checkpoint, True now"),
    ]:
        AcceleratorState._reset_state(True)
        extra = [flag] if value is None else [flag, value]
        with pytest.raises(ValueError, match=message):
            train.main(train.parse_args(quick_args(output, cache_dir, "--resume_from_checkpoint", "latest", *extra)))
    (output / "checkpoint-3" / "random_states_0.pkl").unlink()
    AcceleratorState._reset_state(True)
    with pytest.raises(ValueError, match="random_states_0.pkl is missing"):
        train.main(train.parse_args(quick_args(output, cache_dir, "--resume_from_checkpoint", "latest")))


def test_a_diverged_run_stops_before_saving_non_finite_weights(tmp_path, cache_dir):
    output = tmp_path / "run"
    args = quick_args(output, cache_dir, "--learning_rate", "1e30", "--encoder_learning_rate", "1e30", "--lr_warmup_steps", "0")
    args[args.index("--checkpointing_steps") + 1] = "1"
    with pytest.raises(FloatingPointError, match=r"At step 2 .*learning rate 1e\+30.*Last complete checkpoint: .*checkpoint-1"):
        train.main(train.parse_args(args))
    assert checkpoint_folders(str(output)) == ["checkpoint-1"] and not (output / "model_index.json").exists()
    weights = torch.load(output / "checkpoint-1" / "optimizer.bin", weights_only=True)
    assert all(torch.isfinite(value).all() for state in weights["state"].values() for value in state.values())
