"""What every job entry point shares: the parser's base, the session, how a run ends.

``run`` parses the flags, runs the job and turns what happens into one of the exit codes of
``promptscore.errors`` (where the map and its reasons live), with one line on stderr
(``print_err``) for every failure but the unexpected, which gets a short traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback
from typing import Any, Callable, NoReturn, Sequence

from promptscore import sparkapi
from promptscore.errors import (
    EXIT_CODES_HELP,
    EXIT_DATA,
    EXIT_OK,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    DataQualityError,
    UsageError,
    cause_chain,
    classify,
    file_named,
)
from udfs.uris import has_userinfo, redact, redact_text

_UNEXPANDED = re.compile(r"\$\{[^}]*\}|\$\[[^\]]*\]")


class JobParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2, with the exit codes in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("epilog", EXIT_CODES_HELP)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{redact_text(message)} (see --help)")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        check_argv(argv)
        return super().parse_args(argv, namespace)


def check_argv(argv: Sequence[str]) -> None:
    """Refuse, before anything else sees them, arguments that carry keys or unexpanded parameters.

    A URI with a ``user:secret@`` part would put a key into Spark's logs, the reports and the
    rejects; the jobs take credentials only from the cluster (the ECS RAM role) or the
    environment. ``${...}`` and ``$[...]`` are DataWorks scheduling parameters that were not
    substituted: the run would write under a literal ``dt=${bizdate}``.
    """
    for i, arg in enumerate(argv):
        flag = argv[i - 1] if i and argv[i - 1].startswith("--") and "=" not in argv[i - 1] else None
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        name = arg.split("=", 1)[0] if arg.startswith("--") and "=" in arg else flag or "an argument"
        if has_userinfo(value):
            raise UsageError(f"{name} {redact(value)} has credentials in the URI; remove them: the jobs "
                             "take credentials only from the cluster (ECS RAM role) or the environment")
        m = _UNEXPANDED.search(value)
        if m:
            raise UsageError(f"{name} {redact(value)!r} holds {m.group(0)}, a scheduling parameter that was "
                             "not substituted; in DataWorks, assign it in the node's scheduling parameters "
                             "(e.g. bizdate=$bizdate)")


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
    """Print to the job's stderr.

    Under spark-submit the Python driver's stderr is merged into stdout by Spark's PythonRunner
    (``redirectErrorStream``), so the text goes through the JVM's own ``System.err`` there, where
    schedulers expect it: over the one Py4J gateway of this process, never a new connection per
    line.
    """
    if os.environ.get("PYSPARK_GATEWAY_PORT"):
        try:
            err = sparkapi.driver_stderr()
            err.println(text)
            err.flush()
            return
        except Exception:  # noqa: BLE001 - fall back to Python's stderr
            pass
    print(text, file=sys.stderr, flush=True)


def get_session(app_name: str):
    """The active SparkSession, or a new one. The master comes from spark-submit (``--master``,
    ``--conf``); run without one, Spark defaults to local mode."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    return SparkSession.builder.appName(app_name).getOrCreate()


def failure_lines(name: str, exc: BaseException, seconds: float) -> list[str]:
    """What an unexpected failure prints: the Python frames, the cause chain, and a last line
    naming the cause, the file when one is known, and what exit code 1 means."""
    frames = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
    chain = cause_chain(exc)
    lines = ["Traceback (most recent call last):", frames]
    lines += [f"{'caused by ' if i else ''}{t}: {redact_text(m)}" for i, (t, m) in enumerate(chain)]
    root_type, root_msg = chain[-1] if chain else (type(exc).__name__, str(exc))
    file = file_named(chain)
    where = f" (file {redact(file)})" if file else ""
    lines.append(f"{name}: failed after {seconds:.1f} s: {root_type.rsplit('.', 1)[-1]}: "
                 f"{redact_text(root_msg)}{where}. Exit 1: unexpected; run the same command again, "
                 "it cleans up what this run left")
    return lines


def run(
    name: str,
    parser: argparse.ArgumentParser,
    job: Callable[[Any, argparse.Namespace], dict],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, run ``job(spark, args)`` and map what happens to an exit code.

    ``job`` returns its report; its ``summary`` entry is printed as the one line on stdout. A
    Spark version that ``sparkapi`` does not know gets one note first.
    """
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print_err(f"{name}: error: {e}")
        return EXIT_USAGE
    start = time.monotonic()
    try:
        spark = get_session(f"promptscore-{name}")
        unknown = sparkapi.check_version(spark.version)
        if unknown:
            print_err(f"{name}: note: {unknown}")
        report = job(spark, args)
    except UsageError as e:
        print_err(f"{name}: error: {e}")
        return EXIT_USAGE
    except DataQualityError as e:
        if e.report is None:
            print_err(f"{name}: data quality: {e} (exit 3)")
        else:
            print(e.report["summary"], flush=True)
            print_err(f"{name}: data quality: {e} (exit 3: output published without _SUCCESS)")
        return EXIT_DATA
    except KeyboardInterrupt:
        print_err(f"{name}: interrupted; run the same command again to finish")
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns failures into exit codes
        known = classify(e)
        if known is not None:
            print_err(f"{name}: error: {known.line}")
            return known.code
        print_err("\n".join(failure_lines(name, e, time.monotonic() - start)))
        return EXIT_UNEXPECTED
    print(report["summary"], flush=True)
    return EXIT_OK
