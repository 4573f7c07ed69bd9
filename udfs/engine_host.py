"""One engine per GPU, in its own process, shared by every Python worker of the executor.

Spark's Python workers come and go: a task whose output is not fully read (``limit()``) leaves
its worker alive, and the next task gets a new worker. An engine living inside a worker would be
stranded with its GPU memory, and the next worker's engine would not fit. So the engine lives in
an *engine host*: a process started by the first worker that needs it, outside Spark's worker
pool, which

- holds an exclusive lock on its device key (``udfs.devices``: ``gpu0``, ``gpu2-3`` by nvidia-smi
  index, however the GPU was given, or ``cpu-<executor pid>``): there is never a second engine on
  one GPU;
- serves any number of workers over a Unix socket, queueing their requests (each a slice of an
  Arrow batch, 128 rows by default) into one engine that stays busy across slices, batches and
  tasks (a worker sends each slice as soon as it is tokenized and keeps a second batch in flight);
- holds at most a bounded number of rows per connection (one connection per worker, so per
  task): the limit the worker declared in its hello (``DEFAULT_LINK_ROWS`` otherwise). Past it the
  host stops reading from that worker until the engine has handed rows back, so rows never pile
  up in the host however far Spark runs ahead (``rows_in_flight``, ``peak_link_rows`` in its
  stats);
- shuts the engine down cleanly (vLLM's engine core is a child process) when the executor JVM that
  owns it exits (also when dynamic allocation removes the executor after its idle timeout), on
  SIGTERM/SIGHUP, or when asked.

Workers reach it with ``connect()``. Files, by device key, in the runtime directory
(``runtime_dir()``): ``<key>.sock``, ``<key>.lock`` (held by the running host), ``<key>.spawn.lock``
(held by the worker starting one), ``<key>.<n>.spec.json`` (the spec it was started with; one name
per start, so that a host on its way out removes its own and never its successor's),
``<key>.state.json`` (the host's own state while it lives: ``starting`` since when, then ``ready``;
workers waiting for it report it to the driver's progress line) and ``<key>.starts`` (one line per
engine start, with its seconds and whether its compile cache was warm). A host started by
``connect(..., cache_dir=...)`` keeps vLLM's, torch's and Triton's caches in that directory's
engine cache (``udfs.engine_cache``), not in the container's fresh ``HOME``.
Its log is ``promptscore-engine-<key>.log`` in the
YARN container's log directory (the first of ``$LOG_DIRS``), else in the runtime directory. A host
keyed by an executor (``cpu-…``) removes its files but the log when that executor is gone; a GPU's
lock files stay for the next executor on that GPU.

Run directly only for debugging: ``python -m udfs.engine_host --spec FILE --key KEY --owner PID``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from udfs import engine_cache
from udfs.devices import device_key
from udfs.engines import EngineError, EngineSpec
from udfs.locks import LockHeld, file_lock
from udfs.start_parts import StartClock


class RowError(Exception):
    """The engine refused the rows of one request (a bad row among them)."""


# A host that cannot build its engine says why in one line of its log starting with this.
ERROR_PREFIX = "engine host: error: "
# Rows a connection may have queued for or inside the engine when its hello sets no limit.
DEFAULT_LINK_ROWS = 4096


def runtime_dir() -> Path:
    """Where sockets, locks and logs of engine hosts live (one directory per user, mode 0700)."""
    base = os.environ.get("PROMPTSCORE_RUNTIME_DIR") or f"/tmp/promptscore-{os.getuid()}"
    path = Path(base)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class HostPaths:
    sock: str
    lock: str
    spawn_lock: str
    log: str
    starts: str
    state: str


def paths_for(key: str) -> HostPaths:
    d = runtime_dir()
    log_dir = Path((os.environ.get("LOG_DIRS") or "").split(",")[0] or d)
    return HostPaths(str(d / f"{key}.sock"), str(d / f"{key}.lock"), str(d / f"{key}.spawn.lock"),
                     str(log_dir / f"promptscore-engine-{key}.log"), str(d / f"{key}.starts"),
                     str(d / f"{key}.state.json"))


def host_state(key: str) -> dict[str, Any] | None:
    """The state the engine host of ``key`` on this node wrote about itself (``state``:
    ``starting`` or ``ready``, ``since``: when it began to start, ``fingerprint``, ``owner``,
    ``started_by``; once ready ``start_s`` and ``start_parts``), or None when no live host wrote
    one."""
    return _read_state(paths_for(key).state)


def _read_state(path: str) -> dict[str, Any] | None:
    try:
        state = json.loads(Path(path).read_text())
        alive = _alive(int(state["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if alive else None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _write_state(path: str, pid: int | None = None, **state: Any) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": pid or os.getpid(), **state}, f)
    os.replace(tmp, path)  # readers never see half a file


def fingerprint(spec: EngineSpec) -> str:
    """Identifies the engine a spec builds: a host with another fingerprint is replaced."""
    blob = json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def owner_pid() -> int:
    """The executor JVM this worker belongs to (the nearest ``java`` ancestor), else the parent."""
    pid = os.getpid()
    for _ in range(12):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid <= 1:
                break
            if Path(f"/proc/{ppid}/comm").read_text().strip() == "java":
                return ppid
            pid = ppid
        except (OSError, ValueError, IndexError):
            break
    return os.getppid()


# ---------------------------------------------------------------------------------------------
# The host process


class _Request:
    __slots__ = ("link", "rid", "ids", "tokens")

    def __init__(self, link: "_Link", rid: int, ids: list[list[int]]):
        self.link, self.rid, self.ids = link, rid, ids
        self.tokens = sum(len(r) for r in ids)


class _Link:
    """One worker's connection: a reader thread queues requests, a writer thread sends replies,
    so a worker that stops reading (``limit()``) never blocks the engine. The reader stops
    reading while the link has ``limit`` rows queued for or inside the engine (a single larger
    request is taken alone), so what a worker sends waits in its own socket, not in the host."""

    def __init__(self, host: "Host", conn: Connection):
        self.host, self.conn = host, conn
        self.outbox: queue.Queue = queue.Queue()
        self.limit = DEFAULT_LINK_ROWS
        self.in_flight = 0  # rows queued for or inside the engine
        self.peak = 0  # the most rows in flight at once since the last hello
        self.room = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def admit(self, rows: int) -> None:
        """Wait until ``rows`` more fit under the limit, then count them in."""
        with self.room:
            while self.in_flight and self.in_flight + rows > self.limit and not self.host.stopping():
                self.room.wait(0.5)
            self.in_flight += rows
            self.peak = max(self.peak, self.in_flight)
            self.host.note_in_flight(self.in_flight, rows)

    def release(self, rows: int) -> None:
        with self.room:
            self.in_flight -= rows
            self.host.note_in_flight(self.in_flight, -rows)
            self.room.notify_all()

    def _read(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                kind, rid = msg[0], msg[1]
                if kind == "score":
                    self.admit(len(msg[2]))
                    self.host.requests.put(_Request(self, rid, msg[2]))
                elif kind == "hello":
                    matches = msg[2] == self.host.fp and msg[3] == self.host.owner
                    if len(msg) > 4 and msg[4]:
                        self.limit = max(1, int(msg[4]))
                    with self.room:
                        self.peak = self.in_flight
                    self.outbox.put(("hello", rid, self.host.info(), matches))
                elif kind == "stats":
                    self.outbox.put(("stats", rid, {**self.host.info(), "link_limit": self.limit,
                                                    "link_peak_rows": self.peak}))
                elif kind == "shutdown":
                    self.outbox.put(("bye", rid))
                    self.host.stop("asked to shut down")
        except (EOFError, OSError):
            pass
        finally:
            self.outbox.put(None)

    def _write(self) -> None:
        try:
            while (item := self.outbox.get()) is not None:
                self.conn.send(item)
        except (OSError, ValueError):
            pass
        finally:
            try:
                self.conn.close()
            except OSError:
                pass


class Host:
    """The engine and the socket that feeds it."""

    def __init__(self, engine, spec: EngineSpec, key: str, owner: int, fp: str, start_s: float,
                 cache: tuple[str | None, bool | None] = (None, None), started_by: str | None = None,
                 process_started_at: float | None = None):
        self.engine, self.spec, self.key, self.owner, self.fp = engine, spec, key, owner, fp
        self.cache_dir, self.cache_warm = cache
        # Who started it (a scoring task, or the job's prestart) and when its process began.
        self.started_by, self.process_started_at = started_by, process_started_at
        self.requests: queue.Queue[_Request] = queue.Queue()
        self._stop = threading.Event()
        self.reason = ""
        self.owner_gone = False
        self.stats = {"requests": 0, "rows": 0, "tokens": 0, "failed_requests": 0,
                      "rows_in_flight": 0, "peak_link_rows": 0}
        self._count_lock = threading.Lock()
        self.started_at = time.time()
        self.start_s = start_s
        self.idle_s = 0.0  # the engine waiting for rows (with none of its own left to compute)

    def info(self) -> dict[str, Any]:
        # An engine that schedules rows itself (vLLM) knows best when it had none; else the
        # host's own count of waits on an empty queue.
        idle = getattr(self.engine, "idle_s", None)
        return {
            "pid": os.getpid(), "key": self.key, "owner": self.owner, "fingerprint": self.fp,
            "backend": self.spec.backend, "device": getattr(self.engine, "device_name", "?"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "engine_start_s": round(self.start_s, 3), "started_at": self.started_at,
            "engine_start_parts": getattr(self.engine, "start_parts", None), "started_by": self.started_by,
            "process_started_at": self.process_started_at,
            "cache_dir": self.cache_dir, "cache_warm": self.cache_warm,
            "cache_env": {name: os.environ.get(name) for name in engine_cache.ENV_DIRS},
            "busy_s": round(getattr(self.engine, "busy_s", 0.0), 3),
            "idle_s": round(self.idle_s if idle is None else idle, 3), **self.stats,
        }

    def note_in_flight(self, link_rows: int, change: int) -> None:
        """Count rows in (``change`` > 0) or out of the engine; ``link_rows``: the link's rows now."""
        with self._count_lock:
            self.stats["rows_in_flight"] += change
            self.stats["peak_link_rows"] = max(self.stats["peak_link_rows"], link_rows)

    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.reason = reason
            self._stop.set()

    def stopping(self) -> bool:
        return self._stop.is_set()

    def next_request(self, block: bool) -> _Request | None:
        if not block:
            try:
                return self.requests.get_nowait()
            except queue.Empty:
                return None
        start = time.monotonic()
        try:
            return self.requests.get(timeout=0.2)
        except queue.Empty:
            return None
        finally:
            self.idle_s += time.monotonic() - start

    def deliver(self, req: _Request, result) -> None:
        req.link.release(len(req.ids))
        if isinstance(result, BaseException):
            self.stats["failed_requests"] += 1
            fatal = isinstance(result, EngineError)
            req.link.outbox.put(("error", req.rid, "fatal" if fatal else "row",
                                 f"{type(result).__name__}: {result}".splitlines()[0][:500]))
        else:
            self.stats["requests"] += 1
            self.stats["rows"] += len(req.ids)
            self.stats["tokens"] += req.tokens
            req.link.outbox.put(("result", req.rid, result))

    def watch_owner(self) -> None:
        while not self._stop.wait(1.0):
            if not _alive(self.owner):
                self.owner_gone = True
                self.stop(f"owner process {self.owner} exited")

    def serve(self, listener: Listener) -> None:
        def accept() -> None:
            while not self._stop.is_set():
                try:
                    _Link(self, listener.accept())
                except OSError:
                    return

        threading.Thread(target=accept, daemon=True).start()
        threading.Thread(target=self.watch_owner, daemon=True).start()
        try:
            self.engine.run(self.next_request, self.deliver, self.stopping)
        except Exception as e:  # noqa: BLE001 - logged; workers see the socket close
            self.stop(f"engine failed: {type(e).__name__}: {e}")
        while (req := self.next_request(False)) is not None:
            self.deliver(req, EngineError(f"engine host stopped: {self.reason}"))


