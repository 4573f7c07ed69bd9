"""Staging a model directory to local disk: once, resumable, size-checked, locked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from promptscore.stage_model import MARKER, DirSource, StageError, main, stage


@pytest.fixture()
def model(tmp_path) -> Path:
    src = tmp_path / "src" / "rm"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"num_labels": 1}')
    (src / "model.safetensors").write_bytes(os.urandom(3 << 20))
    (src / "sub" / "tokenizer.json").write_bytes(os.urandom(1000))
    return src


def same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != MARKER) and \
        all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_copies_once_then_finds_it_complete(model, tmp_path):
    dest = tmp_path / "dest"
    assert stage(DirSource(str(model)), dest) == {"copied": 3, "kept": 0, "bytes": (3 << 20) + 1000 + 17}
    assert same_tree(model, dest) and (dest / MARKER).is_file()
    mtime = (dest / "model.safetensors").stat().st_mtime_ns
    assert stage(DirSource(str(model)), dest)["copied"] == 0
    assert (dest / "model.safetensors").stat().st_mtime_ns == mtime


def test_resumes_a_partial_file_and_replaces_a_wrong_one(model, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    data = (model / "model.safetensors").read_bytes()
    (dest / "model.safetensors.partial").write_bytes(data[: len(data) // 3])  # an interrupted copy
    (dest / "config.json").write_text("{}")  # wrong size: copied again
    result = stage(DirSource(str(model)), dest)
    assert result["copied"] == 3
    assert same_tree(model, dest)
    assert not list(dest.glob("*.partial"))


def test_a_damaged_copy_is_repaired_on_the_next_run(model, tmp_path):
    dest = tmp_path / "dest"
    stage(DirSource(str(model)), dest)
    (dest / "sub" / "tokenizer.json").write_bytes(b"short")
    assert stage(DirSource(str(model)), dest)["copied"] == 1
    assert same_tree(model, dest)


def test_concurrent_runs_copy_once(model, tmp_path):
    dest = tmp_path / "dest"
    code = f"from promptscore.stage_model import DirSource, stage; print(stage(DirSource({str(model)!r}), {str(dest)!r})['copied'])"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    copied = sorted(int(p.communicate(timeout=60)[0]) for p in procs)
    assert copied == [0, 0, 3]
    assert same_tree(model, dest)


def test_bad_sources_are_one_line_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stage-model: error: source") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match="holds no files"):
        stage(DirSource(str(tmp_path / "empty")), tmp_path / "d2")
    assert main(["hdfs://nn/models/x", str(tmp_path / "d")]) == 1
    assert "unsupported source" in capsys.readouterr().err
