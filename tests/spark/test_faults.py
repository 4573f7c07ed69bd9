"""Faults in the middle of a run: an object store that fails 1% of its GETs, and the driver's reads
through one that fails; which errors are transient. Each run completes with every row once and
exactly the output of a run without the fault (processes killed mid-run: e2e/test_faults_processes)."""

from __future__ import annotations

import gzip
import json

import fake_oss
import pytest
from chispa import assert_df_equality
from conftest import run_job
from py4j.protocol import Py4JJavaError
from test_progress import bucket_settings

from promptscore import errors
from promptscore.convert import reader
from promptscore.io import files, hadoop


def test_convert_is_exact_over_a_store_that_fails_one_get_in_a_hundred(spark, oss_bucket, capsys):
    files, per_file = 600, 3
    want = []
    for i in range(files):
        rows = [(f"p{i}-{j} " + "x" * (i % 50), i * per_file + j) for j in range(per_file)]
        want += rows
        lines = [json.dumps({"prompt": p, "n": n}) for p, n in rows]
        path = oss_bucket.path(f"in/d{i % 7}/f{i:04d}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    # 503s when a GET starts and connection resets half way through a body, on 1% of each.
    with bucket_settings(spark, fail_rate=0.01, fail_ops="open,read", fail_prefix="in/", fail_seed=7):
        fake_oss.reset_counts(spark)
        code, _, err = run_job("convert", ["--input", oss_bucket / "in", "--output", oss_bucket / "out",
                                           "--schema", "prompt string, n bigint", "--sample-files", "0"], capsys)
        failures = fake_oss.failures(spark)
    assert code == 0, err
    report = json.loads(oss_bucket.path("out/_report.json").read_text())
    assert report["reader"]["name"] == "read-ahead"
    assert failures >= 5 and report["read_retries"] == {"input_files": failures, "driver": 0}
    assert report["rows_written"] == files * per_file and report["rows_rejected"] == 0
    assert_df_equality(spark.read.parquet(oss_bucket / "out").select("prompt", "n"),
                       spark.createDataFrame(want, "prompt string, n bigint"), ignore_row_order=True)


def test_driver_reads_retry_transient_failures_and_never_permanent_ones(spark, oss_bucket):
    oss_bucket.path("d/a.txt").parent.mkdir(parents=True)
    oss_bucket.path("d/a.txt").write_text("hello\n")
    oss_bucket.path("d/b.jsonl.gz").write_bytes(gzip.compress(b'{"prompt": "x"}\n' * 100))
    oss_bucket.path("d/broken.jsonl.gz").write_bytes(gzip.compress(b'{"prompt": "x"}\n' * 100)[:-20])
    with bucket_settings(spark, fail_rate=0.05, fail_seed=3):  # HEAD, LIST, GET and bodies
        fake_oss.reset_counts(spark)
        before = hadoop.retries()
        for _ in range(10):
            assert hadoop.file_size(spark, oss_bucket / "d/a.txt") == 6
            assert hadoop.read_text(spark, oss_bucket / "d/a.txt") == "hello\n"
            assert sorted(files.list_status(spark, oss_bucket / "d")) == ["a.txt", "b.jsonl.gz", "broken.jsonl.gz"]
            assert hadoop.exists(spark, oss_bucket / "d/b.jsonl.gz")
            hadoop.read_through(spark, oss_bucket / "d/b.jsonl.gz")
        assert fake_oss.failures(spark) >= 3 and hadoop.retries() - before == fake_oss.failures(spark)

        # A missing file and a broken .gz fail at once: retried only for the transient errors on the way.
        for call, error in ((lambda: hadoop.file_size(spark, oss_bucket / "d/missing.txt"), "FileNotFoundException"),
                            (lambda: hadoop.read_through(spark, oss_bucket / "d/broken.jsonl.gz"), "EOFException")):
            fake_oss.reset_counts(spark)
            before = hadoop.retries()
            with pytest.raises(Py4JJavaError, match=error):
                call()
            assert hadoop.retries() - before == fake_oss.failures(spark)


@pytest.mark.parametrize("make, transient", [
    (lambda j: j.java.net.SocketException("Connection reset"), True),
    (lambda j: j.java.net.SocketTimeoutException("Read timed out"), True),
    (lambda j: j.java.io.IOException("ErrorCode: 503 Service Unavailable, SlowDown"), True),
    (lambda j: j.java.io.IOException("read failed", j.java.net.SocketException("Connection reset")), True),
    (lambda j: j.java.io.IOException("HTTP 500 InternalError"), True),
    (lambda j: j.java.io.FileNotFoundException("no such object: oss://b/k"), False),
    (lambda j: j.java.io.IOException("ErrorCode: 403 AccessDenied: the bucket policy denies it"), False),
    (lambda j: j.java.nio.file.AccessDeniedException("oss://b/k"), False),
    (lambda j: j.java.io.IOException("NoSuchKey: 404"), False),
    (lambda j: j.java.util.zip.ZipException("Not in GZIP format"), False),
    (lambda j: j.java.io.IOException("invalid block type"), False),
    (lambda j: j.java.io.InterruptedIOException("interrupted"), False),
    (lambda j: j.java.io.IOException("503", j.java.io.FileNotFoundException("gone")), False),
])
def test_transient_and_permanent_read_errors(spark, make, transient):
    """The driver's calls and the read-ahead reader's fetches sort errors alike."""
    jvm = spark.sparkContext._jvm
    error = make(jvm)
    assert errors.is_transient(Py4JJavaError("x", error)) is transient
    assert reader.load(spark)
    assert bool(getattr(jvm, reader.CLASS).isTransient(error)) is transient
