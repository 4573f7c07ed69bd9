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


def test_score_on_two_executors_one_engine_each_despite_worker_churn(tmp_path, tiny_model):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.table({"id": list(range(200)), "prompt": [f"prompt {i} " * (i % 7 + 1) for i in range(200)]}),
                   src / "part-0.parquet")
    out = tmp_path / "scored"
    proc = spark_submit([
        "--master", "local-cluster[2,1,1024]", *conf_args("conf/local.conf"),
        "--conf", "spark.ui.showConsoleProgress=false", "--conf", "spark.driver.memory=1g",
        # A new Python worker for every task: workers churn, engines must not.
        "--conf", "spark.python.worker.reuse=false",
        "--conf", "spark.sql.execution.arrow.maxRecordsPerBatch=16",
        # Start only once both executors are there, so that both get tasks.
        "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0", "--conf", "spark.locality.wait=0",
        "jobs/score.py", "--input", src, "--output", out, "--model", tiny_model, "--backend", "transformers",
        "--partitions", "8",
    ])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "_report.json").read_text())
    assert report["scored"] == 200 and report["error_rows"] == 0
    assert report["spark_master"] == "local-cluster[2,1,1024]"
    assert len(report["tasks"]) == 8
    assert len({t["worker_pid"] for t in report["tasks"]}) == 8  # every task its own worker
    engines = {(t["engine_key"], t["engine_pid"]) for t in report["tasks"]}
    assert len(engines) == 2 and len(report["engines"]) == 2, [(t["executor_pid"], t["engine_pid"]) for t in report["tasks"]]
    assert len({key for key, _ in engines}) == 2
    assert ds.dataset(str(out), ignore_prefixes=["_", "."]).count_rows() == 200
