"""Processes killed mid-run cost nothing but time: the engine host killed mid-chunk (the task starts
it again and goes on), an executor killed during a local-cluster score run. Each run completes
with every row once and exactly the output of a run without the fault."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from conftest import ROOT, run_job
from test_progress import HostRows

from promptscore.io.publish import work_dir
from promptscore.tools.submit import conf_args

FILES, PER_FILE = 6, 300


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    """1,800 prompts in 6 Parquet files (6 chunks)."""
    path = tmp_path_factory.mktemp("faults-in") / "prompts"
    path.mkdir()
    for f in range(FILES):
        ids = list(range(f * PER_FILE, (f + 1) * PER_FILE))
        pq.write_table(pa.table({"id": ids, "prompt": [f"prompt {i}: " + "words " * (i % 23 + 1) for i in ids]}),
                       path / f"part-{f}.parquet")
    return path


@pytest.fixture(scope="module")
def uninterrupted(spark, prompts, tiny_model, tmp_path_factory) -> Path:
    """The output of a run without faults."""
    import contextlib
    import io

    from conftest import load_job

    out = tmp_path_factory.mktemp("faults-whole") / "scores"
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = load_job("score").main([str(a) for a in ("--input", prompts, "--output", out, "--model", tiny_model)])
    assert code == 0, err.getvalue()
    return out


def scores(spark, out: Path):
    return spark.read.parquet(str(out)).select("id", "prompt", "score", "score_error")


def assert_same_output(spark, out: Path, reference: Path) -> None:
    got = scores(spark, out)
    assert got.count() == FILES * PER_FILE and got.select("id").distinct().count() == FILES * PER_FILE
    assert_df_equality(got, scores(spark, reference), ignore_row_order=True)


def _children(pid: int) -> dict[int, int]:
    """Every process below ``pid``, with its parent."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    below, frontier = {}, [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in below:
                below[child] = parent
                frontier.append(child)
    return below


def executors_of(pid: int) -> list[int]:
    """The executor JVMs a local-cluster run (spark-submit ``pid``) has started."""
    found = []
    for child in _children(pid):
        try:
            if b"CoarseGrainedExecutorBackend" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return sorted(found)


def test_an_engine_host_killed_mid_chunk_is_started_again_and_the_task_goes_on(spark, prompts, tiny_model, tmp_path,
                                                                              capsys, uninterrupted):
    host_rows = HostRows(spark)
    host_rows.stop_host()  # a fresh host: its count of scored rows starts at 0
    killed: list[int] = []

    def kill_mid_chunk() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if host_rows() >= 200:  # some slices of the first chunks scored, most of them not
                pid = host_rows.client.stats()["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_mid_chunk, daemon=True)
    killer.start()
    code, _, err = run_job("score", ["--input", prompts, "--output", tmp_path / "out", "--model", tiny_model], capsys)
    killer.join(timeout=5)
    assert code == 0, err
    assert killed, "the host was never killed"
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert sum(t["engine_restarts"] for t in report["tasks"]) >= 1
    assert_same_output(spark, tmp_path / "out", uninterrupted)



def test_an_executor_killed_mid_run_costs_nothing_but_time(spark, prompts, tiny_model, tmp_path, uninterrupted):
    import pyspark

    out = tmp_path / "scores"
    env = dict(os.environ, SPARK_HOME=os.path.dirname(pyspark.__file__), PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    cmd = [str(Path(sys.executable).parent / "spark-submit"), *conf_args("conf/local.conf"),
           "--master", "local-cluster[2,1,1024]", "--conf", "spark.driver.memory=1g",
           "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0", "--conf", "spark.locality.wait=0",
           "jobs/score.py", "--input", str(prompts), "--output", str(out), "--model", str(tiny_model)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    killed = None
    try:
        deadline = time.monotonic() + 400
        # Once a chunk is committed (the run is under way, chunks are left), SIGKILL an executor.
        while killed is None:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no chunk was committed"
            if any(Path(work_dir(str(out))).glob("pieces-*/done/[!.]*.json")):
                executors = executors_of(proc.pid)
                if executors:
                    killed = executors[0]
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.1)
        stdout, stderr = proc.communicate(timeout=500)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    assert "Lost executor" in stderr or "exited with code 137" in stderr or "Executor lost" in stderr, stderr[-3000:]
    report = json.loads((out / "_report.json").read_text())
    assert report["rows"] == FILES * PER_FILE and report["resume"]["chunks_scored"] == FILES
    assert_same_output(spark, out, uninterrupted)
