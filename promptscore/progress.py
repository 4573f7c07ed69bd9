"""Progress lines on stderr while a job runs: done / total, %, rate, ETA, every few seconds.

A daemon thread on the driver prints one plain line (no carriage returns or bars, so they read the
same in a terminal and in DataWorks or YARN logs) at least every ``spark.promptscore.progress.interval``
seconds (default 10; 0 turns the lines off). The thread never keeps a finished job alive: it is a
daemon, and the job stops it when it ends, however it ends.

Live numbers of the convert job come from Spark's status stores: the rows its scan has handed
on and the bytes of the files it has read, which executor heartbeats
(``spark.executor.heartbeatInterval``, 10 s) update while tasks run. The score job's tasks report
to the driver themselves (``StatusServer``, ``udfs.live``): Spark's own counts there are of rows
handed to the Python workers, which run far ahead of the engine.
"""

from __future__ import annotations

import json
import secrets
import socket
import socketserver
import threading
import time
from typing import Any, Callable

from promptscore import cli, errors, sparkapi

INTERVAL_CONF = "spark.promptscore.progress.interval"
DEFAULT_INTERVAL_S = 10.0


def interval_s(spark) -> float:
    """The seconds between two progress lines (``spark.promptscore.progress.interval``); 0: off."""
    raw = spark.conf.get(INTERVAL_CONF, None) or str(DEFAULT_INTERVAL_S)
    try:
        value = float(str(raw).rstrip("s"))
    except ValueError:
        raise errors.UsageError(f"{INTERVAL_CONF} must be a number of seconds, got {raw!r}") from None
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


class LiveRows:
    """Rows that the running Spark jobs of some job groups have read into their last stage so far
    (live: updated by executor heartbeats). For a write of ``input -> pandas UDF -> files`` that
    is the rows handed to the UDF: the scan's output rows, or the shuffle's records read when the
    input was repartitioned. Each task reads a few Arrow batches ahead of what its UDF returned."""

    def __init__(self, spark) -> None:
        self.spark = spark
        self.tracker = spark.sparkContext.statusTracker()
        self._execs: dict[str, int] = {}

    def _execution_of(self, group: str) -> int | None:
        if group in self._execs:
            return self._execs[group]
        jobs = set(self.tracker.getJobIdsForGroup(group))
        if not jobs:
            return None
        found = sparkapi.execution_of_jobs(self.spark, jobs)
        if found is not None:
            self._execs[group] = found
        return found

    def node_rows(self, group: str, node_name: str) -> int:
        """The live "number of output rows" of the plan nodes named ``node_name`` of the job group
        ``group``. For ``ArrowEvalPython`` (a pandas UDF): rows the Python workers handed back,
        which they buffer (64 KB), so this lags the rows they have finished."""
        eid = self._execution_of(group)
        if eid is None:
            return 0
        return sum(_number(text) if text is not None else 0
                   for node, name, text in sparkapi.plan_metrics(self.spark, eid)
                   if node == node_name and name == "number of output rows")

    def rows(self, group: str, node_name: str = "Scan") -> int:
        """The live rows of the job group ``group`` (0 when Spark has nothing yet)."""
        eid = self._execution_of(group)
        if eid is None:
            return 0
        scan, shuffle = 0, None
        for node, name, text in sparkapi.plan_metrics(self.spark, eid):
            if name == "records read" or (name == "number of output rows" and node.startswith(node_name)):
                value = _number(text) if text is not None else 0
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


def stage_input(spark, group: str) -> tuple[int, int]:
    """(bytes, records) the tasks of the job group ``group``'s active stages have read so far
    (running tasks' counts as of their executors' last heartbeats)."""
    tracker = spark.sparkContext.statusTracker()
    stage_ids = set()
    for job in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job)
        stage_ids.update(int(s) for s in (info.stageIds if info else []))
    nbytes = records = 0
    for stage_id, stage_bytes, stage_records in sparkapi.active_stage_input(spark):
        if stage_id in stage_ids:
            nbytes += stage_bytes
            records += stage_records
    return nbytes, records


# ---------------------------------------------------------------------------------------------
# What running tasks say themselves


