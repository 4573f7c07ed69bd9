"""The score job's helpers on their own: which backend ``auto`` picks, and the report's engines."""

from __future__ import annotations

from promptscore.score.model import resolve_backend
from promptscore.score.tasks import engine_summaries


def test_auto_is_transformers_when_spark_schedules_no_gpus(spark):
    assert resolve_backend(spark, "auto") == "transformers"
    assert resolve_backend(spark, "vllm") == "vllm" and resolve_backend(spark, "transformers") == "transformers"


def task(key: str | None, pid: int | None, busy: tuple[float, float] | None, idle: tuple[float, float] | None,
         device: str = "NVIDIA H100", start_s: float = 30.0) -> dict:
    """One task's entry of the report, as ``udfs.reward.TaskStats.as_dict`` writes it."""
    return {"engine_key": key, "engine_pid": pid, "engine_device": device, "engine_start_s": start_s,
            "engine_cache_dir": "/c" if key else None, "engine_cache_warm": key == "gpu0" if key else None,
            "engine_busy_start_s": busy[0] if busy else None, "engine_busy_s": busy[1] if busy else None,
            "engine_idle_start_s": idle[0] if idle else None, "engine_idle_s": idle[1] if idle else None}


def test_engine_summaries_group_tasks_by_engine_and_span_their_counters():
    tasks = [
        task("gpu0", 101, busy=(10.0, 14.0), idle=(1.0, 1.5)),
        task("gpu0", 101, busy=(12.0, 20.0), idle=(1.2, 2.0)),  # overlapping: the span, not the sum
        task("gpu1", 202, busy=(0.0, 5.0), idle=(0.0, 0.25), device="NVIDIA H200", start_s=41.0),
        task("gpu1", 303, busy=(0.0, 1.0), idle=None),  # the same GPU's next engine: an entry of its own
        task(None, None, busy=None, idle=None),  # an empty partition never connected
    ]
    NO_START = {"start_parts": None, "started_by": None, "process_started_at": None, "ready_at": None}
    assert engine_summaries(tasks) == [
        {"key": "gpu0", "pid": 101, "device": "NVIDIA H100", "start_s": 30.0, "cache_dir": "/c", "cache_warm": True,
         "tasks": 2, **NO_START, "busy_s": 10.0, "idle_s": 1.0},
        {"key": "gpu1", "pid": 202, "device": "NVIDIA H200", "start_s": 41.0, "cache_dir": "/c", "cache_warm": False,
         "tasks": 1, **NO_START, "busy_s": 5.0, "idle_s": 0.25},
        {"key": "gpu1", "pid": 303, "device": "NVIDIA H100", "start_s": 30.0, "cache_dir": "/c", "cache_warm": False,
         "tasks": 1, **NO_START, "busy_s": 1.0, "idle_s": None},
    ]
    assert engine_summaries([]) == []


def test_a_task_that_failed_in_python_is_named_by_the_last_line_of_its_traceback():
    from promptscore.errors import gist

    message = ("Job aborted due to stage failure: Task 0 in stage 3.0 failed 4 times, most recent failure: "
               "org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
               '  File "worker.py", line 1, in main\n'
               "udfs.engines.EngineError: the engine host for gpu0 could not start: vLLM 0.30.0 lacks X\n\n"
               "\tat org.apache.spark.api.python.BasePythonRunner.handlePythonException(PythonRunner.scala:572)\n")
    assert gist(message) == "udfs.engines.EngineError: the engine host for gpu0 could not start: vLLM 0.30.0 lacks X"
    assert gist("one line\nand another") == "one line"
