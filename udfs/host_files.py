"""What an engine host and its workers share: the runtime directory, the files of a device key
(socket, locks, spec, state, starts), the host's state file, the spec's fingerprint, the owner
process, and the protocol's row error (``udfs.engine_host`` serves, ``udfs.engine_client``
connects)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udfs.engines import EngineSpec


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
    return read_state(paths_for(key).state)


def read_state(path: str) -> dict[str, Any] | None:
    try:
        state = json.loads(Path(path).read_text())
        alive = pid_alive(int(state["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if alive else None


def pid_alive(pid: int) -> bool:
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


def write_state(path: str, pid: int | None = None, **state: Any) -> None:
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


