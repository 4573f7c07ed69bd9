"""One run per output: a lease in the target's work directory (``promptscore.io.publish.work_dir``).

A run of either job takes the lease before it reads, deletes or writes anything in the work
directory, and gives it back when it has published or failed. The lease is a small JSON file,
``lock.<generation>.json``, naming the run (run id, job, user, host, pid) and its last heartbeat;
one thread of the holder rewrites it every ``staleSeconds / 4`` (at most every minute), and the
holder reads it again before each step that matters (each committed chunk, the publish).

Another run that finds a lease:

- exits 2 naming the holder and the age of its heartbeat, while the heartbeat is fresh;
- takes it over, and says so (stderr and the report's ``lock_takeover``), when the heartbeat is
  older than ``spark.promptscore.lock.staleSeconds`` (default 300; the holder's own setting
  when that is longer), or at once when the holder's process is provably gone: same kernel
  boot and PID namespace as this process, and no process with that pid and start time.

A takeover creates the next generation's file; the holder that was taken over (a process that
was frozen, not dead) sees it at its next heartbeat or check and stops with exit 1, its Spark
jobs cancelled. Creating a lease file is atomic on local disk (a hard link, which fails if the
name exists) and on HDFS (``create`` without overwrite, refused by the NameNode). On object
stores (OSS through JindoSDK or hadoop-aliyun) the connectors check and then write, so two runs
starting within the same moment could both write it: there the run waits
``spark.promptscore.lock.settleSeconds`` (default 2) after writing and reads the lease back; the
run whose content is not there steps back (exit 2).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from promptscore import errors
from promptscore.io import hadoop
from promptscore.io.leases import NAME, HadoopStore, LocalStore, gone, identity
from udfs.uris import redact

STALE_CONF = "spark.promptscore.lock.staleSeconds"
SETTLE_CONF = "spark.promptscore.lock.settleSeconds"
DEFAULT_STALE_S = 300.0
DEFAULT_SETTLE_S = 2.0
MAX_HEARTBEAT_S = 60.0
_OWNED = re.compile(r"^\.?lock\.\d+\.json")
_ATOMIC = ("file", "hdfs", "viewfs")


def is_lease(name: str) -> bool:
    """Whether ``name`` (an entry of a work directory) belongs to a lease: the lease file, or
    one being written, or its local checksum file."""
    return bool(_OWNED.match(name))


class OutputLocked(errors.UsageError):
    """Another run holds the output's lease (exit 2: the message names it)."""


class LockLost(RuntimeError):
    """This run's lease was taken over or could not be renewed; it must stop writing."""


@dataclass
class Lease:
    """A lease file as found: its generation, content (None if unreadable) and modification time."""

    name: str
    gen: int
    info: dict | None
    mtime: float | None

    def age(self, now: float) -> float:
        """Seconds since the last sign of life: the later of the heartbeat it holds and its file's
        modification time (a holder's clock that lags is not taken for silence)."""
        beats = [t for t in ((self.info or {}).get("heartbeat"), self.mtime) if isinstance(t, (int, float))]
        return max(0.0, now - max(beats)) if beats else float("inf")

    def describe(self, now: float) -> str:
        i = self.info
        if not i:
            return f"a run whose lease ({self.name}) cannot be read, last written {self.age(now):.0f} s ago"
        return (f"run {i.get('run_id')} ({i.get('job')} job, pid {i.get('pid')} on host {i.get('host')}, "
                f"user {i.get('owner')}), last heartbeat {self.age(now):.0f} s ago")


# ---------------------------------------------------------------------------------------------
# The lock


def _stale_of(lease: Lease, mine: float) -> float:
    """Seconds of silence after which ``lease`` is stale: this run's setting, or the holder's own
    when that is longer (it renews at its own pace)."""
    theirs = (lease.info or {}).get("stale_s")
    return max(mine, float(theirs)) if isinstance(theirs, (int, float)) else mine


def _run_of(data: bytes) -> str | None:
    try:
        info = json.loads(data)
    except ValueError:
        return None
    return info.get("run_id") if isinstance(info, dict) else None


def _conf_seconds(spark, key: str, default: float) -> float:
    raw = spark.conf.get(key, None)
    if raw in (None, ""):
        return default
    try:
        value = float(str(raw).rstrip("s"))
    except ValueError:
        value = -1.0
    if value < 0:
        raise errors.UsageError(f"{key} must be a number of seconds, got {raw!r}")
    return value


