"""Engine hosts started while the driver still plans, so that an engine's start overlaps Spark's.

Without it, an executor's engine host starts when its first scoring task has read its first
batch: after the driver has fingerprinted the model, listed the input, read the footers and
counted the rows, and after the task has read Parquet and loaded the tokenizer. ``start_engines``
runs a small Spark job at the top of the run instead, in a thread of its own: one task per
task slot of the job (each GPU, under GPU scheduling, where Spark's resource scheduler puts it),
each of which copies the model to its node when it is given as a URI (as a scoring task would)
and spawns the engine host of its device (``udfs.engine_client.prestart``), then returns without
waiting for the engine. The scoring tasks connect to the host that is starting or ready.

It never holds the run up and never fails it: a task finds a host already running or starting
and leaves it be; a failure is said in one line and the scoring tasks start their engines as
before. A host it started belongs to its executor, as one a task starts does: it lives as long as
the executor and exits with it (also if the run fails before any row is scored), and the next
run on that executor reuses it. The Spark job ends within seconds (in a job group of its own).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable

from udfs.engines import EngineSpec

CONF = "spark.promptscore.score.prestart"


def start_in_task(engine: EngineSpec, manifest: list[tuple[str, int]] | None, cache_dir: str) -> dict[str, Any]:
    """In a task: spawn the engine host of this task's device for ``engine`` (the model staged as
    a scoring task stages it), unless one runs or starts; what it did (``engine_client.prestart``)."""
    import socket

    from udfs import engine_client
    from udfs.reward import task_gpus

    t0 = time.monotonic()
    try:
        spec = engine_client.local_spec(engine, cache_dir, manifest)
        done = engine_client.prestart(spec, task_gpus(), cache_dir)
    except Exception as e:  # noqa: BLE001 - the scoring tasks meet the same error and say it
        done = {"key": None, "started": False, "pid": None, "reason": f"{type(e).__name__}: {e}".splitlines()[0]}
    return {**done, "node": socket.gethostname(), "seconds": round(time.monotonic() - t0, 3)}


def start_engines(spark, engine: EngineSpec, manifest: list[tuple[str, int]] | None, cache_dir: str,
                  slots: int, note: Callable[[str], None] = print) -> threading.Thread:
    """Start the run's engine hosts in the background: a Spark job of ``slots`` tasks, each
    ``start_in_task``; ``note`` hears one line when it is done. Returns its thread (a daemon;
    nobody needs to wait for it)."""
    sc = spark.sparkContext
    group = f"promptscore-prestart-{uuid.uuid4().hex[:8]}"

    def task(_rows):
        from udfs.prestart import start_in_task

        yield start_in_task(engine, manifest, cache_dir)

    def run() -> None:
        try:
            sc.setJobGroup(group, "promptscore: start the engine hosts", interruptOnCancel=False)
            done = sc.parallelize(range(slots), slots).mapPartitions(task).collect()
            note(summary(done))
        except Exception as e:  # noqa: BLE001 - the run goes on; its tasks start their engines
            note(f"engine hosts not started ahead ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
                 "the scoring tasks start them")

    from pyspark import InheritableThread

    thread = InheritableThread(target=run, name="promptscore-prestart", daemon=True)
    thread.start()
    return thread


def summary(done: list[dict[str, Any]]) -> str:
    """One line on what the prestart tasks did."""
    started = sorted({f"{d['key']}@{d['node']}" for d in done if d.get("started")})
    failed = sorted({d["reason"] for d in done if not d.get("started") and d.get("key") is None and d.get("reason")})
    line = f"engine hosts starting ahead of the scoring: {', '.join(started) or 'none (already running or starting)'}"
    return line + (f"; not started: {'; '.join(failed)}" if failed else "")
