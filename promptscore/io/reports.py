"""Job reports: ``_report.json`` next to the output, an optional second copy, and the small pieces
every report and summary line is made of."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from promptscore.io import hadoop
from udfs.uris import has_scheme
from udfs.uris import redact as redact_uri

__all__ = ["Phases", "human_bytes", "num", "now_iso", "redact_uri", "spark_info", "write_report"]


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KB``."""
    units = ("B", "KB", "MB", "GB", "TB")
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def num(value, fmt: str) -> str:
    """``value`` in ``fmt``, or ``-`` for None."""
    return "-" if value is None else format(value, fmt)


def now_iso() -> str:
    """The time now in UTC, to the second, as reports write it (``started_at``, ``finished_at``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def spark_info(spark) -> dict:
    """The Spark a report was made on: ``spark_version`` and ``spark_master``."""
    return {"spark_version": spark.version, "spark_master": spark.sparkContext.master}


def write_report(spark, report: dict, path: str | None, copy_to: str | None = None) -> None:
    """Write ``report`` as JSON to ``path`` (any Hadoop URI) and, if given, to ``copy_to``:
    a local file on the driver, or a Hadoop URI when it has a scheme."""
    text = json.dumps(report, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    if path:
        hadoop.write_text(spark, path, text)
    if copy_to:
        if has_scheme(copy_to):
            hadoop.write_text(spark, copy_to, text)
        else:
            Path(copy_to).parent.mkdir(parents=True, exist_ok=True)
            Path(copy_to).write_text(text, encoding="utf-8")


class Phases:
    """Seconds spent in each named phase of a job, for the report."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._t = time.monotonic()

    def lap(self, name: str) -> float:
        now = time.monotonic()
        self.phases[name] = round(now - self._t, 3)
        self._t = now
        return self.phases[name]
