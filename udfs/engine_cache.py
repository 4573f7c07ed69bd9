"""Where engine hosts keep the caches that make a second engine start fast, across runs.

vLLM compiles the model with ``torch.compile`` and Triton at its first start and caches the result
under ``~/.cache/vllm``; YARN gives every container a fresh ``HOME``, so without help every run
compiles again. An engine host is therefore started with its caches in a persistent, node-local
directory beside the model cache (``--cache-dir``)::

    <cache-dir>/engine-cache/            shared by the node's users (mode 1777, like /tmp)
    <cache-dir>/engine-cache/<uid>/      this user's (mode 0700: compiled code is executed, so
                                         no other user may write it)
        vllm/ torchinductor/ triton/ xdg/ nv/ flashinfer/   the variables in ENV_DIRS point here
        starts/<fingerprint>.json        one per engine spec that started with this cache

An engine start is *warm* when ``starts/<fingerprint>.json`` was there before it: an engine of
the same spec compiled into this cache before, so vLLM loads its compiled graphs instead of
compiling them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from udfs.engines import EngineError

# Environment of the engine host -> subdirectory of the user's cache.
ENV_DIRS = {
    "VLLM_CACHE_ROOT": "vllm",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "TRITON_CACHE_DIR": "triton",
    "XDG_CACHE_HOME": "xdg",
    "CUDA_CACHE_PATH": "nv",
    "FLASHINFER_WORKSPACE_BASE": "flashinfer",
}
ROOT_ENV = "PROMPTSCORE_ENGINE_CACHE"


def user_cache(cache_dir: str) -> Path:
    """This user's engine cache under ``cache_dir``, created with the permissions above; an
    EngineError (one line) when it exists but another user owns it or others may write it."""
    shared = Path(cache_dir) / "engine-cache"
    shared.mkdir(parents=True, exist_ok=True)
    if shared.stat().st_uid == os.getuid():
        os.chmod(shared, 0o1777)
    mine = shared / str(os.getuid())
    mine.mkdir(mode=0o700, exist_ok=True)
    st = mine.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise EngineError(f"the engine cache {mine} is not this user's own (owner uid {st.st_uid}, mode "
                          f"{st.st_mode & 0o777:o}); remove it or choose another --cache-dir")
    return mine


def engine_env(cache_dir: str) -> dict[str, str]:
    """The environment that puts an engine host's caches into ``cache_dir``'s engine cache."""
    root = user_cache(cache_dir)
    env = {name: str(root / sub) for name, sub in ENV_DIRS.items()}
    for path in env.values():
        os.makedirs(path, mode=0o700, exist_ok=True)
    env[ROOT_ENV] = str(root)
    return env


def _marker(root: str, fp: str) -> Path:
    return Path(root) / "starts" / f"{fp}.json"


def was_warm(fp: str) -> tuple[str | None, bool | None]:
    """(this process's engine cache, whether an engine of fingerprint ``fp`` started with it
    before); (None, None) for a process started without one."""
    root = os.environ.get(ROOT_ENV)
    if not root:
        return None, None
    return root, _marker(root, fp).exists()


def record_start(fp: str, start_s: float) -> None:
    """Note that an engine of fingerprint ``fp`` started with this process's engine cache."""
    root = os.environ.get(ROOT_ENV)
    if not root:
        return
    marker = _marker(root, fp)
    marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    marker.write_text(json.dumps({"at": time.time(), "start_s": round(start_s, 3), "pid": os.getpid()}))
