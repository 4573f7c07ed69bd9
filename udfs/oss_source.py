"""A model directory in OSS as a staging source (``udfs.staging``), read with oss2.

Credentials come from the environment (``OSS_ACCESS_KEY_ID``/``OSS_ACCESS_KEY_SECRET``/
``OSS_SESSION_TOKEN``, or the ``ALIBABA_CLOUD_*`` names) or else from the ECS instance's RAM role
(``udfs.ecs_metadata``); they are never arguments and never printed. The endpoint is the
``endpoint`` argument, ``OSS_ENDPOINT``, or the internal endpoint of the instance's region.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from udfs.ecs_metadata import Metadata, MetadataError, RoleCredentialsProvider
from udfs.staging import Entry, StagingError


class OssSource:
    """A prefix in an OSS bucket (resumable, multipart downloads)."""

    def __init__(self, uri: str, endpoint: str | None = None, threads: int = 8, metadata: Metadata | None = None):
        import oss2

        bucket, _, prefix = uri.removeprefix("oss://").partition("/")
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self.oss2 = oss2
        self.threads = threads
        metadata = metadata or Metadata()
        endpoint = endpoint or os.environ.get("OSS_ENDPOINT")
        try:
            if not endpoint:
                endpoint = f"https://oss-{metadata.get('region-id')}-internal.aliyuncs.com"
            provider = credentials_provider(oss2, metadata)
        except MetadataError as e:
            raise StagingError(f"{e}: pass --endpoint, or set OSS_ENDPOINT and OSS_ACCESS_KEY_ID/"
                               "OSS_ACCESS_KEY_SECRET in the environment") from None
        self.bucket = oss2.Bucket(oss2.ProviderAuth(provider), endpoint, bucket)

    def entries(self) -> list[Entry]:
        """Every object under the prefix (folder markers left out)."""
        out = []
        for obj in self.oss2.ObjectIterator(self.bucket, prefix=self.prefix, max_keys=1000):
            if not obj.key.endswith("/"):
                out.append(Entry(obj.key[len(self.prefix):], int(obj.size)))
        return sorted(out)

    def fetch(self, entry: Entry, target: Path) -> None:
        """Download one object, resuming from the checkpoints next to ``target``."""
        store = self.oss2.ResumableDownloadStore(root=str(target.parent / ".oss2-checkpoints"))
        self.oss2.resumable_download(self.bucket, self.prefix + entry.path, str(target), store=store,
                                     multiget_threshold=64 << 20, part_size=32 << 20, num_threads=self.threads)


def credentials_provider(oss2: Any, metadata: Metadata) -> Any:
    """Keys from the environment if set there, else the instance's RAM role (checked now, so that a
    missing role fails before any copy)."""
    env = os.environ
    for prefix in ("OSS_", "ALIBABA_CLOUD_"):
        key_id, secret = env.get(f"{prefix}ACCESS_KEY_ID"), env.get(f"{prefix}ACCESS_KEY_SECRET")
        if key_id and secret:
            token = env.get(f"{prefix}SESSION_TOKEN") or env.get(f"{prefix}SECURITY_TOKEN")
            return oss2.credentials.StaticCredentialsProvider(key_id, secret, token)
    provider = RoleCredentialsProvider(metadata)
    provider.get_credentials()
    return provider
