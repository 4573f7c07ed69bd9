"""The convert job's progress line (``promptscore.progress``), from what the running tasks have
done."""

from __future__ import annotations

import time

from pyspark.sql import SparkSession

from promptscore import progress
from promptscore.convert.inputs import InputIndex
from promptscore.io.reports import human_bytes


class ConvertProgress:
    """The progress line of the write, from what the running tasks have done (live, at each
    executor heartbeat): the lines handed on to be parsed and written, and the bytes of the files
    whose lines have all been handed on (the read-ahead reader counts a file when its last line
    goes; Spark's text source counts bytes as it reads them). Percent, rate and ETA are of those
    bytes: never more than was done."""

    def __init__(self, spark: SparkSession, index: InputIndex):
        self.spark, self.index = spark, index
        self.group: str | None = None
        self.rate = progress.Rate()
        self._live: progress.LiveRows | None = None

    def line(self) -> str | None:
        if self.group is None:
            return None
        if self._live is None:
            self._live = progress.LiveRows(self.spark)
        group = self.group
        read = self._live.rows(group)
        done_bytes, _ = progress.stage_input(self.spark, group)
        total, files = self.index.bytes, self.index.files
        if not done_bytes:
            return (f"convert: {read:,} lines read of {files:,} files ({human_bytes(total)}); bytes, rate and ETA "
                    "as files are done")
        done = min(total, done_bytes) if total else done_bytes
        rate = self.rate.add(time.monotonic(), done)
        pct = done / total if total else 1.0
        return (f"convert: {human_bytes(done)} / {human_bytes(total)} of {files:,} files read ({pct:.1%}), "
                f"{read:,} lines, {human_bytes(rate or 0)}/s, ETA {progress.duration(progress.eta(done, total, rate))}")
