"""Lines a job prints under spark-submit go through the JVM's stderr over one gateway connection:
5,000 of them leave the driver's open files and the JVM's threads where they were."""

from __future__ import annotations

import json

from test_spark_submit import spark_submit


def test_printing_5000_lines_under_spark_submit_keeps_files_and_threads_flat():
    proc = spark_submit(["--master", "local[1]", "--conf", "spark.ui.enabled=false",
                         "--conf", "spark.driver.memory=1g", "tests/print_soak.py", "5000"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["printed"] == 5000
    assert abs(got["after"]["fds"] - got["before"]["fds"]) <= 20, got
    assert abs(got["after"]["jvm_threads"] - got["before"]["jvm_threads"]) <= 20, got
    # Every line reached the JVM's stderr (spark-submit's own), none went to its stdout.
    err = proc.stderr.splitlines()
    assert sum(line.startswith("soak: ") for line in err) == 5002
    assert "soak: before the session" in err and not any(line.startswith("soak: ") for line in proc.stdout.splitlines())
