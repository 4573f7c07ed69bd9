"""The score job's progress line: rows of committed chunks and rows scored in running ones."""

from __future__ import annotations

import threading
import time

from pyspark.sql import SparkSession

from promptscore import progress


class ScoreProgress:
    """The numbers behind the progress line: rows of committed chunks (this run's and reused
    ones) plus the rows whose scores have come back in the chunks being written, as their tasks
    report them (``progress.StatusServer``; without it, the rows the Python workers handed back
    to Spark, which lag). While no row of this run is scored yet and engines are starting, the
    line says so instead; the rate and ETA count scored rows only."""

    def __init__(self, spark: SparkSession, total: int, chunks: int, resumed_rows: int, resumed_chunks: int,
                 status: progress.StatusServer | None = None):
        self.spark, self.total, self.chunks = spark, total, chunks
        self.done_rows, self.done_chunks = resumed_rows, resumed_chunks
        self.resumed_rows = resumed_rows
        self.status = status
        self.running: set[str] = set()
        self.lock = threading.Lock()
        self.rate = progress.Rate()
        self._live: progress.LiveRows | None = None

    def begin(self, group: str) -> None:
        if self.status is not None:
            self.status.open(group)
        with self.lock:
            self.running.add(group)

    def end(self, group: str, rows: int | None) -> None:
        with self.lock:
            self.running.discard(group)
            if rows is not None:
                self.done_rows += rows
                self.done_chunks += 1
            if self.status is not None:
                self.status.close(group)
        if self._live is not None:
            self._live.forget(group)

    def rows_now(self) -> int:
        """Rows of committed chunks plus rows scored so far in the running ones."""
        with self.lock:
            done, running = self.done_rows, list(self.running)
            live = 0
            for group in running:
                reported = self.status.rows(group) if self.status is not None else 0
                live += max(reported, self._handed_back(group))
        return min(self.total, done + live) if self.total else done + live

    def _handed_back(self, group: str) -> int:
        try:
            if self._live is None:
                self._live = progress.LiveRows(self.spark)
            return self._live.node_rows(group, "ArrowEvalPython")
        except Exception:  # noqa: BLE001 - the status store of a job that just ended
            return 0

    def line(self) -> str:
        now = self.rows_now()
        scored = now - self.resumed_rows
        # The rate starts with the first scored row: an engine's start is no part of it.
        rate = self.rate.add(time.monotonic(), scored) if scored > 0 else None
        engines = self.status.engine_states() if self.status is not None else None
        chunks = f"chunks {self.done_chunks:,} / {self.chunks:,} done"
        rows = f"{now:,} / {self.total:,} rows scored"
        if engines and engines["starting"] and not scored:
            n = engines["starting"] + engines["ready"]
            return (f"score: engines starting ({engines['starting']} of {n}), "
                    f"{progress.duration(engines['starting_s'])} so far; {rows}; {chunks}")
        if engines and engines["preparing"] and not engines["ready"] and not scored:
            return (f"score: tasks preparing ({engines['preparing']}: model files, tokenizer), "
                    f"{progress.duration(engines['preparing_s'])} so far; {rows}; {chunks}")
        pct = f"{100 * now / self.total:.1f}%" if self.total else "-"
        resumed = f", {self.resumed_rows:,} resumed" if self.resumed_rows else ""
        if engines is None:
            state = "no live engine status"
        elif not self.status.heard:
            state = "no task has reported yet"
        else:
            state = f"{engines['ready']} engine(s) scoring"
            if engines["starting"]:
                state += f", {engines['starting']} starting ({progress.duration(engines['starting_s'])} so far)"
        return (f"score: {now:,} / {self.total:,} rows scored ({pct}){resumed}, "
                f"{rate or 0:,.0f} rows/s, ETA {progress.duration(progress.eta(now, self.total, rate))}; "
                f"{state}; {chunks}")

