"""A model given as a URI (``oss://``, ``hdfs://``, ``file://``) is copied once per node.

Every worker of a node calls ``local_model``: the first one copies the directory into the cache
directory under a file lock while the others wait, the copy is checked against the sizes the
driver listed, and later calls find it complete and return at once. A plain path is used in
place.

The copy goes through the cluster's own ``hadoop fs -copyToLocal`` (the same connector and
credentials as the job: JindoSDK and the ECS RAM role on EMR); ``file://`` is copied directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from promptscore.stage_model import MARKER, locked, size_problems
from udfs.uris import has_scheme as is_uri

Manifest = Sequence[tuple[str, int]]


class StagingError(Exception):
    """The model could not be copied to local disk (one line says why)."""


def cache_path(uri: str, cache_dir: str) -> Path:
    """Where ``uri`` is cached: a readable name plus a hash of the whole URI."""
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "model"
    return Path(cache_dir) / f"{name}-{hashlib.sha1(uri.encode()).hexdigest()[:12]}"


def _complete(dest: Path, manifest: Manifest | None) -> bool:
    if not (dest / MARKER).is_file():
        return False
    return not manifest or not size_problems(dest, manifest)


def _fetch(uri: str, target: Path) -> None:
    if uri.startswith("file:"):
        shutil.copytree(urlparse(uri).path, target)
        return
    hadoop = shutil.which("hadoop")
    if hadoop is None:
        raise StagingError(f"cannot copy {uri}: no `hadoop` command on this node; stage the model to local "
                           "disk first (bootstrap/stage-model.sh) and pass that directory to --model")
    proc = subprocess.run([hadoop, "fs", "-copyToLocal", uri.rstrip("/"), str(target)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise StagingError(f"hadoop fs -copyToLocal {uri} failed: {last}")


def local_model(model: str, cache_dir: str, manifest: Manifest | None = None) -> str:
    """A local directory holding the model: ``model`` itself, or its cached copy."""
    if not is_uri(model):
        return model
    dest = cache_path(model, cache_dir)
    with locked(dest):
        if _complete(dest, manifest):
            return str(dest)
        partial = dest.parent / f".{dest.name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        _fetch(model, partial)
        problems = size_problems(partial, manifest or [])
        if problems:
            shutil.rmtree(partial, ignore_errors=True)
            raise StagingError(f"copy of {model} is incomplete: {'; '.join(problems[:3])}")
        (partial / MARKER).write_text(json.dumps({"uri": model, "files": [list(m) for m in manifest or []]}))
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(partial, dest)
        return str(dest)
