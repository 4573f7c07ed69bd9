"""Exit codes and what a failure means: the one map from an exception to an exit code.

Exit codes (the same for every job):
  0  success: the output is published with _SUCCESS
  1  something unexpected that a retry may fix (a short traceback, then the cause on the last
     line); the same command can be run again as is: it cleans up or completes what the failed
     run left
  2  usage: bad flags, missing input (a prefix, or a file a list names), output already there
     (--mode error), input and output overlapping, a URI carrying keys, an unsubstituted
     scheduling parameter, a symbolic link loop in a local input, a scheme no file system
     serves, a module the executors' Python lacks. Fix the call, the input or the environment.
  3  data quality: too many rejected rows (output, rejects and report are published, without
     _SUCCESS; a rerun replaces them), or input files that changed since an earlier partition
     ingested them (--only-new; nothing is written)
  4  the environment's resources: a disk or quota full, memory exhausted. One line with the cause
     and the path; free the resource (or give more), then run the same command again.

``classify`` decides which of 1, 2 and 4 an exception means, from its chain of causes (Python and
Java alike): exit 1 is kept for what running the same command again may fix.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from typing import Sequence

from promptscore import sparkapi
from udfs.uris import redact_text

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
     (the file named), Spark's Python workers unable to start (a module the executors' Python
     lacks)
  3  data quality: more rejects than --max-bad-fraction (output, rejects and report published
     without _SUCCESS); or, with --only-new, input files changed since an earlier partition
     ingested them (--changed-files error; nothing written)
  4  out of resources: disk full, quota exceeded, out of memory (the cause and the path on one
     line); free or add the resource, then rerun the same command"""

# The file a read failure names, in Spark's words (the read-ahead reader uses them too):
# "Encountered error while reading file X. Details: ..." (3.5), "... reading file X. SQLSTATE: ..." (4).
_READ_FILE = re.compile(r"(?:error while reading file|Error while reading file|reading file) (\S+?)\.?(?:\s|$)")
_PY_ERROR = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


class UsageError(Exception):
    """The call is wrong (flags, paths, existing output). Exit code 2, one line on stderr."""


