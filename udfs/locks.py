"""Node-wide exclusive locks on files, for the processes of one node (workers, engine hosts,
bootstrap actions).

They are ``flock(2)`` locks: the kernel releases one when its holder exits, however it exits, so
a crashed holder never leaves a lock behind. The lock file itself stays (an empty file).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator


class LockHeld(Exception):
    """Another process holds the lock and did not release it in time."""


@contextlib.contextmanager
def file_lock(path: str | Path, timeout_s: float | None = None, mode: int = 0o600,
              poll_s: float = 0.2) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` (created if missing) for the ``with`` block.

    ``timeout_s`` None waits as long as it takes; 0 fails at once when another process holds the
    lock; otherwise it waits up to that many seconds. Raises LockHeld when the lock is not had.
    """
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, mode)
    try:
        if timeout_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockHeld(f"{path} is locked by another process") from None
                    time.sleep(poll_s)
        yield
    finally:
        os.close(fd)
