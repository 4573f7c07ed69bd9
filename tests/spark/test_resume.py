"""Resuming the score job: a run killed (SIGKILL to its whole process group) after committing some
chunks is finished by the same command, which reuses them and scores only the rest; the output is
the uninterrupted run's (``resume_baseline``), and the previous output stays readable until then. Other options
(another fingerprint) never reuse them (a run stopped by an injected failure leaves the pieces).
Progress lines, and the --compare-sample check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_job

from promptscore import progress
from promptscore.io.files import File
from promptscore.io.publish import work_dir
from promptscore.score import fingerprint, pieces
from promptscore.score.compare import compare_scores, spearman


def scores(spark, out: Path):
    return spark.read.parquet(str(out)).select("id", "prompt", "score", "score_error")


def test_progress_lines_and_one_chunk_per_file(resume_baseline, resume_input):
    out, err = resume_baseline
    lines = [line for line in err.splitlines() if line.startswith("score: ") and "starting ahead" not in line]
    assert lines and all(" / 240 rows scored" in line for line in lines), lines
    assert any("rows/s, ETA" in line and "engine(s) scoring" in line for line in lines), lines
    report = json.loads((out / "_report.json").read_text())
    assert report["resumed_rows"] == 0 and report["resume"]["chunks"] == 6
    # Each chunk's write reads its own file only (Spark prunes the listing by _metadata.file_path).
    per_file = sorted(pq.read_metadata(f).num_rows for f in resume_input.glob("*.parquet"))
    assert sorted(t["rows"] for t in report["tasks"]) == per_file


def test_other_options_never_reuse_pieces(spark, resume_input, tiny_model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    base = ["--input", resume_input, "--output", out, "--model", tiny_model, "--max-bad-fraction", "1"]
    monkeypatch.setenv("PROMPTSCORE_TEST_FAIL_AT", "chunk-committed")
    code, _, _ = run_job("score", base, capsys)
    monkeypatch.delenv("PROMPTSCORE_TEST_FAIL_AT")
    assert code == 1
    (old,) = Path(work_dir(str(out))).glob("pieces-*")

    code, _, err = run_job("score", [*base, "--template", "chat"], capsys)
    assert code == 0, err
    report = json.loads((out / "_report.json").read_text())
    assert report["resumed_rows"] == 0 and report["resume"]["chunks_resumed"] == 0
    assert report["resume"]["fingerprint"] != old.name.removeprefix("pieces-")
    assert any(f"removed 1 leftover(s) of unfinished runs: {old.name}" in note for note in report["recovered"])


def test_the_fingerprint_covers_the_model_and_every_option_that_changes_a_score(tiny_model, tmp_path):
    import shutil

    from udfs.engines import EngineSpec

    def basis(digest="m", **changes):
        args = dict(model=digest, backend="vllm", template="raw", text_col="prompt", response_col=None,
                    compression="zstd", schema_json="{}")
        engine = {k: v for k, v in changes.items() if k not in args}
        args.update({k: v for k, v in changes.items() if k in args})
        args["engine"] = EngineSpec(model_dir="x", **engine)
        return fingerprint.fingerprint(fingerprint.score_basis(**args))

    same = basis()
    assert basis(gpu_memory_utilization=0.5, max_num_seqs=8, max_num_batched_tokens=1024) == same
    for change in (dict(max_model_len=64), dict(dtype="float16"), dict(quantization="fp8"),
                   dict(engine_args={"enforce_eager": True}), dict(template="chat"), dict(backend="transformers"),
                   dict(text_col="other"), dict(response_col="r"), dict(schema_json="{1}"), dict(digest="n")):
        assert basis(**change) != same, change

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    digest = fingerprint.model_digest(None, str(tiny_model), None)
    assert fingerprint.model_digest(None, str(copy), None) == digest  # a copy is the same model
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "note": 1}))
    assert fingerprint.model_digest(None, str(copy), None) != digest
    shutil.copytree(tiny_model, copy, dirs_exist_ok=True)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the last block is always read
    weights.write_bytes(bytes(data))
    assert fingerprint.model_digest(None, str(copy), None) != digest


def _between_old_samples(size: int) -> int:
    """An offset that the earlier fingerprint (16 blocks of 64 KiB spread over the file) never read."""
    samples, block = 16, 64 << 10
    step = (size - block) / (samples - 1)
    starts = [round(i * step) for i in range(samples)]
    offset = starts[7] + block + (starts[8] - starts[7] - block) // 2
    assert all(not s <= offset < s + block for s in starts)
    return offset


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1  # the lowest bit of a float32 weight: another model of the same shape and size
    path.write_bytes(bytes(data))


def test_the_model_digest_reads_every_byte_in_blocks_and_is_the_same_through_the_file_system(spark, tmp_path,
                                                                                            oss_bucket):
    import hashlib
    import shutil

    from fake_oss import counts, reset_counts

    assert fingerprint.block_ranges(0) == [(0, 0)] and fingerprint.block_ranges(5, 2) == [(0, 2), (2, 2), (4, 1)]
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    size = 2 * fingerprint.BLOCK + 12345
    with open(model / "model.safetensors", "wb") as f:  # sparse: mostly zeros, a few bytes set
        for offset in (0, fingerprint.BLOCK - 1, fingerprint.BLOCK, size - 1):
            f.seek(offset)
            f.write(b"\x07")
    blocks = [hashlib.sha256(open(model / "model.safetensors", "rb").read()[o:o + n]).digest()
              for o, n in fingerprint.block_ranges(size)]
    h = hashlib.sha256()
    for rel, n, digest in [("config.json", 2, hashlib.sha256(hashlib.sha256(b"{}").digest()).hexdigest()),
                           ("model.safetensors", size, hashlib.sha256(b"".join(blocks)).hexdigest())]:
        h.update(f"{rel}\0{n}\0{digest}\n".encode())
    local = fingerprint.model_digest(None, str(model))
    assert local == h.hexdigest()
    assert fingerprint.model_digest(spark, f"file:{model}") == local  # hashed in the JVM, the same bytes
    shutil.copytree(model, oss_bucket.path("models/m"))
    cache = tmp_path / "cache"
    reset_counts(spark)
    assert fingerprint.model_digest(spark, oss_bucket / "models/m", None, str(cache)) == local
    assert counts(spark)["open"] >= 3  # three blocks of the weights, read in parallel
    reset_counts(spark)
    assert fingerprint.model_digest(spark, oss_bucket / "models/m", None, str(cache)) == local
    assert counts(spark)["open"] == 0  # the node's cache: nothing read again

    # One byte changes, in the middle of a block: a new digest, through the cache too (the object
    # was written again: a new modification time) and on local disk even with the old time set back.
    _flip(oss_bucket.path("models/m/model.safetensors"), fingerprint.BLOCK + 777)
    assert fingerprint.model_digest(spark, oss_bucket / "models/m", None, str(cache)) != local
    st = (model / "model.safetensors").stat()
    assert fingerprint.model_digest(None, str(model), None, str(cache)) == local
    _flip(model / "model.safetensors", 777)
    os.utime(model / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (model / "model.safetensors").stat().st_mtime_ns == st.st_mtime_ns
    assert fingerprint.model_digest(None, str(model), None, str(cache)) != local
    assert json.loads((cache / fingerprint.CACHE_FILE).read_text())["digests"]


def test_a_model_changed_between_the_blocks_once_sampled_never_reuses_the_old_model_s_pieces(
        spark, resume_input, tiny_model, tmp_path, capsys, monkeypatch):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    out = tmp_path / "out"
    base = ["--input", resume_input, "--output", out, "--model", model, "--cache-dir", tmp_path / "cache"]
    monkeypatch.setenv("PROMPTSCORE_TEST_FAIL_AT", "chunk-committed")
    code, _, _ = run_job("score", base, capsys)
    monkeypatch.delenv("PROMPTSCORE_TEST_FAIL_AT")
    assert code == 1
    (old,) = Path(work_dir(str(out))).glob("pieces-*")
    assert list(old.glob("done/[!.]*.json"))

    weights = model / "model.safetensors"
    _flip(weights, _between_old_samples(weights.stat().st_size))
    code, _, err = run_job("score", base, capsys)
    assert code == 0, err
    report = json.loads((out / "_report.json").read_text())
    assert report["resumed_rows"] == 0 and report["resume"]["chunks_resumed"] == 0 and report["rows"] == 240
    assert report["resume"]["fingerprint"] != old.name.removeprefix("pieces-")
    assert any(f"removed 1 leftover(s) of unfinished runs: {old.name}" in note for note in report["recovered"])


def test_chunks_are_whole_files_packed_in_path_order():
    files = [File(f"f{i}", size, 0) for i, size in enumerate([5, 5, 5, 30, 1, 1])]
    chunks = pieces.pack(files, 10)
    assert [[f.path for f in c.files] for c in chunks] == [["f0", "f1"], ["f2", "f3"], ["f4", "f5"]]
    assert pieces.pack(list(reversed(files)), 10)[0].id == chunks[0].id  # the same chunks, however listed
    assert pieces.chunk_bytes(1000, slots=2, per_slot=4, max_bytes=10**9) == 125
    assert pieces.chunk_bytes(1000, slots=2, per_slot=4, max_bytes=100) == 100


def test_compare_statistics():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 1]) is None
    got = compare_scores([0.1, 0.5, None, 0.9], [0.0, 0.6, 0.3, 0.8])
    assert got["rows_compared"] == 3 and got["rows_unscored"] == 1
    assert got["max_abs_diff"] == pytest.approx(0.1) and got["spearman"] == pytest.approx(1.0)


def test_progress_helpers():
    assert [progress.duration(s) for s in (None, 5, 190, 4000)] == ["?", "5s", "3m10s", "1h06m"]
    rate = progress.Rate(window_s=10)
    assert rate.add(0, 0) is None and rate.add(2, 100) == 50
    assert progress.eta(100, 1100, 50) == 20 and progress.eta(1, None, 5) is None
    assert progress._number("12,345") == 12345
    assert progress._number("total (min, med, max (stageId: taskId))\n1,024 (12, 500, 512 (stage 1.0: task 2))") == 1024


def test_compare_sample_scores_a_sample_both_ways_and_writes_no_output(spark, resume_input, tiny_model, tmp_path,
                                                                        capsys):
    out, copy = tmp_path / "out", tmp_path / "report.json"
    # The reference is the options of the other tests here (dtype auto: float32 on the CPU), whose
    # engine is up already.
    code, stdout, err = run_job("score", ["--input", resume_input, "--output", out, "--model", tiny_model,
                                          "--dtype", "bfloat16", "--compare-dtype", "auto",
                                          "--compare-sample", "50", "--report", copy], capsys)
    assert code == 0, err
    assert not out.exists() and not Path(work_dir(str(out))).exists()
    report = json.loads(copy.read_text())
    assert report["mode"] == "compare-sample" and report["sample_rows"] == 50 == report["rows_compared"]
    assert report["options"]["dtype"] == "bfloat16" and report["reference"]["dtype"] == "auto"
    assert 0.9 < report["spearman"] <= 1.0 and 0 < report["max_abs_diff"] < 0.5
    assert stdout.startswith("score: compare-sample 50 rows, bfloat16 vs auto: Spearman ")

    code, _, err = run_job("score", ["--input", resume_input, "--output", out, "--model", tiny_model,
                                     "--compare-sample", "50"], capsys)
    assert code == 2 and "nothing to compare" in err


def test_input_files_of_a_folder_whose_name_needs_encoding_select_their_own_rows(spark, tmp_path):
    from pyspark.sql import functions as F

    from promptscore.io import hadoop

    folder = tmp_path / "a b=1%x"
    spark.createDataFrame([(f"p{i}",) for i in range(10)], "prompt string").repartition(2) \
        .write.parquet(str(folder / "part"))
    df = spark.read.parquet(str(folder / "part"))
    files = pieces.list_input_files(spark, df)
    assert len(files) == 2 and all(" " in f.path and f.size > 0 for f in files)
    rows = [df.where(F.col("_metadata.file_path").isin([hadoop.encoded_uri(spark, f.path)])).count() for f in files]
    assert sum(rows) == 10 and all(rows)