class DataQualityError(Exception):
    """The input's data is not fit to convert as asked: too many rows were rejected (``report``:
    everything was published, without _SUCCESS), or input files changed since they were ingested
    (no ``report``: nothing was written). Exit code 3."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


def first_line(text: str) -> str:
    """The first line of ``text``, without the white space around it ("" for none)."""
    text = text.strip()
    return text.splitlines()[0].strip() if text else ""


def gist(text: str) -> str:
    """The line of an error message that says what went wrong: for a Spark task that failed in
    Python (its message holds the worker's traceback) the traceback's last ``SomeError: ...``
    line, else the first line."""
    if "Traceback (most recent call last)" in text:
        lines = [line.strip() for line in text.splitlines()]
        for line in reversed(lines[:next((i for i, x in enumerate(lines) if x.startswith("at ")), len(lines))]):
            if _PY_ERROR.match(line):
                return line
    return first_line(text)


def cause_chain(exc: BaseException) -> list[tuple[str, str]]:
    """(type, first line of message) for ``exc`` and its causes, outermost first; for errors
    raised in the JVM, the Java exception and its causes."""
    java = sparkapi.java_chain(exc, 12)
    if java:
        return [(name, gist(message)) for name, message in java]
    chain: list[tuple[str, str]] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 12:
        chain.append((type(e).__name__, first_line(str(e))))
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return chain


def file_named(chain: Sequence[tuple[str, str]]) -> str | None:
    """The file a chain of causes (``cause_chain``) names as the one that could not be read."""
    for _, message in chain:
        m = _READ_FILE.search(message)
        if m:
            return m.group(1).rstrip(".")
    return None


# ---------------------------------------------------------------------------------------------
# Whether a file-system call that failed may work when made again

_PERMANENT = re.compile(r"(?i)\b(400|401|403|404|405|409|412|416)\b|AccessDenied|Access Denied|Forbidden|NoSuchKey"
                        r"|NoSuchBucket|InvalidAccessKeyId|SignatureDoesNotMatch|InvalidObjectState|not found|no such")
_TRANSIENT = re.compile(r"(?i)\b(429|500|502|503|504)\b|Service Unavailable|SlowDown|ServerBusy|Internal ?Error"
                        r"|Connection reset|Broken pipe|timed out|timeout|RequestTimeout|Too Many Requests|temporarily")
_PERMANENT_CLASSES = ("java.io.FileNotFoundException", "java.nio.file.NoSuchFileException",
                      "java.nio.file.AccessDeniedException", "org.apache.hadoop.security.AccessControlException",
                      "org.apache.hadoop.fs.PathNotFoundException", "org.apache.hadoop.fs.PathPermissionException",
                      "org.apache.hadoop.fs.AccessDeniedException")
_TRANSIENT_CLASSES = ("java.net.SocketException", "java.net.SocketTimeoutException", "java.net.ConnectException",
                      "java.net.NoRouteToHostException")


def is_transient(error: BaseException) -> bool:
    """Whether a failed file-system call may succeed when made again: a Java exception whose
    chain holds a socket error or a 5xx/429/timeout message, and no missing file, refused access
    (403), bad request, corrupt data or interruption. Python errors are never transient here."""
    from py4j.protocol import Py4JJavaError

    if not isinstance(error, Py4JJavaError):
        return False
    seen = False
    for name, message in sparkapi.java_chain(error, 16):
        if name in _PERMANENT_CLASSES or _PERMANENT.search(message):
            return False
        if name == "java.io.InterruptedIOException" or name.startswith("java.util.zip."):
            return False
        if name in _TRANSIENT_CLASSES or _TRANSIENT.search(message):
            seen = True
    return seen


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
# What Spark says when the Python daemon or worker it starts exits at once (3.5 and 4).
# Python's own line for `python -m X` is "PYTHON: No module named X" when X's package exists, or
# "PYTHON: Error while finding module specification for 'X' (ModuleNotFoundError: ...)" when not.
_NO_MODULE = re.compile(r"Error from python worker:\s*\n\s*(\S+): (?:No module named (\S+)|Error while finding "
                        r"module specification for '([^']+)' \(ModuleNotFoundError: No module named '([^']+)'\))")
_QUOTA_PATH = re.compile(r"quota of (\S+) is exceeded")
_WRITE_PATH = re.compile(r"(?:writing rows to|writing to|Error writing|Failed to (?:create|write|rename)[^:]*?) "
                         r"\[?([a-zA-Z][\w+.-]*:/\S+|/\S+?)\]?\.?(?:\s|$)")
_ANY_PATH = re.compile(r"(?<![\w./-])((?:[a-zA-Z][\w+.-]*:/+|/)(?:[^\s/'\"(),:;]+/)+[^\s/'\"(),:;]*)")


def classify(exc: BaseException) -> Classified | None:
    """The exit code a failure means when it is not 1 (a retry may fix it), from every link of its
    chain of causes, Python's and the JVM's: a full disk or an exceeded quota, memory exhausted
    (4, ``EXIT_RESOURCES``: nothing a rerun alone fixes, and the same command works once the
    resource is there); a URI scheme no file system serves, or Spark's Python workers that cannot
    start for a module their Python lacks (2). None: unexpected (exit 1)."""
    links = _links(exc)
    return _resources(links) or _memory(links) or _no_file_system(links) or _python_workers(links)


def _resources(links: Sequence[_Link]) -> Classified | None:
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
    return None


def _memory(links: Sequence[_Link]) -> Classified | None:
    for link in reversed(links):
        if link.kind == "MemoryError" or _MEMORY.search(link.kind + ": " + link.message):
            return Classified(EXIT_RESOURCES, f"out of memory: {_cause(link)}; give the driver or the executors more "
                              "memory (spark.driver.memory, spark.executor.memory, spark.executor.memoryOverhead), "
                              "then run the same command again. Exit 4: out of resources")
    return None


def _no_file_system(links: Sequence[_Link]) -> Classified | None:
    for link in reversed(links):
        m = _NO_FS.search(link.message)
        if m or link.kind.endswith("UnsupportedFileSystemException"):
            scheme = m.group(1) if m else "?"
            return Classified(EXIT_USAGE, f"no file system serves the scheme {scheme!r}: {_cause(link)}; fix the URI, "
                              "or put the scheme's connector on the class path (for oss:// on EMR: JindoSDK). "
                              "Exit 2: fix the call")
    return None


def _python_workers(links: Sequence[_Link]) -> Classified | None:
    for link in reversed(links):
        m = _NO_MODULE.search(link.message)
        if m:
            python, module = m.group(1), m.group(2) or m.group(3)
            missing = f" (no package {m.group(4)})" if m.group(4) else ""
            return Classified(EXIT_USAGE, f"Spark's Python workers cannot start: {python} has no module {module}"
                              f"{missing}; "
                              "install it in the executors' Python (bootstrap/install-python-env.sh installs "
                              "promptscore and udfs), or, where the code travels only with --py-files, drop "
                              "spark.python.daemon.module. Exit 2: fix the executors' environment")
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
        out += [_Link(name, message) for name, message in sparkapi.java_chain(e, 16)]
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
