"""What a score task tells the driver while it runs: rows whose scores have come back, how long
it has been preparing (model files, tokenizer), and the state of its engine (starting, for how
long; ready).

Spark has no live channel from a Python worker to the driver (accumulators arrive when a task
ends; the SQL metrics that executor heartbeats carry count rows written to and read from the
worker, which buffers both). So each task opens a TCP connection to a small server on the driver
(``promptscore.progress.StatusServer``, address and token in the UDF's closure) and sends one JSON
line every ``period`` seconds while something changed, and a last one when it ends. Reporting is
best effort: a task that cannot reach the driver scores on and says nothing.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Callable

EngineState = Callable[[], "dict[str, Any] | None"]
KEEPALIVE_S = 10.0


class TaskReporter:
    """One task's reports. ``rows``: rows whose scores are back (set by the task's thread);
    ``engine``: a function giving the engine's state now (called from the reporter's thread)."""

    def __init__(self, address: tuple[str, int], token: str, task: dict[str, Any], period: float = 0.5):
        self.address, self.token, self.task, self.period = address, token, task, period
        self.rows = 0
        # Until the task asks for its engine: copying the model (a URI), loading the tokenizer.
        self.preparing_since: float | None = time.monotonic()
        self.engine: EngineState | None = None
        self._sock: socket.socket | None = None
        self._sent: str | None = None
        self._sent_at = 0.0
        self._broken = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="promptscore-live", daemon=True)
        self._thread.start()

    def _state(self) -> dict[str, Any]:
        engine = None
        if self.engine is not None:
            try:
                engine = self.engine()
            except Exception:  # noqa: BLE001 - a report is never worth failing a task
                engine = None
        since = self.preparing_since
        preparing = round(time.monotonic() - since, 1) if since is not None and engine is None else None
        return {"rows": self.rows, "engine": engine, "preparing_s": preparing}

    def _send(self, state: dict[str, Any], force: bool = False) -> None:
        if self._broken:
            return
        key = json.dumps(state, sort_keys=True)
        # Unchanged: said again every KEEPALIVE_S all the same (the driver forgets silent engines).
        if key == self._sent and not force and time.monotonic() - self._sent_at < KEEPALIVE_S:
            return
        try:
            if self._sock is None:
                self._sock = socket.create_connection(self.address, timeout=5)
                self._sock.sendall((json.dumps({"token": self.token, **self.task}) + "\n").encode())
            self._sock.sendall((json.dumps(state) + "\n").encode())
            self._sent, self._sent_at = key, time.monotonic()
        except OSError:
            self._broken = True
            self._close_socket()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._send(self._state())

    def close(self) -> None:
        """Send the last state and end the connection."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._send(self._state(), force=True)
        self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None


def reporter_for_task(address: tuple[str, int] | None, token: str | None) -> TaskReporter | None:
    """A reporter for the running Spark task (None without an address or outside a task)."""
    if not address or not token:
        return None
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return None
    task = {"group": ctx.getLocalProperty("spark.jobGroup.id"), "stage": ctx.stageId(),
            "partition": ctx.partitionId(), "attempt_id": ctx.taskAttemptId()}
    return TaskReporter((address[0], int(address[1])), token, task)


def engine_state(key: str, waiting_since: float | None, start_s: float | None = None,
                 host: dict[str, Any] | None = None) -> dict[str, Any]:
    """The engine's state as a task reports it: ``node`` and ``key`` name the engine; ``state``
    is the engine host's own (``udfs.host_files.host_state``) while the task waits for it,
    else ``ready``; ``for_s``: seconds it has been starting so far."""
    out: dict[str, Any] = {"node": socket.gethostname(), "key": key}
    if waiting_since is None:
        out.update(state="ready", pid=(host or {}).get("pid"), start_s=start_s)
        return out
    if host is not None and host.get("state") == "ready":
        out.update(state="ready", pid=host.get("pid"), start_s=host.get("start_s"))
        return out
    since = float(host["since"]) if host is not None and host.get("since") else None
    out.update(state="starting", pid=(host or {}).get("pid"),
               for_s=round(time.time() - since if since is not None else time.monotonic() - waiting_since, 1))
    return out
