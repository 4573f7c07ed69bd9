"""The jobs as users run them: spark-submit, in local-cluster mode (real executor processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds

from conftest import ROOT
from promptscore.tools.submit import conf_args


def spark_submit(args: list[str], timeout: int = 300, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run the venv's spark-submit with SPARK_HOME at the pip-installed pyspark."""
    import pyspark

    env = dict(os.environ, **(env_extra or {}))
    env["SPARK_HOME"] = os.path.dirname(pyspark.__file__)
    env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    cmd = [str(Path(sys.executable).parent / "spark-submit"), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


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