class OutputLock:
    """The lease of one run on one work directory (see the module notes)."""

    def __init__(self, spark, work: str, run_id: str, job: str, target: str,
                 on_lost: Callable[[str], None] | None = None):
        self.spark, self.work, self.run_id, self.job, self.target = spark, work, run_id, job, target
        self.stale_s = _conf_seconds(spark, STALE_CONF, DEFAULT_STALE_S)
        if self.stale_s <= 0:
            raise errors.UsageError(f"{STALE_CONF} must be more than 0 seconds")
        self.heartbeat_s = min(MAX_HEARTBEAT_S, self.stale_s / 4)
        scheme = hadoop.scheme(spark, work)
        if scheme == "file":
            self.store: LocalStore | HadoopStore = LocalStore(hadoop.local_path(spark, work))
        else:
            self.store = HadoopStore(spark, work, scheme in _ATOMIC)
        self.settle_s = 0.0 if self.store.atomic else _conf_seconds(spark, SETTLE_CONF, DEFAULT_SETTLE_S)
        self.on_lost = on_lost
        self.me = identity()
        self.gen: int | None = None
        self.lost: str | None = None
        self._seq = 0
        self._acquired_at = ""
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self.gen is not None and self.lost is None

    # -- reading leases

    def leases(self) -> list[Lease]:
        """Every lease file of the work directory, oldest generation first."""
        out = []
        for name, mtime in self.store.list().items():
            data = self.store.read(name)
            if data is None:
                continue  # given back since it was listed
            try:
                info = json.loads(data) if data else None
                info = info if isinstance(info, dict) else None
            except ValueError:
                info = None
            out.append(Lease(name, int(NAME.match(name).group(1)), info, mtime))
        return sorted(out, key=lambda lease: lease.gen)

    def _content(self) -> bytes:
        now = time.time()
        self._seq += 1
        return json.dumps({
            "run_id": self.run_id, "job": self.job, "target": redact(self.target), **self.me,
            "acquired_at": self._acquired_at, "heartbeat": now,
            "heartbeat_at": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
            "seq": self._seq, "stale_s": self.stale_s,
        }, indent=1).encode()

    def _why_free(self, lease: Lease, now: float) -> str | None:
        """Why ``lease`` may be taken over (None: its holder is alive)."""
        info = lease.info or {}
        if info and gone(info, self.me):
            return "its process is gone"
        stale = _stale_of(lease, self.stale_s)
        if lease.age(now) > stale:
            return f"no heartbeat for {lease.age(now):.0f} s (stale after {stale:.0f} s)"
        return None

    # -- taking, keeping and giving back

    def acquire(self) -> dict | None:
        """Take the lease, or raise OutputLocked naming its holder. Returns what was taken over
        (the previous holder and why), or None."""
        self._acquired_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for _ in range(5):
            leases = self.leases()
            top = leases[-1] if leases else None
            took = None
            now = time.time()
            if top is not None:
                why = self._why_free(top, now)
                if why is None:
                    raise OutputLocked(self._held_message(top, now))
                info = top.info or {}
                took = {"run_id": info.get("run_id"), "job": info.get("job"), "host": info.get("host"),
                        "pid": info.get("pid"), "owner": info.get("owner"),
                        "heartbeat_age_s": round(top.age(now), 1), "reason": why}
            gen = top.gen + 1 if top is not None else 1
            name = f"lock.{gen:06d}.json"
            if not self.store.create(name, self._content()):
                continue  # another run created it first: look again
            if self.settle_s:
                time.sleep(self.settle_s)
                mine = self.store.read(name)
                higher = [lease for lease in self.leases() if lease.gen > gen]
                ours = bool(mine) and _run_of(mine) == self.run_id
                if higher or not ours:
                    if ours:
                        self.store.delete(name)
                    continue  # written over by a run that started at the same moment: it holds it
            self.gen = gen
            for lease in leases:
                self.store.delete(lease.name)
            self._thread = threading.Thread(target=self._beat, name="promptscore-lock", daemon=True)
            self._thread.start()
            return took
        leases = self.leases()
        if leases:
            raise OutputLocked(self._held_message(leases[-1], time.time()))
        raise OutputLocked(f"could not take the lock on {redact(self.target)}: other runs keep taking it")

    def _held_message(self, lease: Lease, now: float) -> str:
        stale = _stale_of(lease, self.stale_s)
        left = max(0, stale - lease.age(now))
        return (f"{redact(self.target)} is being written by another run: {lease.describe(now)}. Wait for it "
                f"to end; if it is dead, run this again once its lease is stale, in {left:.0f} s "
                f"({STALE_CONF}={stale:g})")

    def verify(self) -> None:
        """Renew the lease now, or raise LockLost if it is not this run's any more."""
        if self.lost:
            raise LockLost(self.lost)
        if self.gen is None:
            raise LockLost(f"this run does not hold the lock on {redact(self.target)}")
        with self._mutex:
            self._renew()

    def _renew(self) -> None:
        now = time.time()
        higher = [lease for lease in self.leases() if lease.gen > self.gen]
        if higher:
            raise LockLost(f"the lock on {redact(self.target)} was taken over by {higher[-1].describe(now)}")
        name = f"lock.{self.gen:06d}.json"
        data = self.store.read(name)
        for _ in range(3):
            if data is not None:
                break
            time.sleep(0.2)  # a rewrite on a store that cannot replace a file in one step: look again
            data = self.store.read(name)
        if data is None or _run_of(data) != self.run_id:
            raise LockLost(f"the lock on {redact(self.target)} was taken over: its lease "
                           f"{'was removed' if data is None else 'names another run now'}")
        self.store.write(name, self._content())

    def _beat(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.heartbeat_s):
            try:
                with self._mutex:
                    if self._stop.is_set():
                        return
                    self._renew()
                last_ok = time.monotonic()
            except LockLost as e:
                self._lose(str(e))
                return
            except Exception as e:  # noqa: BLE001 - a storage hiccup: try again at the next beat
                if time.monotonic() - last_ok > self.stale_s:
                    self._lose(f"could not renew the lock on {redact(self.target)} for "
                               f"{time.monotonic() - last_ok:.0f} s ({type(e).__name__}); another run may take it")
                    return

    def _lose(self, why: str) -> None:
        self.lost = why
        if self.on_lost is not None:
            try:
                self.on_lost(why)
            except Exception:  # noqa: BLE001
                pass

    def release(self) -> None:
        """Stop the heartbeat and remove the lease, if it is still this run's."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._thread = None
        if self.gen is None:
            return
        name = f"lock.{self.gen:06d}.json"
        self.gen = None
        with self._mutex:
            try:
                data = self.store.read(name)
                if data and _run_of(data) == self.run_id:
                    self.store.delete(name)
            except Exception:  # noqa: BLE001 - it goes stale by itself
                pass
