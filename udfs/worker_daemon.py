"""Spark's Python daemon for the score job: ``pyspark.daemon``, with the score UDF's imports done
once, before it forks a Python worker for each task slot.

    spark.python.daemon.module  udfs.worker_daemon

Every scoring worker imports pandas, pyarrow and transformers' tokenizer (which imports torch):
seconds of CPU each. Under plain ``pyspark.daemon`` the executor's workers (8 on a GPU node) all
do it at once, right while the executor's engine host imports vLLM; on one H200 node that burst
took 9 cores for 12 s and slowed the engine host's torch and vLLM imports by up to 8 s. Forked
from this daemon, a worker has them at once. Nothing here starts a Python thread or touches a
device; pyarrow's allocator (jemalloc) may run a native background thread, which its own fork
handlers account for, as they do wherever pyarrow is loaded in a process that forks.

Only third-party modules are preloaded: the project's own (``udfs.*``) are left to each worker,
so that a newer copy shipped with ``--py-files`` still wins over an installed one, as it does
under ``pyspark.daemon``.

The daemon runs ``python -m udfs.worker_daemon`` with the executors' Python, so ``udfs`` must be
installed there (``bootstrap/install-python-env.sh`` does), not only shipped with ``--py-files``;
where it is not, the job exits 2 and says so. A preload that fails (a package missing) only leaves
its import to the workers.
"""

from __future__ import annotations

import os
import sys

from pyspark import daemon


def preload() -> list[str]:
    """Import what a scoring worker imports; the names of those that failed."""
    failed = []
    for name in ("pandas", "pyarrow", "transformers.models.auto.tokenization_auto",
                 "transformers.tokenization_utils_fast"):
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - the worker imports it again and says what is wrong
            failed.append(name)
    return failed


# Only the daemon of SQL UDFs preloads: Spark starts one daemon per worker environment and sets
# this variable for SQL's Python runners, not for RDD functions (which never tokenize). With
# spark.sql.execution.pyspark.udf.simplifiedTraceback.enabled=false it is not set, and nothing is
# preloaded: the workers import as under pyspark.daemon. Under conf/local.conf the convert job's
# one pandas UDF (the check of gzip files, run only after a read failed on a compressed file) forks
# from this daemon too, and then pays the preload once (about 3 s of one core).
if os.environ.get("SPARK_SIMPLIFIED_TRACEBACK"):
    preload()


def forget_own_modules() -> list[str]:
    """Drop the project's own modules from ``sys.modules`` (``python -m udfs.worker_daemon``
    imported the package ``udfs`` from where it is installed), so that the forked workers import
    them afresh from their own ``sys.path``: a ``--py-files`` copy first, if there is one. The
    names dropped."""
    names = [n for n in sys.modules if n == "udfs" or n.startswith("udfs.")]
    for name in names:
        del sys.modules[name]
    return names


if __name__ == "__main__":
    forget_own_modules()
    daemon.manager()