def serve(spec: EngineSpec, key: str, owner: int, spec_file: Path | None = None,
          clock: StartClock | None = None, started_by: str | None = None) -> int:
    """Take the device lock, load the engine, serve until told to stop. Returns an exit code.
    ``spec_file``: the file the spec came from, removed when the host ends; ``clock``: made when
    this process started (``udfs.start_parts``); ``started_by``: who spawned it (``task``,
    ``prestart``)."""
    paths = paths_for(key)
    try:
        with file_lock(paths.lock, timeout_s=0):
            return _serve_locked(spec, key, owner, paths, clock or StartClock(), started_by)
    except LockHeld:
        print(f"engine host: another engine holds {key}; not starting a second one", flush=True)
        return 3
    finally:
        if spec_file is not None:
            _remove(spec_file)


def _serve_locked(spec: EngineSpec, key: str, owner: int, paths: HostPaths, clock: StartClock,
                  started_by: str | None) -> int:
    hosts: list[Host] = []

    def on_signal(signum, _frame):
        if hosts:
            hosts[0].stop(f"signal {signum}")
        else:
            raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    fp = fingerprint(spec)
    cache = engine_cache.was_warm(fp)
    print(f"engine host {os.getpid()}: loading {spec.backend} engine for {spec.model_dir} on {key} "
          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, owner {owner}, "
          f"cache {cache[0]}, {'warm' if cache[1] else 'cold'}, started by {started_by or '?'})", flush=True)
    started = _start_engine(spec, key, owner, paths, fp, clock, started_by)
    if started is None:
        return 4
    engine, start_s = started
    engine_cache.record_start(fp, start_s)
    parts = getattr(engine, "start_parts", None)
    with open(paths.starts, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "at": time.time(), "fingerprint": fp, "start_s": start_s,
                            "cache_warm": cache[1], "started_by": started_by, "start_parts": parts}) + "\n")
    zero = clock.now()
    host = Host(engine, spec, key, owner, fp, start_s, cache, started_by,
                round(time.time() - zero, 3) if zero is not None else None)
    hosts.append(host)
    return _run(host, paths, parts)


