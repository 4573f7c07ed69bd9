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


def launch_gpu_score(home: Path, model: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """The score job by spark-submit over 200 prompts in ``home/in`` to ``home/scored``: two executors
    with a GPU address each from Spark's scheduler, and a new Python worker for every task (the
    ``gpu_score_submit`` fixture; test_secrets reads the same run)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = home / "in"
    src.mkdir()
    pq.write_table(pa.table({"id": list(range(200)), "prompt": [f"prompt {i} " * (i % 7 + 1) for i in range(200)]}),
                   src / "part-0.parquet")
    discovery = home / "gpus" / "claim-a-gpu.sh"
    discovery.parent.mkdir()
    discovery.write_text(CLAIM_A_GPU)
    discovery.chmod(0o755)
    events = home / "events"
    events.mkdir()
    return spark_submit([
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
        "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={events}",
        # The transformers engine: on this machine without GPUs it runs on the CPU. The model as a
        # URI: the executors copy it into the node's cache first.
        "jobs/score.py", "--input", src, "--output", home / "scored", "--model", model,
        "--cache-dir", home / "cache", "--backend", "transformers", "--partitions", "4",
        "--report", home / "score-report.json",
    ], timeout=600, env_extra=env_extra)


def test_workers_come_and_go_one_engine_per_gpu_stays(gpu_score_submit):
    """Two executors with a GPU address each from Spark's scheduler, and a new Python worker for
    every task: each GPU gets one engine, started once, which every worker of its executor uses."""
    from udfs.host_files import paths_for

    proc, home = gpu_score_submit
    out = home / "scored"
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "_report.json").read_text())
    assert report["scored"] == 200 and report["error_rows"] == 0
    assert report["spark_master"] == "local-cluster[2,1,1024]"
    tasks = report["tasks"]
    assert len(tasks) == 4 and len({t["worker_pid"] for t in tasks}) == 4  # every task its own worker
    # The task's GPU address (TaskContext resources) keys its engine: one per executor's GPU.
    keys_by_executor: dict[int, set[str]] = {}
    for t in tasks:
        keys_by_executor.setdefault(t["executor_pid"], set()).add(t["engine_key"])
    assert sorted(k for keys in keys_by_executor.values() for k in keys) == ["gpu0", "gpu1"], keys_by_executor
    assert len({(t["engine_key"], t["engine_pid"]) for t in tasks}) == 2 and len(report["engines"]) == 2
    for key in ("gpu0", "gpu1"):  # each engine started once, however many workers came and went
        assert len(Path(paths_for(key).starts).read_text().splitlines()) == 1
    assert ds.dataset(str(out), ignore_prefixes=["_", "."]).count_rows() == 200
