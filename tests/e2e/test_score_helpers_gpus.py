"""--backend auto in a Spark application of its own that schedules GPUs."""

from __future__ import annotations

import subprocess
import sys


def test_auto_is_vllm_when_spark_schedules_gpus():
    code = ("from pyspark.sql import SparkSession; from promptscore.score.model import resolve_backend\n"
            "s = SparkSession.builder.master('local[1]').config('spark.ui.enabled', 'false')"
            ".config('spark.executor.resource.gpu.amount', '1').config('spark.task.resource.gpu.amount', '0.5')"
            ".getOrCreate()\n"
            "print(resolve_backend(s, 'auto'), resolve_backend(s, 'transformers')); s.stop()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["vllm", "transformers"]
