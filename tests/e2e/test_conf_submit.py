"""A real spark-submit runs with conf/local.conf over a cluster-like spark-defaults.conf."""

from __future__ import annotations

from test_conf import loaded_conf


def test_a_real_spark_submit_runs_with_both(soak_submit):
    """The run of tests/print_soak.py (test_print_err) prints the properties its session has."""
    proc, home = soak_submit
    loaded = loaded_conf(proc)
    assert loaded["spark.eventLog.dir"] == f"file:{home}/spark-events"
    assert loaded["spark.sql.files.openCostInBytes"] == "8k"
    assert loaded["spark.sql.parquet.compression.codec"] == "zstd"  # the profile wins where both set a key
