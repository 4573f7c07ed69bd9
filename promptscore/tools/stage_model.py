"""Copy a model directory to local disk once per node: resumable, size-checked, locked.

    python -m promptscore.tools.stage_model oss://bucket/models/skywork-8b/ /mnt/models/skywork-8b
    python -m promptscore.tools.stage_model /nas/models/skywork-8b /mnt/models/skywork-8b

(``bootstrap/stage-model.sh`` runs this as an EMR bootstrap action; the copying is
``udfs.staging.stage``.)

- ``oss://`` sources are read with oss2 (``promptscore.tools.oss_source``). Credentials come from the
  environment (``OSS_ACCESS_KEY_ID``/``OSS_ACCESS_KEY_SECRET``/``OSS_SESSION_TOKEN``, or the
  ``ALIBABA_CLOUD_*`` names) or else from the ECS instance's RAM role, read from the instance
  metadata in security hardening mode when the instance requires it; they are never arguments
  and never printed. The endpoint is the bucket's: ``--endpoint``, one written into the URI
  (``oss://bucket.oss-cn-shanghai-internal.aliyuncs.com/models/rm/``), the internal endpoint of
  ``--region``, ``OSS_ENDPOINT``, or else the internal endpoint of the instance's own region.
- Any other source is a directory (or a ``file:`` URI).
- A file already there with the source's size is kept; a partial one is resumed; at the end every
  file's size is checked against the source and a marker is written. A second run finds the
  marker and returns at once; concurrent runs wait on a lock instead of copying twice.
"""

from __future__ import annotations

import argparse
import sys

from promptscore.errors import classify
from promptscore.tools.oss_source import OssSource
from udfs.staging import DirSource, Source, StagingError, stage
from udfs.uris import has_scheme, has_userinfo, redact


def source_for(uri: str, endpoint: str | None = None, region: str | None = None) -> Source:
    """The source a URI or path names: ``oss://bucket/prefix``, a ``file:`` URI or a directory.
    ``endpoint`` and ``region`` say where an OSS bucket is (``oss_source``)."""
    if has_userinfo(uri):
        raise StagingError(f"source {redact(uri)}: keys do not go into a URI; set OSS_ACCESS_KEY_ID/"
                           "OSS_ACCESS_KEY_SECRET in the environment or use the instance's RAM role")
    if uri.startswith("oss://"):
        return OssSource(uri, endpoint, region=region)
    if has_scheme(uri) and not uri.startswith("file:"):
        raise StagingError(f"unsupported source {uri}: use oss://bucket/prefix or a directory")
    return DirSource(uri)


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code: 1 with a one-line error when staging fails, 4
    (``EXIT_RESOURCES``) with one line naming the path when the disk or a quota is full."""
    p = argparse.ArgumentParser(prog="python -m promptscore.tools.stage_model", description=__doc__.splitlines()[0])
    p.add_argument("source", help="oss://bucket/prefix/ or a directory")
    p.add_argument("dest", help="local directory to fill")
    p.add_argument("--endpoint", help="the bucket's OSS endpoint (default: one written into the URI, else "
                                      "--region's internal one, else OSS_ENDPOINT, else this node's region's)")
    p.add_argument("--region", help="the bucket's region, e.g. cn-shanghai: its internal endpoint is used")
    a = p.parse_args(argv)
    try:
        stage(source_for(a.source, a.endpoint, a.region), a.dest, a.source)
    except StagingError as e:
        print(f"stage-model: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.filename is None:  # a failed write() names no file: the copy's is the one
            e.filename = a.dest
        got = classify(e)
        if got is None:
            raise
        print(f"stage-model: error: {got.line}", file=sys.stderr)
        return got.code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
