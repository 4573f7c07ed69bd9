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

Workers reach it with ``udfs.engine_client.connect()``; the files both sides share are in
``udfs.host_files``. Files, by device key, in the runtime directory
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
import json
import os
import queue
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from udfs import engine_cache
from udfs.engines import EngineError, EngineSpec
from udfs.host_files import (
    DEFAULT_LINK_ROWS,
    ERROR_PREFIX,
    HostPaths,
    fingerprint,
    paths_for,
    pid_alive,
    write_state,
)
from udfs.locks import LockHeld, file_lock
from udfs.start_parts import StartClock


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
            if not pid_alive(self.owner):
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
    write_state(paths.state, state="starting", since=time.time(), fingerprint=fp, owner=owner,
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
        if key.startswith("cpu-") and not pid_alive(owner):
            _forget(paths)
        raise
    finally:
        done.set()
    return engine, time.monotonic() - t0


def _stop_if_owner_exits(owner: int, done: threading.Event) -> None:
    while not done.wait(1.0):
        if not pid_alive(owner):
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
    write_state(paths.state, state="ready", since=time.time() - host.start_s, start_s=round(host.start_s, 3),
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
