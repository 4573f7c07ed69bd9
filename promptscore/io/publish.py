"""Publishing a job's output so that no moment of a run, killed or not, loses the last good one.

A run writes everything it produces (data files, ``_rejects/``, ``_report.json``, ``_SUCCESS``)
into a staging directory inside the target's *work directory*, ``<parent>/.promptscore.<name>/``,
which Spark's and Hive's readers skip because of its leading dot. Only when all of it is complete
does the publish step put it in the target's place:

- ``file:`` (local disk): one atomic exchange of the two directories (Linux ``renameat2`` with
  ``RENAME_EXCHANGE``), so the target is at every moment the old or the new output;
- ``hdfs:``, ``viewfs:``: two atomic directory renames (old out, new in);
- object stores (``oss:`` and the rest), where a "rename" is a server-side copy per object: the
  target's ``_SUCCESS`` goes first, then its old objects, then the new objects move in, in
  parallel, with ``_SUCCESS`` last.

A run first takes the target's lock (``hold``: a lease in the work directory, see
``promptscore.io.lock``); it reads, deletes or writes nothing there before, and gives the lock back
when it has published (``publish``) or failed (``discard``). The publish step is journaled:
``_publish.json`` in the work directory is written before the first change and removed after the
last. Every run of either job on a target, once it holds the lock, first rolls a journaled
publish forward, so a publish cut short by a kill is completed by the next run of the same
command, before it does anything else; then it removes what earlier runs left (they hold no
lease, so none of them is live), but what its ``keep`` hook names (the score job keeps the
pieces it can resume, and publishes them as its staging directory: ``adopt_staging``) and the
scratch directories of ``--plan`` runs younger than ``PLAN_MAX_AGE_S`` (they take no lock).
Downstream readers that wait for ``_SUCCESS`` never see a half-published output.
``spark.promptscore.publish`` (``exchange``, ``rename``, ``copy``) overrides the choice, e.g.
``rename`` for OSS-HDFS buckets, whose renames are atomic.
"""

from __future__ import annotations

import calendar
import ctypes
import errno
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from promptscore.io import hadoop
from promptscore.io import lock as locks
from promptscore.io.files import list_names, list_tree
from udfs.uris import redact

JOURNAL = "_publish.json"
CLEARED = "_publish.cleared"
REPORT = "_report.json"
SUCCESS = "_SUCCESS"
STRATEGIES = ("exchange", "rename", "copy")
_ATOMIC_RENAME = ("hdfs", "viewfs")
_JOBS = ("convert", "score")
PLAN_MAX_AGE_S = 6 * 3600


def work_dir(target: str) -> str:
    """The hidden directory next to ``target`` where runs stage their output."""
    parent, name = target.rstrip("/").rsplit("/", 1)
    return f"{parent}/.promptscore.{name}"


