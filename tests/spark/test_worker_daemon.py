"""The score job's Python workers fork from ``udfs.worker_daemon`` (``spark.python.daemon.module``
in conf/local.conf, conf/emr-score-gpu.conf and the tests' session), which imported the tokenizer
but left the project's own modules to each worker (so that a --py-files copy wins)."""

from __future__ import annotations

import pandas as pd
from pyspark.sql.functions import pandas_udf


def test_sql_udf_workers_fork_from_the_daemon_that_imported_the_tokenizer(spark):
    @pandas_udf("string")
    def where(ids: pd.Series) -> pd.Series:
        import os
        import sys

        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = f.read().split(b"\0")
        daemon = next((w.decode() for w in parent if w.startswith(b"udfs.")), "pyspark.daemon")
        preloaded = "transformers.models.auto.tokenization_auto" in sys.modules
        own = sorted(n for n in sys.modules if n == "udfs" or n.startswith("udfs."))  # left to the worker
        return pd.Series([f"{daemon} {preloaded} {own}"] * len(ids))

    rows = spark.range(0, 8, numPartitions=2).select(where("id").alias("w")).distinct().collect()
    assert [r.w for r in rows] == ["udfs.worker_daemon True []"]


def test_every_preload_imports():
    from udfs.worker_daemon import preload

    assert preload() == []
