"""Copying a model to local disk (udfs.staging): once per node, resumable, size-checked, locked;
both as the bootstrap action's command and as the workers' model cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from promptscore.tools.stage_model import main
from udfs.staging import MARKER, DirSource, StagingError, cache_path, local_model, stage


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
    code = (f"from udfs.staging import DirSource, stage; "
            f"print(stage(DirSource({str(model)!r}), {str(dest)!r})['copied'])")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    copied = sorted(int(p.communicate(timeout=60)[0]) for p in procs)
    assert copied == [0, 0, 3]
    assert same_tree(model, dest)


def test_bad_sources_are_one_line_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stage-model: error: source") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(StagingError, match="holds no files"):
        stage(DirSource(str(tmp_path / "empty")), tmp_path / "d2")
    assert main(["hdfs://nn/models/x", str(tmp_path / "d")]) == 1
    assert "unsupported source" in capsys.readouterr().err
    assert main(["oss://LTAI5tFAKE:FAKEsecret@bucket/m/", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "keys do not go into a URI" in err and "FAKE" not in err


def test_a_path_is_used_in_place_and_a_file_uri_is_copied(model, tmp_path):
    assert local_model(str(model), str(tmp_path / "cache")) == str(model)
    assert not (tmp_path / "cache").exists()
    for uri in (f"file://{model}", f"file:{model}"):
        copy = Path(local_model(uri, str(tmp_path / "cache")))
        assert copy == cache_path(uri, str(tmp_path / "cache")) and same_tree(model, copy)


def test_concurrent_workers_copy_a_model_uri_once(model, tmp_path):
    cache, go = tmp_path / "cache", tmp_path / "go"
    code = ("import os, sys, time\n"
            f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
            "from udfs.staging import local_model\n"
            f"print(local_model(sys.argv[1], {str(cache)!r}))")
    uri = f"file://{model}"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert {out.strip() for out, _ in outs} == {str(cache_path(uri, str(cache)))}
    assert sum(err.count("[promptscore staging] copied") for _, err in outs) == 1
    assert same_tree(model, cache_path(uri, str(cache)))
    assert sorted(p.name for p in cache.iterdir()) == sorted([cache_path(uri, str(cache)).name,
                                                              cache_path(uri, str(cache)).name + ".lock"])


def test_a_model_uri_whose_copy_does_not_match_the_driver_listing_is_refused(model, tmp_path):
    uri, cache = f"file://{model}", str(tmp_path / "cache")
    manifest = [(p.relative_to(model).as_posix(), p.stat().st_size) for p in model.rglob("*") if p.is_file()]
    wrong = [(path, size + 1 if path == "config.json" else size) for path, size in manifest]
    with pytest.raises(StagingError, match=r"copy of file://.* is incomplete: config.json has 17 bytes, expected 18"):
        local_model(uri, cache, wrong)
    assert [p.name for p in Path(cache).iterdir()] == [cache_path(uri, cache).name + ".lock"]  # no partial copy

    copy = Path(local_model(uri, cache, manifest))
    (copy / "model.safetensors").write_bytes(b"damaged")  # no longer what the driver listed: copied again
    assert Path(local_model(uri, cache, manifest)) == copy and same_tree(model, copy)


CREDENTIAL_VARS = [f"{p}{n}" for p in ("OSS_", "ALIBABA_CLOUD_")
                   for n in ("ACCESS_KEY_ID", "ACCESS_KEY_SECRET", "SESSION_TOKEN", "SECURITY_TOKEN")]


def test_from_oss_with_the_instance_ram_role_in_hardened_mode(model, tmp_path, monkeypatch):
    from standins import ROLE_CREDENTIALS, MetadataStandIn, OssStandIn

    from promptscore.tools.oss_source import OssSource

    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    with MetadataStandIn("hardened") as metadata, OssStandIn(model.parent) as oss:
        monkeypatch.setenv("PROMPTSCORE_ECS_METADATA_URL", metadata.url)
        monkeypatch.delenv("OSS_ENDPOINT", raising=False)
        # No endpoint given: the internal one of the instance's region.
        assert OssSource("oss://bucket/rm/").bucket.endpoint == "https://oss-cn-standin-internal.aliyuncs.com"
        monkeypatch.setenv("OSS_ENDPOINT", oss.url)
        assert main(["oss://bucket/rm/", str(tmp_path / "dest")]) == 0
    assert same_tree(model, tmp_path / "dest") and not (tmp_path / "dest" / ".oss2-checkpoints").exists()
    signed = [r["headers"] for r in oss.requests]
    assert signed and all(h["authorization"].startswith(f"OSS {ROLE_CREDENTIALS['AccessKeyId']}:") and
                          h["x-oss-security-token"] == ROLE_CREDENTIALS["SecurityToken"] for h in signed)
    assert all("x-aliyun-ecs-metadata-token" in r["headers"] for r in metadata.requests if r["method"] == "GET")


def test_a_disk_that_fills_up_while_staging_is_exit_4_naming_the_path(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(os.urandom(2 << 20))
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        dest = small / "model"
        proc = subprocess.run([sys.executable, "-m", "promptscore.tools.stage_model", str(tmp_path / "m"), str(dest)],
                              capture_output=True, text=True, timeout=120)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 4 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"stage-model: error: disk full at {dest}: ") and "No space left" in lines[0]
        assert "then run the same command again. Exit 4" in lines[0]
        assert not (dest / MARKER).exists() and not (dest / "weights.bin").exists()  # nothing claims to be complete
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
