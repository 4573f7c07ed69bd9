"""Spark's Python daemon for the score job: ``pyspark.daemon``, with the score UDF's imports done
once, before it forks a Python worker for each task slot.

    spark.python.daemon.module  udfs.worker_daemon

Every scoring worker imports pandas, pyarrow and transformers' tokenizer (which imports torch):
seconds of CPU each. Under plain ``pyspark.daemon`` the executor's workers (8 on a GPU node) all
do it at once, right while the executor's engine host imports vLLM; on one H200 node that burst
took 9 cores for 12 s and slowed the engine host's start by up to 8 s. Forked from this daemon, a
worker has them at once. Nothing here starts a thread or touches a device, so forking stays safe.

The daemon runs ``python -m udfs.worker_daemon`` with the executors' Python, so ``udfs`` must be
installed there (``bootstrap/install-python-env.sh`` does), not only shipped with ``--py-files``.
A preload that fails (a package missing) only leaves its import to the workers.
"""

from __future__ import annotations

import os

from pyspark import daemon


def preload() -> list[str]:
    """Import what a scoring worker imports; the names of those that failed."""
    failed = []
    for name in ("pandas", "pyarrow", "udfs.reward", "transformers.models.auto.tokenization_auto",
                 "transformers.tokenization_utils_fast"):
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - the worker imports it again and says what is wrong
            failed.append(name)
    return failed


# Only the daemon of SQL UDFs preloads: Spark starts one daemon per worker environment and sets
# this variable for SQL's Python runners, not for RDD functions (which never tokenize).
if os.environ.get("SPARK_SIMPLIFIED_TRACEBACK"):
    preload()

if __name__ == "__main__":
    daemon.manager()
