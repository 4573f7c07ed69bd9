"""The score job's Python workers fork from ``udfs.worker_daemon`` (``spark.python.daemon.module``
in conf/local.conf, conf/emr-score-gpu.conf and the tests' session), which imported the tokenizer
but leaves the project's own modules to each worker (so that a --py-files copy wins)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
from pyspark.sql.functions import pandas_udf

ROOT = Path(__file__).resolve().parents[2]


def test_sql_udf_workers_fork_from_the_daemon_that_imported_the_tokenizer(spark):
    @pandas_udf("string")
    def where(ids: pd.Series) -> pd.Series:
        import os
        import sys

        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = f.read().split(b"\0")
        daemon = next((w.decode() for w in parent if w.startswith(b"udfs.")), "pyspark.daemon")
        preloaded = "transformers.models.auto.tokenization_auto" in sys.modules
        return pd.Series([f"{daemon} {preloaded}"] * len(ids))

    rows = spark.range(0, 8, numPartitions=2).select(where("id").alias("w")).distinct().collect()
    assert [r.w for r in rows] == ["udfs.worker_daemon True"]


def test_the_daemon_forgets_the_installed_udfs_before_it_forks(tmp_path):
    """What the daemon does before it serves: the project's own modules dropped, so that a worker
    imports them from its own sys.path, where a --py-files copy comes first."""
    code = ("import sys, udfs.reward, udfs.worker_daemon as d; dropped = d.forget_own_modules(); "
            "print(sorted(n for n in sys.modules if n.split('.')[0] == 'udfs'), 'udfs.reward' in dropped)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["[]", "True"]
    # A copy of the package earlier on the path is the one imported after that.
    copy = tmp_path / "udfs"
    copy.mkdir()
    (copy / "__init__.py").write_text("WHERE = 'the shipped copy'\n")
    code = ("import sys, udfs.worker_daemon as d; d.forget_own_modules(); sys.path.insert(0, sys.argv[1]); "
            "import udfs; print(getattr(udfs, 'WHERE', 'installed'))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "the shipped copy"


def test_every_preload_imports():
    from udfs.worker_daemon import preload

    assert preload() == []
