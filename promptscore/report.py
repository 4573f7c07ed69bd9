"""Job reports: ``_report.json`` next to the output, an optional second copy, and the summary line."""

from __future__ import annotations

import json
from pathlib import Path

from promptscore import hadoop
from udfs.uris import has_scheme, redact as redact_uri

__all__ = ["human_bytes", "redact_uri", "write_report"]


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KB``."""
    units = ("B", "KB", "MB", "GB", "TB")
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


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
