import json

import pytest

from diffusers_dyga.evaluation.__main__ import load_ground_truth, main

from .tiny import SIZE, tiny_pipeline


def cli_arguments(tmp_path, output, *extra) -> list[str]:
    """The evaluation command on the pipeline saved in `tmp_path / "pipe"`, over a 48-image shapes grid."""
    return [
        "--pipeline", str(tmp_path / "pipe"),
        "--dataset", "builtin:shapes",
        "--resolution", str(SIZE),
        "--factor_sizes", "2", "2", "3", "1", "2", "2",
        "--cache_dir", str(tmp_path / "cache"),
        "--num_train", "100",
        "--num_test", "50",
        "--output", str(output),
        *extra,
    ]  # fmt: skip


def test_cli_evaluates_a_saved_pipeline_and_writes_json(tmp_path, capsys):
    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    output = tmp_path / "metrics.json"
    main(cli_arguments(tmp_path, output, "--control_num_sources", "4", "--control_inference_steps", "2"))
    report = json.loads(output.read_text())
    assert report["num_rows"] == 48 and report["factor_sizes"] == [2, 2, 3, 1, 2, 2]
    groups = {"factor_vae", "dci", "mig", "sap", "modularity_explicitness", "downstream"}
    assert set(report["metrics"]) == groups | {f"token_pca/{group}" for group in groups}
    assert report["representations"] == ["units", "token_pca"]
    assert 0.0 <= report["metrics"]["dci"]["disentanglement"] <= 1.0
    assert 0.0 <= report["metrics"]["token_pca/dci"]["disentanglement"] <= 1.0
    control = report["controllability"]
    assert control["settings"]["num_sources"] == 4 and control["settings"]["num_inference_steps"] == 2
    assert set(control["reconstruction_accuracy"]) == {"floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"}
    assert "held_out_degraded_accuracy" in control["factor_classifier"]
    assert "wrote" in capsys.readouterr().out
    assert report["dci_booster"] == "exact"

    histogram_output = tmp_path / "histogram.json"
    main(
        cli_arguments(
            tmp_path, histogram_output, "--representations", "units", "--control_num_sources", "0", "--dci_booster", "histogram"
        )
    )
    histogram = json.loads(histogram_output.read_text())
    assert histogram["dci_booster"] == "histogram" and 0.0 <= histogram["metrics"]["dci"]["disentanglement"] <= 1.0
    assert histogram["metrics"]["factor_vae"] == report["metrics"]["factor_vae"], "only DCI depends on the booster"


def test_cli_refuses_an_output_folder_that_does_not_exist_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--pipeline", str(tmp_path / "never"), "--dataset", "builtin:shapes", "--output", str(tmp_path / "no" / "m.json")])
    assert "does not exist" in capsys.readouterr().err


def test_cli_rejects_unknown_datasets():
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_ground_truth("imagenet", None, None, None)
