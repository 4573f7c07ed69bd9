"""Shared fixtures: one local SparkSession for the whole run, and helpers that write real files."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def spark():
    """A local[2] SparkSession shared by every test (the jobs reuse it through getActiveSession)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("promptscore-tests")
        .config("spark.log.level", "WARN")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    yield session
    session.stop()


def write_lines(path: Path, lines: list[str], newline: str = "\n", gz: bool = False) -> Path:
    """Write ``lines`` joined by ``newline`` (and a final one) to ``path``, gzipped if asked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (newline.join(lines) + (newline if lines else "")).encode("utf-8")
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def records(*prompts: str, **extra) -> list[str]:
    """JSON lines ``{"prompt": p, **extra}`` for each prompt."""
    return [json.dumps({"prompt": p, **extra}, ensure_ascii=False) for p in prompts]


def load_job(name: str):
    """The entry module ``jobs/<name>.py``, imported from its file (as spark-submit runs it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_job(name: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``jobs/<name>.py`` in this process (on the shared session); return code, stdout, stderr."""
    code = load_job(name).main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err
