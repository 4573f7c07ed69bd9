"""The jobs as users run them: spark-submit, in local-cluster mode (real executor processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds

from conftest import ROOT, records, write_lines
from promptscore.submit import conf_args


def spark_submit(args: list[str], timeout: int = 300, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run the venv's spark-submit with SPARK_HOME at the pip-installed pyspark."""
    import pyspark

    env = dict(os.environ, **(env_extra or {}))
    env["SPARK_HOME"] = os.path.dirname(pyspark.__file__)
    env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    cmd = [str(Path(sys.executable).parent / "spark-submit"), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_convert_on_two_executor_processes(tmp_path):
    src = tmp_path / "in"
    for i in range(40):
        write_lines(src / f"d{i % 4}" / f"f{i:02d}.jsonl", records(*(f"p{i}-{j}" for j in range(25))))
    write_lines(src / "bad.jsonl", ["not json", *records("last")])
    out = tmp_path / "out"
    proc = spark_submit([
        "--master", "local-cluster[2,1,1024]", *conf_args("conf/local.conf"),
        "--conf", "spark.ui.showConsoleProgress=false", "--conf", "spark.driver.memory=1g",
        "jobs/convert.py", "--input", src, "--output", out, "--max-bad-fraction", "0.01",
    ])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "_report.json").read_text())
    assert report["rows_written"] == 1001 and report["rows_rejected"] == 1
    assert report["task_slots"] == 2 and report["spark_master"] == "local-cluster[2,1,1024]"
    assert proc.stdout.strip() == report["summary"]
    assert ds.dataset(str(out), ignore_prefixes=["_", "."]).count_rows() == 1001
    assert ds.dataset(str(out / "_rejects")).to_table().column("raw").to_pylist() == ["not json"]
    assert (out / "_SUCCESS").exists()


def test_usage_error_from_spark_submit_is_one_line(tmp_path):
    proc = spark_submit([*conf_args("conf/local.conf"), "jobs/convert.py", "--input",
                         tmp_path / "nowhere", "--output", tmp_path / "out"])
    assert proc.returncode == 2
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("convert:")]
    assert errors == [errors[0]] and errors[0].startswith("convert: error: input not found")
    assert "Traceback" not in proc.stderr


CLAIM_A_GPU = """#!/bin/sh
# A GPU discovery script for executors that share a machine: each call gets an address of its own.
i=0
while ! mkdir "$(dirname "$0")/claimed-$i" 2>/dev/null; do i=$((i + 1)); done
echo "{\\"name\\": \\"gpu\\", \\"addresses\\": [\\"$i\\"]}"
"""


def test_workers_come_and_go_one_engine_per_gpu_stays(tmp_path, tiny_model):
    """Two executors with a GPU address each from Spark's scheduler, and a new Python worker for
    every task: each GPU gets one engine, started once, which every worker of its executor uses."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from udfs.engine_host import paths_for

    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.table({"id": list(range(200)), "prompt": [f"prompt {i} " * (i % 7 + 1) for i in range(200)]}),
                   src / "part-0.parquet")
    discovery = tmp_path / "gpus" / "claim-a-gpu.sh"
    discovery.parent.mkdir()
    discovery.write_text(CLAIM_A_GPU)
    discovery.chmod(0o755)
    out = tmp_path / "scored"
    proc = spark_submit([
        "--master", "local-cluster[2,1,1024]", *conf_args("conf/local.conf"),
        "--conf", "spark.ui.showConsoleProgress=false", "--conf", "spark.driver.memory=1g",
        "--conf", "spark.worker.resource.gpu.amount=1",
        "--conf", f"spark.worker.resource.gpu.discoveryScript={discovery}",
        "--conf", "spark.executor.resource.gpu.amount=1", "--conf", "spark.task.resource.gpu.amount=1",
        # A new Python worker for every task: workers churn, engines must not.
        "--conf", "spark.python.worker.reuse=false",
        "--conf", "spark.sql.execution.arrow.maxRecordsPerBatch=16",
        # Start only once both executors are there, so that both get tasks.
        "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0", "--conf", "spark.locality.wait=0",
        # The transformers engine: on this machine without GPUs it runs on the CPU.
        "jobs/score.py", "--input", src, "--output", out, "--model", tiny_model, "--backend", "transformers",
        "--partitions", "8",
    ])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "_report.json").read_text())
    assert report["scored"] == 200 and report["error_rows"] == 0
    assert report["spark_master"] == "local-cluster[2,1,1024]"
    tasks = report["tasks"]
    assert len(tasks) == 8 and len({t["worker_pid"] for t in tasks}) == 8  # every task its own worker
    # The task's GPU address (TaskContext resources) keys its engine: one per executor's GPU.
    keys_by_executor: dict[int, set[str]] = {}
    for t in tasks:
        keys_by_executor.setdefault(t["executor_pid"], set()).add(t["engine_key"])
    assert sorted(k for keys in keys_by_executor.values() for k in keys) == ["gpu0", "gpu1"], keys_by_executor
    assert len({(t["engine_key"], t["engine_pid"]) for t in tasks}) == 2 and len(report["engines"]) == 2
    for key in ("gpu0", "gpu1"):  # each engine started once, however many workers came and went
        assert len(Path(paths_for(key).starts).read_text().splitlines()) == 1
    assert ds.dataset(str(out), ignore_prefixes=["_", "."]).count_rows() == 200
