"""Lines a job prints under spark-submit go through the JVM's stderr over one gateway connection:
5,000 of them leave the driver's open files and the JVM's threads where they were."""

from __future__ import annotations

import json


def test_printing_5000_lines_under_spark_submit_keeps_files_and_threads_flat(soak_submit):
    proc, _ = soak_submit  # the same run gives test_conf the properties it ran with (slow: conftest)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["printed"] == 5000
    assert abs(got["after"]["fds"] - got["before"]["fds"]) <= 20, got
    assert abs(got["after"]["jvm_threads"] - got["before"]["jvm_threads"]) <= 20, got
    # Every line reached the JVM's stderr (spark-submit's own), none went to its stdout.
    err = proc.stderr.splitlines()
    assert sum(line.startswith("soak: ") for line in err) == 5002
    assert "soak: before the session" in err and not any(line.startswith("soak: ") for line in proc.stdout.splitlines())
