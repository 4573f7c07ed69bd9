"""The worker side of an engine host (``udfs.engine_host``): ``connect()`` joins the host of this
worker's device, starting it if none runs (``_spawn``), and ``prestart()`` starts one ahead of the
scoring; ``EngineClient`` sends token ids and gets scores back, matched by request id."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

from udfs import engine_cache
from udfs.devices import device_key
from udfs.engines import EngineError, EngineSpec
from udfs.host_files import (
    ERROR_PREFIX,
    HostPaths,
    RowError,
    fingerprint,
    host_state,
    owner_pid,
    paths_for,
    pid_alive,
    read_state,
    write_state,
)
from udfs.locks import LockHeld, file_lock


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
        code = proc.poll() if proc is not None else (None if pid_alive(pid) else "unknown")
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

# vLLM's own settings for the host, each unless the environment sets it. The mega AOT artifact
# (vLLM's default from torch 2.12; torch 2.11 supports it but vLLM 0.25 leaves it off there)
# loads a warm start's compiled graphs as one artifact: 1.5 s instead of about 5 s on an H200,
# with identical scores (bench/RESULTS.md).
HOST_ENV_DEFAULTS = {
    "VLLM_WORKER_MULTIPROC_METHOD": MULTIPROC_METHOD,
    "VLLM_USE_MEGA_AOT_ARTIFACT": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def host_env(env_extra: dict[str, str]) -> dict[str, str]:
    """The environment of an engine host: this process's, with ``env_extra`` (its caches) and
    this Python's import path, and ``HOST_ENV_DEFAULTS`` where the environment says nothing."""
    env = {**HOST_ENV_DEFAULTS, **os.environ, **env_extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def _spawn(spec: EngineSpec, key: str, owner: int, env_extra: dict[str, str], paths: HostPaths,
           started_by: str = "task") -> subprocess.Popen:
    """Start the engine host of ``key`` in a session of its own (it outlives the worker), its
    output going to its log."""
    spec_file = Path(paths.sock).with_name(f"{key}.{time.time_ns()}.spec.json")
    spec_file.write_text(json.dumps(dataclasses.asdict(spec)))
    env = host_env(env_extra)
    with open(paths.log, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "udfs.engine_host", "--spec", str(spec_file), "--remove-spec", "--key", key,
             "--owner", str(owner), "--started-by", started_by],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    # Said before the spawn lock is given back, so that no other worker starts a second host
    # before this one has started far enough to say so itself.
    if read_state(paths.state) is None:
        write_state(paths.state, proc.pid, state="starting", since=time.time(), fingerprint=fingerprint(spec),
                     owner=owner, started_by=started_by)
    _SPAWNED[key] = proc
    return proc


def stop_all() -> None:
    """Ask every engine host this process knows of to shut down (tests and benchmarks)."""
    for key, client in list(_CLIENTS.items()):
        client.shutdown()
        del _CLIENTS[key]
