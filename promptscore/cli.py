"""What every job entry point shares: argument checks, exit codes, the session, how failures read.

Exit codes (the same for every job):
  0  success: the output is published with _SUCCESS
  1  something unexpected that a retry may fix (a short traceback, then the cause on the last
     line); the same command can be run again as is: it cleans up or completes what the failed
     run left
  2  usage: bad flags, missing input (a prefix, or a file a list names), output already there
     (--mode error), input and output overlapping, a URI carrying keys, an unsubstituted
     scheduling parameter, a symbolic link loop in a local input, a scheme no file system
     serves. Fix the call or the input.
  3  data quality: too many rejected rows (output, rejects and report are published, without
     _SUCCESS; a rerun replaces them), or input files that changed since an earlier partition
     ingested them (--only-new; nothing is written)
  4  the environment's resources: a disk or quota full, memory exhausted. One line with the cause
     and the path; free the resource (or give more), then run the same command again.

``classify`` decides which of 1, 2 and 4 an exception means, from its chain of causes (Python and
Java alike): exit 1 is kept for what running the same command again may fix.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Sequence

from udfs.uris import has_userinfo, redact

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_RESOURCES = 4

EXIT_CODES_HELP = """exit codes:
  0  success: output published with _SUCCESS
  1  unexpected failure that a retry may fix (cause on the last line); rerun the same command
     as is (the score job then resumes from the chunks it committed)
  2  fix the call or the input: bad flags, input missing (a prefix, or a file an --input-list
     names), output exists (--mode error), input and output overlap, a URI with keys in it, an
     unsubstituted ${...} scheduling parameter, a symlink loop in a local input, a URI scheme
     with no file system, another run holding the output (named), a model that cannot load
     (the file named)
  3  data quality: more rejects than --max-bad-fraction (output, rejects and report published
     without _SUCCESS); or, with --only-new, input files changed since an earlier partition
     ingested them (--changed-files error; nothing written)
  4  out of resources: disk full, quota exceeded, out of memory (the cause and the path on one
     line); free or add the resource, then rerun the same command"""

_UNEXPANDED = re.compile(r"\$\{[^}]*\}|\$\[[^\]]*\]")
_READ_FILE = re.compile(r"(?:error while reading file|Error while reading file|reading file) (\S+?)\.?(?:\s|$)")


class UsageError(Exception):
    """The call is wrong (flags, paths, existing output). Exit code 2, one line on stderr."""


class DataQualityError(Exception):
    """The input's data is not fit to convert as asked: too many rows were rejected (``report``:
    everything was published, without _SUCCESS), or input files changed since they were ingested
    (no ``report``: nothing was written). Exit code 3."""

    def __init__(self, message: str, report: dict | None = None):
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


# ---------------------------------------------------------------------------------------------
# Which exit code a failure means


@dataclass(frozen=True)
class Classified:
    """A failure that running the same command again would not fix: its exit code and the one
    line that says what is wrong, where, and what to do."""

    code: int
    line: str


@dataclass(frozen=True)
class _Link:
    kind: str  # the exception's class (Java: its full name)
    message: str  # its whole message
    errno: int | None = None  # Python OSError only
    filename: str | None = None  # Python OSError only


_FULL = re.compile(r"No space left on device|DiskOutOfSpaceException|Could not find any valid local directory",
                   re.IGNORECASE)
_QUOTA = re.compile(r"Disk quota exceeded|QuotaExceededException|The (?:DiskSpace|NameSpace) quota of",
                    re.IGNORECASE)
_MEMORY = re.compile(r"java\.lang\.OutOfMemoryError|\bOutOfMemoryError\b|Container killed by YARN for exceeding "
                     r"(?:physical |virtual )?memory limits|exceeding memory limits")
_NO_FS = re.compile(r"No FileSystem for scheme \W?(\w[\w+.-]*)")
_QUOTA_PATH = re.compile(r"quota of (\S+) is exceeded")
_WRITE_PATH = re.compile(r"(?:writing rows to|writing to|Error writing|Failed to (?:create|write|rename)[^:]*?) "
                         r"\[?([a-zA-Z][\w+.-]*:/\S+|/\S+?)\]?\.?(?:\s|$)")
_ANY_PATH = re.compile(r"(?<![\w./-])((?:[a-zA-Z][\w+.-]*:/+|/)(?:[^\s/'\"(),:;]+/)+[^\s/'\"(),:;]*)")


def classify(exc: BaseException) -> Classified | None:
    """The exit code a failure means when it is not 1 (a retry may fix it), from every link of its
    chain of causes, Python's and the JVM's: a full disk or an exceeded quota, memory exhausted
    (4, ``EXIT_RESOURCES``: nothing a rerun alone fixes, and the same command works once the
    resource is there); a URI scheme no file system serves (2). None: unexpected (exit 1)."""
    links = _links(exc)
    for link in reversed(links):  # the innermost cause says it most plainly
        full = link.errno == errno.ENOSPC or bool(_FULL.search(link.message))
        quota = link.errno == errno.EDQUOT or bool(_QUOTA.search(link.kind + " " + link.message))
        if full or quota:
            what = "disk full" if full else "quota exceeded"
            cause = _cause(link)
            where = _path_in(link, links, quota_first=quota)
            at = (f"at {redact_text(where)}" if where
                  else "at a path not named (the output's file system, or spark.local.dir on a node)")
            advice = "free space there" if full else "raise the quota or free space there"
            return Classified(EXIT_RESOURCES, f"{what} {at}: {cause}; {advice}, then run the same command again. "
                              "Exit 4: out of resources")
    for link in reversed(links):
        if link.kind == "MemoryError" or _MEMORY.search(link.kind + ": " + link.message):
            return Classified(EXIT_RESOURCES, f"out of memory: {_cause(link)}; give the driver or the executors more "
                              "memory (spark.driver.memory, spark.executor.memory, spark.executor.memoryOverhead), "
                              "then run the same command again. Exit 4: out of resources")
    for link in reversed(links):
        m = _NO_FS.search(link.message)
        if m or link.kind.endswith("UnsupportedFileSystemException"):
            scheme = m.group(1) if m else "?"
            return Classified(EXIT_USAGE, f"no file system serves the scheme {scheme!r}: {_cause(link)}; fix the URI, "
                              "or put the scheme's connector on the class path (for oss:// on EMR: JindoSDK). "
                              "Exit 2: fix the call")
    return None


def _links(exc: BaseException) -> list[_Link]:
    """Every exception in the chain of ``exc``, outermost first: Python's, then (for an error
    raised in the JVM) the Java exception and its causes."""
    out: list[_Link] = []
    e: BaseException | None = exc
    seen: set[int] = set()
    while e is not None and id(e) not in seen and len(out) < 24:
        seen.add(id(e))
        try:
            text = str(e)
        except Exception:  # noqa: BLE001 - a Py4JJavaError whose gateway is gone
            text = repr(e.args)
        if isinstance(e, OSError):
            out.append(_Link(type(e).__name__, text, e.errno, str(e.filename) if e.filename else None))
        else:
            out.append(_Link(type(e).__name__, text))
        java = getattr(e, "java_exception", None) or getattr(e, "_java_exception", None)
        depth = 0
        while java is not None and depth < 16:
            try:
                out.append(_Link(str(java.getClass().getName()), str(java.getMessage() or "")))
                java = java.getCause()
            except Exception:  # noqa: BLE001 - the gateway is gone
                break
            depth += 1
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return out


def _cause(link: _Link) -> str:
    """``Kind: the message's line that says what failed`` (the message as short as it can be)."""
    kind = link.kind.rsplit(".", 1)[-1]
    text = link.message
    for pattern in (_FULL, _QUOTA, _MEMORY):
        m = pattern.search(text)
        if m:
            start = text.rfind("\n", 0, m.start()) + 1
            end = text.find("\n", m.end())
            text = text[start:end if end >= 0 else len(text)]
            break
    text = gist(text)
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{kind}: {redact_text(text)}" if text else kind


def _path_in(link: _Link, links: Sequence[_Link], quota_first: bool = False) -> str | None:
    """The file or folder a resource failure concerns: the OSError's file name, the folder an
    HDFS quota names, the file Spark was writing, else the first path any message names."""
    if link.filename:
        return link.filename
    texts = [link.message] + [x.message for x in links if x is not link]
    for pattern in ((_QUOTA_PATH,) if quota_first else ()) + (_WRITE_PATH, _ANY_PATH):
        for text in texts:
            m = pattern.search(text)
            if m:
                return m.group(1).rstrip(".")
    return None


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
