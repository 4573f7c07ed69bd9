"""Exit codes tell the truth: 1 only for what running the same command again may fix. A full disk,
an exceeded quota or exhausted memory is 4 (one line with the cause and the path), a scheme no
file system serves is 2. Each is driven by a real failure: a tmpfs of 1 MB that fills up (when
this machine lets the tests mount one), and Java exceptions built and thrown in the JVM."""

from __future__ import annotations

import base64
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_job, write_lines

from promptscore import errors


def tmpfs(path: Path, options: str):
    """Mount a tmpfs with ``options`` at ``path`` for the block (skip where mounting is not allowed)."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def full_disk(tmp_path) -> Path:
    """A tmpfs of 1 MB under ``tmp_path``."""
    yield from tmpfs(tmp_path / "small", "size=1m")


@pytest.fixture
def few_inodes(tmp_path) -> Path:
    """A tmpfs that holds at most a few files."""
    yield from tmpfs(tmp_path / "few", "size=1m,nr_inodes=4")


def thrown_in_the_jvm(spark, java_exception):
    """The Py4JJavaError of ``java_exception`` thrown in the JVM (as the cause of the
    ExecutionException that ``CompletableFuture.get`` throws)."""
    jvm = spark.sparkContext._jvm
    try:
        jvm.java.util.concurrent.CompletableFuture.failedFuture(java_exception).get()
    except Exception as e:  # noqa: BLE001 - what a failure in the JVM is on this side
        return e
    raise AssertionError("nothing was thrown")


def test_a_disk_that_fills_up_during_the_write_is_exit_4_with_the_path(spark, tmp_path, full_disk, capsys):
    src = tmp_path / "in"
    for i in range(4):  # 4 x 0.75 MB of prompts that do not compress
        write_lines(src / f"f{i}.jsonl", [json.dumps({"prompt": base64.b64encode(os.urandom(3000)).decode()})
                                          for _ in range(250)])
    out = full_disk / "out"
    code, stdout, err = run_job("convert", ["--input", src, "--output", out, "--compression", "none"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == errors.EXIT_RESOURCES == 4 and stdout == "" and len(lines) == 1, err
    line = lines[0]
    assert line.startswith("convert: error: disk full at ") and str(full_disk) in line
    assert "No space left on device" in line and "then run the same command again. Exit 4" in line
    assert "Traceback" not in err
    assert not out.exists()  # nothing half-written claims to be the output
    assert not any(full_disk.iterdir())  # the run removed what it had staged


def test_python_and_java_disk_full_errors_are_exit_4(spark, full_disk, few_inodes):
    from promptscore.io import hadoop

    with pytest.raises(OSError) as e:
        for i in range(10):
            (few_inodes / f"f{i}").write_text("x")
    got = errors.classify(e.value)  # Python names the file it could not create
    assert got.code == 4 and f"disk full at {few_inodes}/f" in got.line and "[Errno 28] No space left" in got.line

    with pytest.raises(OSError) as e:
        (full_disk / "big.bin").write_bytes(os.urandom(2 << 20))
    got = errors.classify(e.value)  # a failed write() names no file: the line says so
    assert got.code == 4 and "disk full at a path not named" in got.line and "No space left on device" in got.line

    try:
        hadoop.write_bytes(spark, f"file:{full_disk}/big2.bin", os.urandom(2 << 20))
    except Exception as e:  # noqa: BLE001 - the JVM's own error
        java = errors.classify(e)
        assert "FSError" in "".join(t for t, _ in errors.cause_chain(e))
    assert java.code == 4 and "No space left on device" in java.line


def test_an_hdfs_quota_is_exit_4_naming_the_folder(spark):
    jvm = spark.sparkContext._jvm
    quota = jvm.org.apache.hadoop.hdfs.protocol.DSQuotaExceededException(1 << 30, (1 << 30) + 4096)
    quota.setPathName("/user/etl/prompts")
    got = errors.classify(thrown_in_the_jvm(spark, quota))
    assert got.code == 4
    assert got.line.startswith("quota exceeded at /user/etl/prompts: DSQuotaExceededException: The DiskSpace quota")
    assert "raise the quota" in got.line

    names = jvm.org.apache.hadoop.hdfs.protocol.NSQuotaExceededException(1000, 1001)
    assert errors.classify(thrown_in_the_jvm(spark, names)).code == 4

    edquot = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/home/etl/out/part-0.parquet")
    got = errors.classify(edquot)
    assert got.code == 4 and "quota exceeded at /home/etl/out/part-0.parquet" in got.line


def test_memory_exhausted_is_exit_4(spark):
    oom = spark.sparkContext._jvm.java.lang.OutOfMemoryError("Java heap space")
    got = errors.classify(thrown_in_the_jvm(spark, oom))
    assert got.code == 4 and got.line.startswith("out of memory: OutOfMemoryError: Java heap space")
    assert "spark.driver.memory" in got.line

    try:
        bytearray(1 << 62)
    except MemoryError as e:
        assert errors.classify(e).code == 4


def test_other_failures_stay_exit_1(spark):
    assert errors.classify(RuntimeError("connection reset by peer")) is None
    io = spark.sparkContext._jvm.java.io.IOException("Connection reset by peer")
    assert errors.classify(thrown_in_the_jvm(spark, io)) is None


def test_help_lists_every_exit_code(capsys):
    from conftest import load_job

    with pytest.raises(SystemExit):
        load_job("convert").main(["--help"])
    text = capsys.readouterr().out
    for code in ("0  success", "1  unexpected failure that a retry may fix", "2  fix the call", "3  data quality",
                 "4  out of resources"):
        assert code in text
    assert "--changed-files" in text and "symlink loop" in text


@pytest.mark.parametrize("python_says, missing", [
    ("No module named udfs.worker_daemon", ""),  # the package is there, the module not
    ("Error while finding module specification for 'udfs.worker_daemon' (ModuleNotFoundError: No module named "
     "'udfs')", " (no package udfs)"),  # no package udfs at all
])
def test_python_workers_that_cannot_start_for_a_missing_module_are_exit_2(spark, python_says, missing):
    # Spark's own words when the daemon of spark.python.daemon.module cannot be imported, with
    # Python's line for `python -m udfs.worker_daemon` in each case.
    jvm = spark.sparkContext._jvm
    eof = jvm.org.apache.spark.SparkException(
        "EOFException occurred while reading the port number from udfs.worker_daemon's stdout.")
    worker = jvm.org.apache.spark.SparkException(
        f"Error from python worker:\n  /opt/promptscore/venv/bin/python: {python_says}\n"
        "PYTHONPATH was:\n  /opt/spark/python/lib/pyspark.zip", eof)
    got = errors.classify(thrown_in_the_jvm(spark, worker))
    assert got.code == 2
    assert got.line.startswith("Spark's Python workers cannot start: /opt/promptscore/venv/bin/python has no module "
                               f"udfs.worker_daemon{missing}; install it")
    assert "spark.python.daemon.module" in got.line and "\n" not in got.line


def test_pythons_own_lines_for_a_missing_module_are_those_the_classifier_reads(tmp_path):
    """The two forms above are what this Python prints for ``python -m`` of a missing module."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    lines = [subprocess.run([sys.executable, "-m", name], cwd=tmp_path, capture_output=True, text=True).stderr.strip()
             for name in ("pkg.nosuch", "nosuchpkg.worker_daemon")]
    assert lines[0] == f"{sys.executable}: No module named pkg.nosuch"
    assert lines[1] == (f"{sys.executable}: Error while finding module specification for 'nosuchpkg.worker_daemon' "
                        "(ModuleNotFoundError: No module named 'nosuchpkg')")
