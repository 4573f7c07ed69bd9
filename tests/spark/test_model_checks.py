"""A model that a rerun cannot fix is refused on the driver before any task starts: exit 2 and one
line naming the file (a config.json that does not parse, weights that are missing, a safetensors
file cut short or damaged), locally and for a model given as a URI."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from conftest import run_job

from promptscore.errors import UsageError


@pytest.fixture(scope="module")
def prompts(spark, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model-checks") / "prompts"
    spark.createDataFrame([(i, f"prompt {i}") for i in range(20)], "id int, prompt string").coalesce(1) \
        .write.parquet(str(path))
    return path


@pytest.fixture()
def broken(tiny_model, tmp_path) -> Path:
    """A copy of the tiny model, to break."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    return model


def refused(spark, prompts: Path, model, tmp_path: Path, capsys) -> str:
    """Run the score job; check it exits 2 with one line, before any Spark job, writing nothing."""
    tracker = spark.sparkContext.statusTracker()
    jobs_before = len(tracker.getJobIdsForGroup(None))
    code, stdout, err = run_job("score", ["--input", prompts, "--output", tmp_path / "out", "--model", model],
                                capsys)
    assert code == 2 and stdout == "", err
    assert err.startswith("score: error: --model ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert len(tracker.getJobIdsForGroup(None)) == jobs_before  # no task started
    assert not (tmp_path / "out").exists()
    return err


def test_a_config_json_that_does_not_parse_is_named(spark, prompts, broken, tmp_path, capsys):
    text = (broken / "config.json").read_text()
    (broken / "config.json").write_text(text[: len(text) // 2])
    err = refused(spark, prompts, broken, tmp_path, capsys)
    assert "config.json is not valid JSON (" in err and "at line " in err and "fix or replace the file" in err


def test_missing_weights_are_named(spark, prompts, broken, tmp_path, capsys):
    (broken / "model.safetensors").unlink()
    err = refused(spark, prompts, broken, tmp_path, capsys)
    assert "no weights file there (model.safetensors, pytorch_model.bin" in err

    # Sharded: the index names a file that is not there.
    (broken / "model-00001-of-00002.safetensors").write_bytes(b"")
    (broken / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    err = refused(spark, prompts, broken, tmp_path, capsys)
    assert ("model.safetensors.index.json names model-00002-of-00002.safetensors, which is not there "
            "(1 of 2 weights files missing); copy the model again") in err


def test_a_safetensors_file_cut_short_is_named(spark, prompts, broken, tmp_path, capsys):
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1000])
    err = refused(spark, prompts, broken, tmp_path, capsys)
    assert (f"model.safetensors is cut short: its header describes {len(data):,} bytes, the file has "
            f"{len(data) - 1000:,}; copy the model again") in err

    weights.write_bytes(data[:5000])  # inside the header's tensors, far from the end
    assert "model.safetensors is cut short" in refused(spark, prompts, broken, tmp_path, capsys)
    weights.write_bytes(data[:100])  # inside the header itself
    err = refused(spark, prompts, broken, tmp_path, capsys)
    assert "model.safetensors is cut short or not safetensors: its header length says" in err
    weights.write_bytes(struct.pack("<Q", 4) + b"nope" + data[12:])
    assert "has a header that is not JSON" in refused(spark, prompts, broken, tmp_path, capsys)


def test_a_model_given_as_a_uri_is_checked_through_the_file_system(spark, prompts, broken, tmp_path, capsys,
                                                                   oss_bucket):
    shutil.copytree(broken, oss_bucket.path("models/m"))
    data = oss_bucket.path("models/m/model.safetensors").read_bytes()
    oss_bucket.path("models/m/model.safetensors").write_bytes(data[:-1])
    err = refused(spark, prompts, oss_bucket / "models/m", tmp_path, capsys)
    assert f"--model {oss_bucket / 'models/m'}: model.safetensors is cut short" in err
    oss_bucket.path("models/m/config.json").write_text("{")
    err = refused(spark, prompts, oss_bucket / "models/m", tmp_path, capsys)
    assert "config.json is not valid JSON" in err


def test_an_intact_model_passes_and_torch_zip_weights_are_checked_by_their_end(tiny_model, tmp_path):
    from promptscore.score import model as model_files

    assert model_files.check_weights(None, str(tiny_model), None) == ["model.safetensors"]
    model = tmp_path / "bin"
    model.mkdir()
    import torch

    torch.save({"w": torch.zeros(1000)}, model / "pytorch_model.bin")
    assert model_files.check_weights(None, str(model), None) == ["pytorch_model.bin"]
    data = (model / "pytorch_model.bin").read_bytes()
    (model / "pytorch_model.bin").write_bytes(data[: len(data) - 200])
    with pytest.raises(UsageError, match="pytorch_model.bin is cut short: its zip directory"):
        model_files.check_weights(None, str(model), None)
