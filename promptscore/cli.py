"""What every job entry point shares: argument checks, exit codes, the session, how failures read.

Exit codes (the same for every job):
  0  success: the output is published with _SUCCESS
  1  something unexpected (a short traceback, then the cause on the last line); the same command
     can be run again as is: it cleans up or completes what the failed run left
  2  usage: bad flags, missing input, output already there (--mode error), input and output
     overlapping, a URI carrying keys, an unsubstituted scheduling parameter. Fix the call.
  3  data quality: too many rejected rows. Output, rejects and report are published, without
     _SUCCESS; a rerun replaces them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback
from typing import Any, Callable, NoReturn, Sequence

from udfs.uris import has_userinfo, redact

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_DATA = 3

EXIT_CODES_HELP = """exit codes:
  0  success: output published with _SUCCESS
  1  unexpected failure (cause on the last line); rerun the same command as is (the score
     job then resumes from the chunks it committed)
  2  fix the call: bad flags, input missing, output exists (--mode error), input and output
     overlap, a URI with keys in it, an unsubstituted ${...} scheduling parameter
  3  data quality: more rejects than --max-bad-fraction; output, rejects and report published
     without _SUCCESS"""

_UNEXPANDED = re.compile(r"\$\{[^}]*\}|\$\[[^\]]*\]")
_READ_FILE = re.compile(r"(?:error while reading file|Error while reading file|reading file) (\S+?)\.?(?:\s|$)")


class UsageError(Exception):
    """The call is wrong (flags, paths, existing output). Exit code 2, one line on stderr."""


class DataQualityError(Exception):
    """Too many rows were rejected. Exit code 3, after everything was published."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


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


def redact_text(text: str) -> str:
    """``text`` with the user-info part of every URI in it hidden."""
    return re.sub(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]*", lambda m: redact(m.group(0)), text)


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
    schedulers expect it: over the one Py4J gateway of this process (``SparkContext._gateway``,
    connected on first use), never a new connection per line.
    """
    if os.environ.get("PYSPARK_GATEWAY_PORT"):
        try:
            from pyspark import SparkContext

            SparkContext._ensure_initialized()  # connects once to spark-submit's JVM; later calls reuse it
            err = SparkContext._jvm.System.err
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


def cause_chain(exc: BaseException) -> list[tuple[str, str]]:
    """(type, first line of message) for ``exc`` and its causes, outermost first; for errors
    raised in the JVM, the Java exception and its causes."""
    chain: list[tuple[str, str]] = []
    java = getattr(exc, "java_exception", None)
    if java is None:
        java = getattr(exc, "_java_exception", None)
    if java is not None:
        seen = 0
        while java is not None and seen < 12:
            try:
                name = str(java.getClass().getName())
                msg = str(java.getMessage() or "")
                java = java.getCause()
            except Exception:  # noqa: BLE001 - the gateway is gone
                break
            chain.append((name, gist(msg)))
            seen += 1
        if chain:
            return chain
    e: BaseException | None = exc
    while e is not None and len(chain) < 12:
        chain.append((type(e).__name__, _first_line(str(e))))
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return chain


def failure_lines(name: str, exc: BaseException, seconds: float) -> list[str]:
    """What an unexpected failure prints: the Python frames, the cause chain, and a last line
    naming the cause, the file when one is known, and what exit code 1 means."""
    frames = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
    chain = cause_chain(exc)
    lines = ["Traceback (most recent call last):", frames]
    lines += [f"{'caused by ' if i else ''}{t}: {redact_text(m)}" for i, (t, m) in enumerate(chain)]
    root_type, root_msg = chain[-1] if chain else (type(exc).__name__, str(exc))
    file = next((m.group(1) for _, msg in chain for m in [_READ_FILE.search(msg)] if m), None)
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
        print_err(f"{name}: data quality: {e} (exit 3: output published without _SUCCESS)")
        return EXIT_DATA
    except KeyboardInterrupt:
        print_err(f"{name}: interrupted; run the same command again to finish")
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns the unexpected into exit 1
        print_err("\n".join(failure_lines(name, e, time.monotonic() - start)))
        return EXIT_UNEXPECTED
    print(report["summary"], flush=True)
    return EXIT_OK


_PY_ERROR = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


def gist(text: str) -> str:
    """The line of an error message that says what went wrong: for a Spark task that failed in
    Python (its message holds the worker's traceback) the traceback's last ``SomeError: ...``
    line, else the first line."""
    if "Traceback (most recent call last)" in text:
        lines = [line.strip() for line in text.splitlines()]
        for line in reversed(lines[:next((i for i, x in enumerate(lines) if x.startswith("at ")), len(lines))]):
            if _PY_ERROR.match(line):
                return line
    return _first_line(text)


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0].strip() if text else ""