class StatusServer:
    """A TCP server on the driver that score tasks report to (``udfs.live``): per task, the rows
    whose scores have come back, and the state of the engine it uses.

    Only tasks of the job groups ``open``ed and not yet ``close``d are counted, and only
    connections that present the token. Per (stage, partition) the latest attempt counts: a
    retried task starts again from nothing. An engine counts as long as a task reported on it in
    the last ``stale_s`` seconds.
    """

    def __init__(self, bind_host: str, advertise_host: str, stale_s: float = 30.0):
        self.token = secrets.token_hex(16)
        self.stale_s = stale_s
        self.lock = threading.Lock()
        self.groups: dict[str, dict[tuple, tuple[int, int]]] = {}
        self.engines: dict[tuple, dict[str, Any]] = {}
        self.preparing: dict[tuple, tuple[float, float]] = {}  # task -> (heard at, seconds so far)
        self.heard = False
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.connection.settimeout(3600)
                try:
                    first = json.loads(self.rfile.readline(4096) or b"{}")
                    if not secrets.compare_digest(str(first.get("token", "")), server.token):
                        return
                    task = (first.get("group"), first.get("stage"), first.get("partition"),
                            int(first.get("attempt_id") or 0))
                    while line := self.rfile.readline(65536):
                        server._update(task, json.loads(line))
                except (OSError, ValueError, TypeError, AttributeError):
                    return

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            block_on_close = False
            allow_reuse_address = True

        self._server = Server((bind_host, 0), Handler)
        self.address = (advertise_host, self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="promptscore-status", daemon=True)
        self._thread.start()

    @classmethod
    def for_session(cls, spark) -> "StatusServer | None":
        """A server where this session's executors reach the driver (``spark.driver.host``),
        or None when none can be started here."""
        conf = spark.sparkContext.getConf()
        host = conf.get("spark.driver.host", None) or socket.gethostname()
        bind = conf.get("spark.driver.bindAddress", None) or host
        try:
            return cls(bind, host)
        except OSError:
            return None

    def _update(self, task: tuple, msg: dict) -> None:
        group, stage, partition, attempt = task
        now = time.monotonic()
        with self.lock:
            self.heard = True
            tasks = self.groups.get(group)
            if tasks is not None:
                seen = tasks.get((stage, partition))
                if seen is None or attempt >= seen[0]:
                    tasks[(stage, partition)] = (attempt, max(0, int(msg.get("rows") or 0)))
                if msg.get("preparing_s") is not None:
                    self.preparing[task] = (now, float(msg["preparing_s"]))
                else:
                    self.preparing.pop(task, None)
            engine = msg.get("engine")
            if isinstance(engine, dict) and engine.get("key"):
                ident = (engine.get("node"), engine["key"])
                old = self.engines.get(ident)
                if (old is not None and old["state"] == "ready" and engine.get("state") == "starting"
                        and engine.get("pid") in (None, old.get("pid"))):
                    old["at"] = now  # a task still waiting on a host that is up by now
                else:
                    self.engines[ident] = {**engine, "at": now}

    def open(self, group: str) -> None:
        with self.lock:
            self.groups.setdefault(group, {})

    def close(self, group: str) -> None:
        with self.lock:
            self.groups.pop(group, None)
            for task in [t for t in self.preparing if t[0] == group]:
                del self.preparing[task]

    def rows(self, group: str) -> int:
        """Rows whose scores have come back in the running tasks of ``group``."""
        with self.lock:
            return sum(rows for _, rows in self.groups.get(group, {}).values())

    def engine_states(self) -> dict[str, Any]:
        """``ready``: engines reported ready lately; ``starting``: engines starting now, and
        ``starting_s``: the longest of their starts so far; ``preparing``: tasks that have not
        asked for an engine yet (model files, tokenizer), and ``preparing_s``, the longest."""
        now = time.monotonic()
        ready = starting = 0
        longest = 0.0
        with self.lock:
            for task, (at, _so_far) in list(self.preparing.items()):
                if now - at > self.stale_s:
                    del self.preparing[task]
            preparing = len(self.preparing)
            preparing_s = max((so_far + now - at for at, so_far in self.preparing.values()), default=0.0)
            for ident, e in list(self.engines.items()):
                age = now - e["at"]
                if age > self.stale_s:
                    del self.engines[ident]
                elif e.get("state") == "ready":
                    ready += 1
                else:
                    starting += 1
                    longest = max(longest, float(e.get("for_s") or 0) + age)
        return {"ready": ready, "starting": starting, "starting_s": longest, "preparing": preparing,
                "preparing_s": preparing_s}

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