def _start_engine(spec: EngineSpec, key: str, owner: int, paths: HostPaths, fp: str, clock: StartClock,
                  started_by: str | None):
    """(the engine, its start seconds); None when it cannot start (said in one line of the log).
    Stops at once if the owner exits meanwhile, leaving no state (nor, keyed by that executor, its
    lock files)."""
    from udfs import engines

    t0 = time.monotonic()
    _write_state(paths.state, state="starting", since=time.time(), fingerprint=fp, owner=owner,
                 started_by=started_by)
    done = threading.Event()
    threading.Thread(target=_stop_if_owner_exits, args=(owner, done), name="engine-owner-start", daemon=True).start()
    try:
        engine = engines.build(spec, clock)
    except EngineError as e:
        print(f"{ERROR_PREFIX}{e}", flush=True)
        _remove(Path(paths.state))
        return None
    except BaseException:
        _remove(Path(paths.state))
        if key.startswith("cpu-") and not _alive(owner):
            _forget(paths)
        raise
    finally:
        done.set()
    return engine, time.monotonic() - t0


def _stop_if_owner_exits(owner: int, done: threading.Event) -> None:
    while not done.wait(1.0):
        if not _alive(owner):
            print(f"engine host {os.getpid()}: owner process {owner} exited while the engine was starting; "
                  "stopping", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _run(host: Host, paths: HostPaths, parts: dict | None) -> int:
    """Serve on the socket until the host stops; then shut the engine down and clean up."""
    if os.path.exists(paths.sock):
        os.unlink(paths.sock)
    listener = Listener(paths.sock, family="AF_UNIX")
    print(f"engine host {os.getpid()}: ready in {host.start_s:.1f} s on {host.info()['device']} "
          f"({json.dumps(parts) if parts else 'no breakdown'})", flush=True)
    _write_state(paths.state, state="ready", since=time.time() - host.start_s, start_s=round(host.start_s, 3),
                 fingerprint=host.fp, owner=host.owner, started_by=host.started_by, start_parts=parts)
    try:
        host.serve(listener)
    finally:
        _remove(Path(paths.state))
        try:
            listener.close()
        except OSError:
            pass
        if os.path.exists(paths.sock):
            os.unlink(paths.sock)
        print(f"engine host {os.getpid()}: shutting down ({host.reason}); {host.info()}", flush=True)
        host.engine.close()
        if host.key.startswith("cpu-") and host.owner_gone:  # keyed by an executor that is gone for good
            _forget(paths)
    return 0


def _forget(paths: HostPaths) -> None:
    """Remove the files of a host keyed by an executor that is gone (its log stays)."""
    for leftover in (paths.spawn_lock, paths.starts, paths.lock):
        _remove(Path(leftover))


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# The worker side


class EngineClient:
    """A worker's connection to its engine host. Every message carries a request id; replies
    may come back out of order and are matched by it."""

    def __init__(self, conn: Connection, key: str):
        self.conn, self.key = conn, key
        self.info: dict[str, Any] = {}
        self.limit: int | None = None
        self._ids = itertools.count()
        self._ready: dict[int, tuple] = {}

    def _send(self, kind: str, *payload) -> int:
        rid = next(self._ids)
        try:
            self.conn.send((kind, rid, *payload))
        except (OSError, ValueError) as e:
            self.close()  # so that the next connect() starts over instead of reusing it
            raise EngineError(f"engine host {self.key} went away: {e}") from None
        return rid

    def _reply(self, rid: int) -> tuple:
        while rid not in self._ready:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError) as e:
                self.close()
                raise EngineError(f"engine host {self.key} went away (its log: {paths_for(self.key).log}): "
                                  f"{type(e).__name__}") from None
            self._ready[msg[1]] = msg
        return self._ready.pop(rid)

    def hello(self, fp: str, owner: int, max_rows_in_flight: int | None = None) -> bool:
        """Whether the host runs the engine ``fp`` for executor ``owner``; fills ``info``. With
        ``max_rows_in_flight``, the host holds at most that many of this connection's rows."""
        _, _, self.info, matches = self._reply(self._send("hello", fp, owner, max_rows_in_flight))
        self.limit = max_rows_in_flight
        return bool(matches)

    def submit(self, rows: list[list[int]]) -> int:
        """Queue rows for scoring; returns a request id for ``result``."""
        return self._send("score", rows)

    def result(self, rid: int) -> list[float]:
        """The scores of request ``rid``; RowError if the engine refused its rows."""
        msg = self._reply(rid)
        if msg[0] == "result":
            return msg[2]
        if msg[2] == "row":
            raise RowError(msg[3])
        self.close()  # the engine cannot go on: the next connect() starts over
        raise EngineError(msg[3])

    def score(self, rows: list[list[int]]) -> list[float]:
        return self.result(self.submit(rows))

    def stats(self) -> dict[str, Any]:
        """The host's counters: rows, tokens, busy seconds, engine start seconds, device."""
        return self._reply(self._send("stats"))[2]

    def shutdown(self) -> None:
        """Ask the host to stop (it shuts its engine down) and close the connection."""
        try:
            self._reply(self._send("shutdown"))
        except EngineError:
            pass
        self.close()

    def close(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass


_CLIENTS: dict[str, EngineClient] = {}


def _try_connect(path: str) -> Connection | None:
    try:
        return Client(path, family="AF_UNIX")
    except (FileNotFoundError, ConnectionRefusedError, socket.error):
        return None


def _wait_unlocked(lock_path: str, timeout: float) -> None:
    try:
        with file_lock(lock_path, timeout_s=timeout):
            pass
    except LockHeld:
        raise EngineError(f"the engine on {lock_path} did not release its device in {timeout:.0f} s") from None


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def connect(spec: EngineSpec, gpus: list[str] | None = None, start_timeout_s: float = 1800.0,
            cache_dir: str | None = None, max_rows_in_flight: int | None = None) -> EngineClient:
    """The engine client for this worker's device, starting the engine host if there is none.

    Reuses the worker's connection across tasks (after a hello that shows the host is still
    there); waits for a host that is starting (started by another worker, or by the job's
    prestart); replaces a host that runs another spec or belongs to another executor;
    serialises concurrent starts with a lock. A host it starts keeps its compile caches in
    ``cache_dir``'s engine cache (``udfs.engine_cache``); a running host is reused whatever cache
    it started with. ``max_rows_in_flight``: the most rows of this worker the host holds at once
    (``DEFAULT_LINK_ROWS`` when None).
    """
    owner = owner_pid()
    key, env = device_key(gpus, spec, owner)
    fp = fingerprint(spec)
    client = _CLIENTS.get(key)
    if client is not None and client.info.get("fingerprint") == fp and not client.conn.closed:
        try:  # one round trip: the host is still there (and takes this task's limit)
            if client.hello(fp, owner, max_rows_in_flight):
                return client
        except EngineError:
            pass  # a host gone since this worker's last task: start over below
    _CLIENTS.pop(key, None)
    paths = paths_for(key)
    deadline = time.monotonic() + start_timeout_s
    with file_lock(paths.spawn_lock):
        for _ in range(2):  # a host started elsewhere for another spec is replaced once
            client = _hello_running(key, paths, fp, owner, max_rows_in_flight)
            if client is None:
                client = _start_or_join(spec, key, env, owner, paths, cache_dir, deadline, start_timeout_s)
                if not client.hello(fp, owner, max_rows_in_flight):
                    client.shutdown()
                    continue
            _CLIENTS[key] = client
            return client
    raise EngineError(f"the engine host on {key} runs another model or executor")


def _hello_running(key: str, paths: HostPaths, fp: str, owner: int, limit: int | None) -> EngineClient | None:
    """A client of the host serving ``key`` when it runs ``fp`` for ``owner``; a host serving
    another spec or executor is asked to shut down. None when none serves (or it is leaving)."""
    conn = _try_connect(paths.sock)
    if conn is None:
        return None
    client = EngineClient(conn, key)
    try:
        if client.hello(fp, owner, limit):
            return client
        client.shutdown()  # another spec, or the host of an executor that is gone
    except EngineError:
        pass  # a host on its way out: a new one starts once it has released the device
    return None


def _start_or_join(spec: EngineSpec, key: str, env: dict[str, str], owner: int, paths: HostPaths,
                   cache_dir: str | None, deadline: float, timeout_s: float) -> EngineClient:
    """A client of the host of ``key`` once it serves: the one starting now, or a new one."""
    state = host_state(key)
    if state is not None and state.get("state") == "starting":
        return _await_host(key, paths, int(state["pid"]), None, deadline, timeout_s)
    _wait_unlocked(paths.lock, timeout=120)
    if cache_dir:
        env = {**env, **engine_cache.engine_env(cache_dir)}
    proc = _spawn(spec, key, owner, env, paths)
    return _await_host(key, paths, proc.pid, proc, deadline, timeout_s)


def _await_host(key: str, paths: HostPaths, pid: int, proc: subprocess.Popen | None, deadline: float,
                timeout_s: float) -> EngineClient:
    """Wait for the starting host ``pid`` (``proc`` when this worker spawned it) to serve; an
    EngineError saying why when it exits first or takes longer than ``timeout_s``."""
    while True:
        conn = _try_connect(paths.sock)
        if conn is not None:
            return EngineClient(conn, key)
        code = proc.poll() if proc is not None else (None if _alive(pid) else "unknown")
        if code is not None:
            tail = _log_tail(paths.log)
            said = [line[len(ERROR_PREFIX):] for line in tail.splitlines() if line.startswith(ERROR_PREFIX)]
            if said:
                raise EngineError(f"the engine host for {key} could not start: {said[-1]}")
            raise EngineError(f"the engine host for {key} exited with code {code} while "
                              f"starting; its log {paths.log} ends with:\n{tail}")
        if time.monotonic() > deadline:
            raise EngineError(f"the engine host for {key} did not start in {timeout_s:.0f} s; see {paths.log}")
        time.sleep(0.25)


def prestart(spec: EngineSpec, gpus: list[str] | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """Start the engine host of this worker's device for ``spec`` and return at once, without
    waiting for its engine; the tasks that score later connect to it (``connect``). Nothing is
    started where a host already runs or starts, or another process holds the device: a
    prestart never replaces or waits for anything. Returns what it did (``key``, ``started``,
    ``pid``, ``reason``)."""
    owner = owner_pid()
    key, env = device_key(gpus, spec, owner)
    paths = paths_for(key)
    with file_lock(paths.spawn_lock):
        state = host_state(key)
        if state is not None:
            return {"key": key, "started": False, "pid": state.get("pid"), "reason": f"host {state.get('state')}"}
        try:
            with file_lock(paths.lock, timeout_s=0):
                pass
        except LockHeld:
            return {"key": key, "started": False, "pid": None, "reason": "device held"}
        if cache_dir:
            env = {**env, **engine_cache.engine_env(cache_dir)}
        proc = _spawn(spec, key, owner, env, paths, started_by="prestart")
    return {"key": key, "started": True, "pid": proc.pid, "reason": None}


def local_spec(engine: EngineSpec, cache_dir: str, manifest: list[tuple[str, int]] | None) -> EngineSpec:
    """The spec an engine host runs for ``engine`` on this node: the model on local disk (a model
    given as a URI is copied into ``cache_dir`` once per node, checked against ``manifest``)."""
    from udfs import staging

    return dataclasses.replace(engine, model_dir=staging.local_model(engine.model_dir, cache_dir, manifest))


_SPAWNED: dict[str, subprocess.Popen] = {}


def key_for(spec: EngineSpec, gpus: list[str] | None = None) -> str:
    """The device key ``connect(spec, gpus)`` uses in this worker."""
    return device_key(gpus, spec, owner_pid())[0]


# How vLLM starts its engine-core process unless the environment says otherwise: forked from the
# host, which has imported torch and vLLM already and has not initialised CUDA (vLLM itself turns
# to spawn when CUDA is initialised, and says so); spawned, the process imports them again.
MULTIPROC_METHOD = "fork"


def _spawn(spec: EngineSpec, key: str, owner: int, env_extra: dict[str, str], paths: HostPaths,
           started_by: str = "task") -> subprocess.Popen:
    """Start the engine host of ``key`` in a session of its own (it outlives the worker), its
    output going to its log."""
    spec_file = Path(paths.sock).with_name(f"{key}.{time.time_ns()}.spec.json")
    spec_file.write_text(json.dumps(dataclasses.asdict(spec)))
    env = dict(os.environ)
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.setdefault("VLLM_WORKER_MULTIPROC_METHOD", MULTIPROC_METHOD)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with open(paths.log, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "udfs.engine_host", "--spec", str(spec_file), "--remove-spec", "--key", key,
             "--owner", str(owner), "--started-by", started_by],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    # Said before the spawn lock is given back, so that no other worker starts a second host
    # before this one has started far enough to say so itself.
    if _read_state(paths.state) is None:
        _write_state(paths.state, proc.pid, state="starting", since=time.time(), fingerprint=fingerprint(spec),
                     owner=owner, started_by=started_by)
    _SPAWNED[key] = proc
    return proc


def stop_all() -> None:
    """Ask every engine host this process knows of to shut down (tests and benchmarks)."""
    for key, client in list(_CLIENTS.items()):
        client.shutdown()
        del _CLIENTS[key]


def main(argv: list[str] | None = None) -> int:
    clock = StartClock.for_this_process()  # first: where the start goes, from the process's own start
    p = argparse.ArgumentParser(prog="python -m udfs.engine_host", description="an engine host (see module doc)")
    p.add_argument("--spec", required=True, help="JSON file of an EngineSpec")
    p.add_argument("--key", required=True)
    p.add_argument("--owner", type=int, required=True, help="exit when this process exits")
    p.add_argument("--remove-spec", action="store_true", help="remove --spec FILE when the host ends")
    p.add_argument("--started-by", help="who started it (task, prestart), for its info and report")
    a = p.parse_args(argv)
    spec = EngineSpec(**json.loads(Path(a.spec).read_text()))
    return serve(spec, a.key, a.owner, Path(a.spec) if a.remove_spec else None, clock, a.started_by)


if __name__ == "__main__":
    sys.exit(main())
