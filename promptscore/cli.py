"""What every job entry point shares: argument errors, exit codes, the session, the summary line.

Exit codes (the same for every job):
  0  success
  1  something unexpected (a traceback is printed)
  2  usage error: bad flags, missing input, output already there. Fix the call; do not retry.
  3  data quality: too many rejected rows. The output and the rejects are written; no _SUCCESS.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback
from typing import Any, Callable, NoReturn, Sequence

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_DATA = 3


class UsageError(Exception):
    """The call is wrong (flags, paths, existing output). Exit code 2, one line on stderr."""


class DataQualityError(Exception):
    """Too many rows were rejected. Exit code 3, after everything was written."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


class JobParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2, with no usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def parse_size(text: str) -> int:
    """Parse a byte size as Spark writes them: ``256m``, ``1g``, ``8k``, ``1048576``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive size: {text!r} (use e.g. 256m, 1g)")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def fraction(text: str) -> float:
    """Parse a fraction in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text!r}")
    return value


def print_err(text: str) -> None:
    """Print one line to the job's stderr.

    Under spark-submit the Python driver's stderr is merged into stdout by Spark's PythonRunner,
    so the line goes through the JVM's own ``System.err`` there, where schedulers expect it.
    """
    if os.environ.get("PYSPARK_GATEWAY_PORT"):
        try:
            from pyspark.java_gateway import launch_gateway  # connects to spark-submit's JVM

            gateway = launch_gateway()
            gateway.jvm.System.err.println(text)
            gateway.jvm.System.err.flush()
            return
        except Exception:  # noqa: BLE001 - fall back to Python's stderr
            pass
    print(text, file=sys.stderr, flush=True)


def get_session(app_name: str):
    """The active SparkSession, or a new one. The master comes from spark-submit (``--master``,
    a properties file); run without one, Spark defaults to local mode."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    return SparkSession.builder.appName(app_name).getOrCreate()


def run(
    name: str,
    parser: argparse.ArgumentParser,
    job: Callable[[Any, argparse.Namespace], dict],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, run ``job(spark, args)`` and map what happens to an exit code.

    ``job`` returns its report; its ``summary`` entry is printed as the one line on stdout.
    """
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print_err(f"{name}: error: {e}")
        return EXIT_USAGE
    start = time.monotonic()
    try:
        spark = get_session(f"promptscore-{name}")
        report = job(spark, args)
    except UsageError as e:
        print_err(f"{name}: error: {e}")
        return EXIT_USAGE
    except DataQualityError as e:
        print(e.report["summary"], flush=True)
        print_err(f"{name}: data quality: {e}")
        return EXIT_DATA
    except KeyboardInterrupt:
        print_err(f"{name}: interrupted")
        return 130
    except Exception:  # noqa: BLE001 - the one place that turns the unexpected into exit 1
        print_err(traceback.format_exc().rstrip())
        print_err(f"{name}: failed after {time.monotonic() - start:.1f} s (unexpected error above)")
        return EXIT_UNEXPECTED
    print(report["summary"], flush=True)
    return EXIT_OK
