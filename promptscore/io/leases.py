"""Where the leases of ``promptscore.io.lock`` live, and who wrote them: lease files in a local
directory (Python's own calls) or through the cluster's Hadoop file system, and the identity of a
process (host, pid, its start time, kernel boot and PID namespace), by which a lease's holder is
known to be gone.
"""

from __future__ import annotations

import errno
import getpass
import os
import re
import socket
import threading

from promptscore.io import files, hadoop

NAME = re.compile(r"^lock\.(\d+)\.json$")  # a lease file: lock.<generation>.json


# ---------------------------------------------------------------------------------------------
# Who this process is, and whether another one is provably gone


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks after boot), None if there is none (or a
    zombie: it has ended)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if not fields or fields[0] == "Z":
        return None
    return int(fields[19])


def identity() -> dict:
    """This process as a lease names it."""
    try:
        owner = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name for this uid (containers)
        owner = str(os.getuid())
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = None
    pid = os.getpid()
    return {"owner": owner, "host": socket.gethostname(), "pid": pid, "pid_start": _start_ticks(pid),
            "boot_id": _read("/proc/sys/kernel/random/boot_id"), "pidns": pidns}


def gone(info: dict, me: dict | None = None) -> bool:
    """Whether the process that wrote ``info`` has provably ended: it ran under this kernel boot
    and in this PID namespace, and no process has its pid and start time now."""
    me = me or identity()
    if not me["boot_id"] or not me["pidns"]:
        return False
    if info.get("boot_id") != me["boot_id"] or info.get("pidns") != me["pidns"]:
        return False
    pid = info.get("pid")
    if not isinstance(pid, int):
        return False
    now = _start_ticks(pid)
    return now is None or (info.get("pid_start") is not None and now != info.get("pid_start"))


# ---------------------------------------------------------------------------------------------
# Where lease files live


class LocalStore:
    """Lease files in a local directory (Python's own calls: no JVM round trips)."""

    atomic = True

    def __init__(self, directory: str):
        self.dir = directory

    def list(self) -> dict[str, float]:
        try:
            names = [n for n in os.listdir(self.dir) if NAME.match(n)]
        except FileNotFoundError:
            return {}
        out = {}
        for n in names:
            try:
                out[n] = os.stat(os.path.join(self.dir, n)).st_mtime
            except FileNotFoundError:
                pass
        return out

    def read(self, name: str) -> bytes | None:
        try:
            with open(os.path.join(self.dir, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _aside(self, name: str, data: bytes) -> str:
        os.makedirs(self.dir, exist_ok=True)
        tmp = os.path.join(self.dir, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        return tmp

    def create(self, name: str, data: bytes) -> bool:
        # Written aside, then linked into place: the name appears complete or not at all, and a
        # second link to the same name fails.
        for _ in range(3):
            tmp = self._aside(name, data)
            try:
                os.link(tmp, os.path.join(self.dir, name))
                return True
            except FileExistsError:
                return False
            except FileNotFoundError:  # the directory went away in between (a run ending): again
                continue
            finally:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        raise OSError(errno.ENOENT, f"cannot create {name} in {self.dir}")

    def write(self, name: str, data: bytes) -> None:
        os.replace(self._aside(name, data), os.path.join(self.dir, name))

    def delete(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.dir, name))
        except FileNotFoundError:
            pass


class HadoopStore:
    """Lease files through the cluster's Hadoop file system (HDFS, OSS, ...)."""

    def __init__(self, spark, directory: str, atomic: bool):
        self.spark, self.dir, self.atomic = spark, directory, atomic

    def list(self) -> dict[str, float]:
        return {name: st.mtime_ms / 1000 for name, st in files.list_status(self.spark, self.dir).items()
                if NAME.match(name)}

    def read(self, name: str) -> bytes | None:
        return hadoop.read_bytes_if_there(self.spark, f"{self.dir}/{name}")

    def create(self, name: str, data: bytes) -> bool:
        return hadoop.create_new(self.spark, f"{self.dir}/{name}", data)

    def write(self, name: str, data: bytes) -> None:
        hadoop.write_bytes(self.spark, f"{self.dir}/{name}", data)

    def delete(self, name: str) -> None:
        hadoop.delete(self.spark, f"{self.dir}/{name}", recursive=False)
