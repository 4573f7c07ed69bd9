"""An executor killed mid-run costs nothing but time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import test_faults
from conftest import ROOT
from test_faults import FILES, PER_FILE, assert_same_output, executors_of

from promptscore.io.publish import work_dir
from promptscore.tools.submit import conf_args

prompts = test_faults.prompts  # the fixture of test_faults
uninterrupted = test_faults.uninterrupted  # the fixture of test_faults


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
