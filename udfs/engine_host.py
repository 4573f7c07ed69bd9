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
    ``starting`` or ``ready``, ``since``: when it began to start, ``start_s`` once ready), or None
    when no live host wrote one."""
    try:
        state = json.loads(Path(paths_for(key).state).read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


def _write_state(path: str, **state: Any) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), **state}, f)
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
                 cache: tuple[str | None, bool | None] = (None, None)):
        self.engine, self.spec, self.key, self.owner, self.fp = engine, spec, key, owner, fp
        self.cache_dir, self.cache_warm = cache
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
            "engine_start_parts": getattr(self.engine, "start_parts", None),
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
            try:
                os.kill(self.owner, 0)
            except ProcessLookupError:
                self.owner_gone = True
                self.stop(f"owner process {self.owner} exited")
            except PermissionError:
                pass

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


def serve(spec: EngineSpec, key: str, owner: int, spec_file: Path | None = None) -> int:
    """Take the device lock, load the engine, serve until told to stop. Returns an exit code.
    ``spec_file``: the file the spec came from, removed when the host ends."""
    paths = paths_for(key)
    try:
        with file_lock(paths.lock, timeout_s=0):
            return _serve_locked(spec, key, owner, paths)
    except LockHeld:
        print(f"engine host: another engine holds {key}; not starting a second one", flush=True)
        return 3
    finally:
        if spec_file is not None:
            _remove(spec_file)


def _serve_locked(spec: EngineSpec, key: str, owner: int, paths: HostPaths) -> int:
    host: Host | None = None

    def on_signal(signum, _frame):
        if host is not None:
            host.stop(f"signal {signum}")
        else:
            raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    from udfs import engines

    fp = fingerprint(spec)
    cache = engine_cache.was_warm(fp)
    print(f"engine host {os.getpid()}: loading {spec.backend} engine for {spec.model_dir} on {key} "
          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, owner {owner}, "
          f"cache {cache[0]}, {'warm' if cache[1] else 'cold'})", flush=True)
    t0 = time.monotonic()
    _write_state(paths.state, state="starting", since=time.time())
    try:
        engine = engines.build(spec)
    except EngineError as e:
        print(f"{ERROR_PREFIX}{e}", flush=True)
        _remove(Path(paths.state))
        return 4
    except BaseException:
        _remove(Path(paths.state))
        raise
    start_s = time.monotonic() - t0
    engine_cache.record_start(fp, start_s)
    with open(paths.starts, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "at": time.time(), "fingerprint": fp, "start_s": start_s,
                            "cache_warm": cache[1]}) + "\n")
    host = Host(engine, spec, key, owner, fp, start_s, cache)
    if os.path.exists(paths.sock):
        os.unlink(paths.sock)
    listener = Listener(paths.sock, family="AF_UNIX")
    print(f"engine host {os.getpid()}: ready in {start_s:.1f} s on {host.info()['device']} "
          f"({getattr(engine, 'start_parts', None) or 'no breakdown'})", flush=True)
    _write_state(paths.state, state="ready", since=time.time() - start_s, start_s=round(start_s, 3))
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
        engine.close()
        if key.startswith("cpu-") and host.owner_gone:  # keyed by an executor that is gone for good
            for leftover in (paths.spawn_lock, paths.starts, paths.lock):
                _remove(Path(leftover))
    return 0


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
    there); replaces a host that runs another spec or
    belongs to another executor; serialises concurrent starts with a lock. A host it starts
    keeps its compile caches in ``cache_dir``'s engine cache (``udfs.engine_cache``); a running
    host is reused whatever cache it started with. ``max_rows_in_flight``: the most rows of this
    worker the host holds at once (``DEFAULT_LINK_ROWS`` when None).
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
    with file_lock(paths.spawn_lock):
        conn = _try_connect(paths.sock)
        if conn is not None:
            client = EngineClient(conn, key)
            try:
                if client.hello(fp, owner, max_rows_in_flight):
                    _CLIENTS[key] = client
                    return client
                client.shutdown()  # another spec, or the host of an executor that is gone
            except EngineError:
                pass  # a host on its way out: a new one starts once it has released the device
        _wait_unlocked(paths.lock, timeout=120)
        if cache_dir:
            env = {**env, **engine_cache.engine_env(cache_dir)}
        _spawn(spec, key, owner, env, paths)
        deadline = time.monotonic() + start_timeout_s
        while True:
            conn = _try_connect(paths.sock)
            if conn is not None:
                client = EngineClient(conn, key)
                if not client.hello(fp, owner, max_rows_in_flight):
                    raise EngineError(f"the engine host on {key} runs another model or executor")
                _CLIENTS[key] = client
                return client
            proc = _SPAWNED.get(key)
            if proc is not None and proc.poll() is not None:
                tail = _log_tail(paths.log)
                said = [line[len(ERROR_PREFIX):] for line in tail.splitlines() if line.startswith(ERROR_PREFIX)]
                if said:
                    raise EngineError(f"the engine host for {key} could not start: {said[-1]}")
                raise EngineError(f"the engine host for {key} exited with code {proc.returncode} while "
                                  f"starting; its log {paths.log} ends with:\n{tail}")
            if time.monotonic() > deadline:
                raise EngineError(f"the engine host for {key} did not start in {start_timeout_s:.0f} s; "
                                  f"see {paths.log}")
            time.sleep(0.25)


_SPAWNED: dict[str, subprocess.Popen] = {}


def key_for(spec: EngineSpec, gpus: list[str] | None = None) -> str:
    """The device key ``connect(spec, gpus)`` uses in this worker."""
    return device_key(gpus, spec, owner_pid())[0]


def _spawn(spec: EngineSpec, key: str, owner: int, env_extra: dict[str, str], paths: HostPaths) -> subprocess.Popen:
    """Start the engine host of ``key`` in a session of its own (it outlives the worker), its
    output going to its log."""
    spec_file = Path(paths.sock).with_name(f"{key}.{time.time_ns()}.spec.json")
    spec_file.write_text(json.dumps(dataclasses.asdict(spec)))
    env = dict(os.environ)
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with open(paths.log, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "udfs.engine_host", "--spec", str(spec_file), "--remove-spec", "--key", key,
             "--owner", str(owner)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    _SPAWNED[key] = proc
    return proc


def stop_all() -> None:
    """Ask every engine host this process knows of to shut down (tests and benchmarks)."""
    for key, client in list(_CLIENTS.items()):
        client.shutdown()
        del _CLIENTS[key]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m udfs.engine_host", description="an engine host (see module doc)")
    p.add_argument("--spec", required=True, help="JSON file of an EngineSpec")
    p.add_argument("--key", required=True)
    p.add_argument("--owner", type=int, required=True, help="exit when this process exits")
    p.add_argument("--remove-spec", action="store_true", help="remove --spec FILE when the host ends")
    a = p.parse_args(argv)
    spec = EngineSpec(**json.loads(Path(a.spec).read_text()))
    return serve(spec, a.key, a.owner, Path(a.spec) if a.remove_spec else None)


if __name__ == "__main__":
    sys.exit(main())
