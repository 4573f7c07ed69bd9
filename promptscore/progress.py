"""Progress lines on stderr while a job runs: done / total, %, rate, ETA, every few seconds.

A daemon thread on the driver prints one plain line (no carriage returns or bars, so they read the
same in a terminal and in DataWorks or YARN logs) at least every ``spark.promptscore.progress.interval``
seconds (default 10; 0 turns the lines off). The thread never keeps a finished job alive: it is a
daemon, and the job stops it when it ends, however it ends.

Live numbers come from Spark's SQL status store: the running writes' row counts, which executor
heartbeats (``spark.executor.heartbeatInterval``, 10 s) update while tasks run. Spark's task-level
input metrics are filled in only when a task ends, so they are not used for the live part.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from promptscore import cli

INTERVAL_CONF = "spark.promptscore.progress.interval"
DEFAULT_INTERVAL_S = 10.0


def interval_s(spark) -> float:
    """The seconds between two progress lines (``spark.promptscore.progress.interval``); 0: off."""
    raw = spark.conf.get(INTERVAL_CONF, None) or str(DEFAULT_INTERVAL_S)
    try:
        value = float(str(raw).rstrip("s"))
    except ValueError:
        raise cli.UsageError(f"{INTERVAL_CONF} must be a number of seconds, got {raw!r}") from None
    return max(0.0, value)


def duration(seconds: float | None) -> str:
    """``190`` -> ``3m10s``; ``4000`` -> ``1h06m``; None -> ``?``."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Rate:
    """Units per second over a sliding window of recent samples (at least ``window_s`` wide)."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self.samples: list[tuple[float, float]] = []

    def add(self, t: float, value: float) -> float | None:
        """Record ``value`` (a running total) at time ``t``; return the rate, None before two samples."""
        self.samples.append((t, value))
        while len(self.samples) > 2 and t - self.samples[1][0] >= self.window_s:
            self.samples.pop(0)
        t0, v0 = self.samples[0]
        return (value - v0) / (t - t0) if t > t0 else None


def eta(done: float, total: float | None, rate: float | None) -> float | None:
    """Seconds left at ``rate``; None when unknown."""
    if total is None or rate is None or rate <= 0:
        return None
    return max(0.0, (total - done) / rate)


class Reporter:
    """Prints ``line()`` every ``interval`` seconds from a daemon thread, from ``start()`` to
    ``stop()`` (a context manager does both). A line that cannot be made is skipped."""

    def __init__(self, line: Callable[[], str | None], interval: float, printer: Callable[[str], None] = cli.print_err):
        self.line, self.interval, self.printer = line, interval, printer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Reporter":
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="promptscore-progress", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "Reporter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                text = self.line()
            except Exception:  # noqa: BLE001 - a progress line is never worth failing a job
                text = None
            if text and not self._stop.is_set():
                self.printer(text)


# ---------------------------------------------------------------------------------------------
# What Spark knows about running work


def _seq(jseq) -> list:
    return [jseq.apply(i) for i in range(jseq.size())]


class LiveRows:
    """Rows that the running Spark jobs of some job groups have read into their last stage so far
    (live: updated by executor heartbeats). For a write of ``input -> pandas UDF -> files`` that
    is the rows handed to the UDF: the scan's output rows, or the shuffle's records read when the
    input was repartitioned. Each task reads a few Arrow batches ahead of what its UDF returned."""

    def __init__(self, spark) -> None:
        self.spark = spark
        self.sql = spark._jsparkSession.sharedState().statusStore()
        self.tracker = spark.sparkContext.statusTracker()
        self._execs: dict[str, int] = {}

    def _execution_of(self, group: str) -> int | None:
        if group in self._execs:
            return self._execs[group]
        jobs = set(self.tracker.getJobIdsForGroup(group))
        if not jobs:
            return None
        for e in reversed(_seq(self.sql.executionsList())):
            if any(int(j) in jobs for j in _seq(e.jobs().keySet().toSeq())):
                self._execs[group] = int(e.executionId())
                return self._execs[group]
        return None

    def rows(self, group: str, node_name: str = "Scan") -> int:
        """The live rows of the job group ``group`` (0 when Spark has nothing yet)."""
        eid = self._execution_of(group)
        if eid is None:
            return 0
        metrics = self.sql.executionMetrics(eid)
        scan, shuffle = 0, None
        for node in _seq(self.sql.planGraph(eid).allNodes()):
            for m in _seq(node.metrics()):
                name = m.name()
                if name == "records read" or (name == "number of output rows" and node.name().startswith(node_name)):
                    got = metrics.get(m.accumulatorId())
                    value = _number(got.get()) if got.isDefined() else 0
                    if name == "records read":
                        shuffle = (shuffle or 0) + value
                    else:
                        scan += value
        return shuffle if shuffle is not None else scan

    def forget(self, group: str) -> None:
        self._execs.pop(group, None)


def _number(text: str) -> int:
    """The total of an SQL metric's display text: ``12,345``, or ``total (min, med, max ...)\\n12,345 (...)``."""
    lines = str(text).strip().splitlines()
    first = (lines[1] if len(lines) > 1 and lines[0].startswith("total") else lines[0]) if lines else "0"
    digits = first.split(" ", 1)[0].replace(",", "")
    try:
        return int(float(digits))
    except ValueError:
        return 0


def busy_engines(spark) -> int:
    """Engines running tasks now: each executor with running tasks holds one engine per GPU
    its tasks use (one engine per executor without GPU scheduling)."""
    conf = spark.sparkContext.getConf()
    task_gpus = float(conf.get("spark.task.resource.gpu.amount", "0") or 0)
    executor_gpus = float(conf.get("spark.executor.resource.gpu.amount", "0") or 0)
    per_executor = max(1, int(executor_gpus // task_gpus)) if task_gpus > 0 and executor_gpus > 0 else 1
    store = spark.sparkContext._jsc.sc().statusStore()
    total = 0
    for ex in _seq(store.executorList(True)):
        active = int(ex.activeTasks())
        if active > 0:
            total += min(active, per_executor) if task_gpus > 0 else 1
    return total


def stage_input(spark, group: str) -> tuple[int, int]:
    """(bytes, records) that the finished tasks of the job group ``group`` read."""
    tracker = spark.sparkContext.statusTracker()
    stage_ids = set()
    for job in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job)
        stage_ids.update(int(s) for s in (info.stageIds if info else []))
    store = spark.sparkContext._jsc.sc().statusStore()
    nbytes = records = 0
    for s in _seq(store.activeStages()):
        if int(s.stageId()) in stage_ids:
            nbytes += int(s.inputBytes())
            records += int(s.inputRecords())
    return nbytes, records