def new_run_id() -> str:
    """A unique, time-ordered id for one run."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def pause_point(name: str) -> None:
    """Where a crash test stops the job. With ``PROMPTSCORE_TEST_PAUSE_AT=name`` the job writes
    ``name`` to ``PROMPTSCORE_TEST_PAUSE_FILE`` and waits there to be killed, or goes on once the
    test deletes that file; with ``PROMPTSCORE_TEST_FAIL_AT=name`` it raises there, as an
    unexpected error would."""
    if os.environ.get("PROMPTSCORE_TEST_FAIL_AT") == name:
        raise RuntimeError(f"failure injected at {name}")
    if os.environ.get("PROMPTSCORE_TEST_PAUSE_AT") == name:
        flag = os.environ.get("PROMPTSCORE_TEST_PAUSE_FILE")
        if flag:
            Path(flag).write_text(name)
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline and (not flag or Path(flag).exists()):
            time.sleep(0.05)


@dataclass
class TargetState:
    """What is at a target path before a run writes it.

    ``kind``: ``absent``; ``empty`` (a directory holding no files, or only a ``_temporary/``
    left by an interrupted Spark write); ``complete`` (this package's output with ``_SUCCESS``);
    ``unfinished`` (this package's output without ``_SUCCESS``: a data-quality failure); or
    ``foreign`` (anything else, which no run replaces).
    """

    kind: str
    report: dict | None = None


class Publisher:
    """Stages one run's output next to ``target`` and publishes it there (see the module notes)."""

    def __init__(self, spark, target: str, run_id: str | None = None, strategy: str | None = None):
        self.spark = spark
        self.target = target.rstrip("/")
        self.work = work_dir(self.target)
        self.run_id = run_id or new_run_id()
        self.staging = f"{self.work}/staging-{self.run_id}"
        self.adopted = False
        self.strategy = strategy or self._strategy()
        self.lock: locks.OutputLock | None = None

    # ------------------------------------------------------------------------------------------
    # The lock

    def hold(self, job: str, on_lost: Callable[[str], None] | None = None) -> dict | None:
        """Take the target's lock for this run, or raise ``lock.OutputLocked`` (exit 2) naming
        the run that holds it. Returns what was taken over from a dead or silent holder, or None."""
        held = locks.OutputLock(self.spark, self.work, self.run_id, job, self.target, on_lost)
        took = held.acquire()
        self.lock = held
        return took

    def verify_lock(self) -> None:
        """Raise ``lock.LockLost`` unless this run still holds the lock (renewing it)."""
        if self.lock is None:
            raise locks.LockLost(f"this run does not hold the lock on {redact(self.target)}")
        self.lock.verify()

    def release(self) -> None:
        """Give the lock back, and remove the work directory if that leaves it empty."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        try:
            hadoop.remove_empty_dir(self.spark, self.work)
        except Exception:  # noqa: BLE001 - an empty hidden directory is harmless
            pass

    def _live(self, name: str) -> bool:
        """Whether the work-directory entry ``name`` may belong to a live run other than this one
        (a lease, or a ``--plan`` run's scratch directory young enough to be in use)."""
        if locks.is_lease(name):
            return True
        if name.startswith("plan-"):
            try:
                started = calendar.timegm(time.strptime(name[5:20], "%Y%m%dT%H%M%S"))
            except ValueError:
                return False
            return time.time() - started < PLAN_MAX_AGE_S
        return False

    # ------------------------------------------------------------------------------------------
    # Before a run

    def recover(self, keep: Callable[[str], bool] | None = None) -> list[str]:
        """Finish a journaled publish of an earlier run and remove what earlier runs left behind.

        Needs the lock (``hold``): no other run is live then, so what the work directory holds
        was left by runs that ended or lost their lease; only leases and young ``--plan``
        scratch directories are left alone. ``keep(name)`` says which other entries to leave
        in place (the score job keeps the pieces of an unfinished run whose fingerprint matches
        its own, to resume them); a publish that had to be completed consumed everything, so
        nothing is kept after one. Returns one note per thing done, for the report.
        """
        self.verify_lock()
        notes: list[str] = []
        if not hadoop.exists(self.spark, self.work):
            return notes
        journal = self._read_journal()
        if journal is not None:
            self._roll_forward(journal)
            notes.append(f"completed the publish of run {journal['run']}, cut short earlier")
            keep = None
        names = [n for n in list_names(self.spark, self.work) if not self._live(n)]
        kept = [n for n in names if keep is not None and keep(n)]
        left = [n for n in names if n not in kept and not n.startswith(".")]
        if left:
            notes.append(f"removed {len(left)} leftover(s) of unfinished runs: {', '.join(left[:5])}")
        if kept:
            notes.append(f"kept {', '.join(kept)} to resume")
        for name in names:
            if name not in kept:
                hadoop.delete(self.spark, f"{self.work}/{name}")
        return notes

    def state(self) -> TargetState:
        """Classify what is at the target now (see TargetState)."""
        found = hadoop.kind(self.spark, self.target)
        if found is None:
            return TargetState("absent")
        if found != "dir":
            return TargetState("foreign")
        names = list_names(self.spark, self.target)
        if REPORT in names:
            report = self._report_at(self.target)
            if report is not None and report.get("job") in _JOBS:
                return TargetState("complete" if SUCCESS in names else "unfinished", report)
        data = [n for n in names if n != "_temporary" and not (n.startswith(".") and n.endswith(".crc"))]
        return TargetState("empty" if not data else "foreign")

    def prepare_staging(self) -> None:
        """An empty staging directory for this run (an adopted one is left as it is)."""
        if not self.adopted:
            hadoop.delete(self.spark, self.staging)
        hadoop.mkdirs(self.spark, self.work)

    def adopt_staging(self, path: str) -> None:
        """Publish ``path`` (a directory inside the work directory that outlives a failed run,
        such as the score job's resumable pieces) instead of this run's own staging directory."""
        if not path.startswith(self.work + "/"):
            raise ValueError(f"a staging directory must lie inside {self.work}: {path}")
        self.staging = path
        self.adopted = True

    def discard(self) -> None:
        """Remove this run's staging (a failed run) and give the lock back; the target is
        untouched. An adopted staging directory stays, for the next run to resume. A run that
        lost the lock deletes nothing: the work directory is another run's now."""
        try:
            if not self.adopted and self.lock is not None and self.lock.held:
                hadoop.delete(self.spark, self.staging)
        except Exception:  # noqa: BLE001 - best effort: the next run removes leftovers anyway
            pass
        finally:
            self.release()

    # ------------------------------------------------------------------------------------------
    # Publishing

    def publish(self) -> float:
        """Put the staged output in the target's place; return the seconds it took."""
        start = time.monotonic()
        self.verify_lock()
        journal = {"run": self.run_id, "strategy": self.strategy, "target": self.target,
                   "staging": self.staging, "old": f"{self.work}/old-{self.run_id}"}
        hadoop.write_text(self.spark, f"{self.work}/{JOURNAL}", json.dumps(journal))
        pause_point("publish-journaled")
        self._roll_forward(journal)
        pause_point("published")
        for name in list_names(self.spark, self.work):
            if not self._live(name):
                hadoop.delete(self.spark, f"{self.work}/{name}")
        self.release()
        return round(time.monotonic() - start, 3)

    def _roll_forward(self, j: dict) -> None:
        getattr(self, f"_{j['strategy']}")(j)
        hadoop.delete(self.spark, f"{self.work}/{JOURNAL}")
        hadoop.delete(self.spark, f"{self.work}/{CLEARED}")

    def _exchange(self, j: dict) -> None:
        spark, staged, target = self.spark, j["staging"], j["target"]
        if hadoop.exists(spark, staged):
            if not hadoop.exists(spark, target):
                hadoop.rename(spark, staged, target)
            elif self._run_at(target) != j["run"]:
                try:
                    _exchange_dirs(hadoop.local_path(spark, staged), hadoop.local_path(spark, target))
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
                        raise
                    self._rename(j)  # a local file system without RENAME_EXCHANGE
                    return
            # The staging directory now holds the old output, if there was one.
            hadoop.delete(spark, staged)
        hadoop.delete(spark, j["old"])

    def _rename(self, j: dict) -> None:
        spark, staged, target, old = self.spark, j["staging"], j["target"], j["old"]
        if hadoop.exists(spark, staged):
            if hadoop.exists(spark, target):
                hadoop.rename(spark, target, old)
            pause_point("publish-swapping")
            hadoop.rename(spark, staged, target)
        hadoop.delete(spark, old)

    def _copy(self, j: dict) -> None:
        spark, staged, target = self.spark, j["staging"], j["target"]
        cleared = f"{self.work}/{CLEARED}"
        if not hadoop.exists(spark, cleared):
            # Readers that wait for _SUCCESS stop trusting the target before any object changes.
            hadoop.delete(spark, f"{target}/{SUCCESS}")
            hadoop.delete(spark, target)
            hadoop.write_text(spark, cleared, "")
        pause_point("publish-swapping")
        files = [rel for rel, _ in list_tree(spark, staged)]
        first = [rel for rel in files if rel != SUCCESS]
        # The folders first, once, so that each object's move asks one question about its place.
        for folder in sorted({f"{target}/{rel}".rsplit("/", 1)[0] for rel in files}):
            hadoop.mkdirs(spark, folder)

        def move(rel: str) -> None:
            dst = f"{target}/{rel}"
            if hadoop.kind(spark, dst) is not None:  # copied by an earlier attempt that died before the delete
                hadoop.delete(spark, dst, recursive=False)
            hadoop.rename(spark, f"{staged}/{rel}", dst, checked=True)

        if first:
            move(first[0])
            pause_point("publish-moving")
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(move, first[1:]))
        if SUCCESS in files:
            move(SUCCESS)
        if not files:
            hadoop.mkdirs(spark, target)
        hadoop.delete(spark, staged)

    # ------------------------------------------------------------------------------------------
    # Helpers

    def _strategy(self) -> str:
        chosen = self.spark.conf.get("spark.promptscore.publish", "") or ""
        if chosen:
            if chosen not in STRATEGIES:
                raise ValueError(f"spark.promptscore.publish must be one of {', '.join(STRATEGIES)}, got {chosen!r}")
            return chosen
        scheme = hadoop.scheme(self.spark, self.target)
        if scheme == "file":
            return "exchange" if _can_exchange() else "rename"
        return "rename" if scheme in _ATOMIC_RENAME else "copy"

    def _read_journal(self) -> dict | None:
        data = hadoop.read_bytes_if_there(self.spark, f"{self.work}/{JOURNAL}")
        if data is None:
            return None
        try:
            journal = json.loads(data.decode("utf-8"))
            if journal.get("strategy") in STRATEGIES:
                return journal
        except ValueError:
            pass
        # A journal cut short while being written: the publish had not begun.
        return None

    def _report_at(self, directory: str) -> dict | None:
        try:
            report = json.loads(hadoop.read_text(self.spark, f"{directory}/{REPORT}"))
        except Exception:  # noqa: BLE001 - unreadable or not JSON: not a report of ours
            return None
        return report if isinstance(report, dict) else None

    def _run_at(self, directory: str) -> str | None:
        report = self._report_at(directory) if hadoop.exists(self.spark, f"{directory}/{REPORT}") else None
        return report.get("run_id") if report else None

    def describe(self) -> str:
        return redact(self.target)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _can_exchange() -> bool:
    return _renameat2() is not None


def _exchange_dirs(a: str, b: str) -> None:
    """Swap two local directories in one atomic step."""
    fn = _renameat2()
    if fn is None:
        raise OSError("renameat2 is not available")
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")
