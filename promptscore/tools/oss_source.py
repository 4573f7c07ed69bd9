"""A model directory in OSS as a staging source (``udfs.staging``), read with oss2.

Credentials come from the environment (``OSS_ACCESS_KEY_ID``/``OSS_ACCESS_KEY_SECRET``/
``OSS_SESSION_TOKEN``, or the ``ALIBABA_CLOUD_*`` names) or else from the ECS instance's RAM role
(``promptscore.tools.ecs_metadata``); they are never arguments and never printed.

The endpoint is the bucket's, which is not always the node's: the first of

1. the ``endpoint`` argument (``--endpoint``);
2. an endpoint written into the URI, ``oss://bucket.oss-cn-shanghai-internal.aliyuncs.com/prefix``
   (bucket names have no dots, so everything after the first dot is the endpoint);
3. the ``region`` argument (``--region cn-shanghai``): that region's internal endpoint;
4. ``OSS_ENDPOINT``;
5. the internal endpoint of the node's own region (ECS metadata), for a bucket in the same region.

An internal endpoint is reached from ECS in the bucket's region, and from other regions only over
CEN or Express Connect ("Internal OSS endpoints and VIP ranges"); otherwise give the public one
(``--endpoint oss-cn-shanghai.aliyuncs.com``). A bucket reached through another region's endpoint
answers 403 AccessDenied with the right endpoint ("HTTP 403 status code"), which is reported as
one line saying what to pass.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from promptscore.tools.ecs_metadata import Metadata, MetadataError, RoleCredentialsProvider
from udfs.staging import Entry, StagingError

REGION = re.compile(r"[a-z]{2,}(?:-[a-z0-9]+)+")


def parse_uri(uri: str) -> tuple[str, str | None, str]:
    """``oss://bucket[.endpoint]/prefix`` as (bucket, endpoint or None, prefix)."""
    authority, _, prefix = uri.removeprefix("oss://").partition("/")
    bucket, _, endpoint = authority.partition(".")
    return bucket, endpoint or None, prefix


def region_endpoint(region: str) -> str:
    """The internal OSS endpoint of ``region`` (e.g. ``cn-hangzhou``)."""
    if not REGION.fullmatch(region):
        raise StagingError(f"--region {region!r} is not a region ID (such as cn-hangzhou)")
    return f"https://oss-{region}-internal.aliyuncs.com"


class OssSource:
    """A prefix in an OSS bucket (resumable, multipart downloads)."""

    def __init__(self, uri: str, endpoint: str | None = None, threads: int = 8, metadata: Metadata | None = None,
                 region: str | None = None):
        import oss2

        self.bucket_name, uri_endpoint, prefix = parse_uri(uri)
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self.oss2 = oss2
        self.threads = threads
        metadata = metadata or Metadata()
        endpoint = (endpoint or uri_endpoint or (region_endpoint(region) if region else None)
                    or os.environ.get("OSS_ENDPOINT"))
        try:
            if not endpoint:
                endpoint = region_endpoint(metadata.get("region-id"))
            provider = credentials_provider(oss2, metadata)
        except MetadataError as e:
            raise StagingError(f"{e}: pass --endpoint or --region, or set OSS_ENDPOINT and OSS_ACCESS_KEY_ID/"
                               "OSS_ACCESS_KEY_SECRET in the environment") from None
        if "://" not in endpoint:
            endpoint = f"https://{endpoint}"
        self.endpoint = endpoint
        self.bucket = oss2.Bucket(oss2.ProviderAuth(provider), endpoint, self.bucket_name)

    def entries(self) -> list[Entry]:
        """Every object under the prefix (folder markers left out)."""
        out = []
        try:
            for obj in self.oss2.ObjectIterator(self.bucket, prefix=self.prefix, max_keys=1000):
                if not obj.key.endswith("/"):
                    out.append(Entry(obj.key[len(self.prefix):], int(obj.size)))
        except self.oss2.exceptions.ServerError as e:
            right = (e.details or {}).get("Endpoint")
            if e.status == 403 and right:
                raise StagingError(
                    f"bucket {self.bucket_name} is not reached through {self.endpoint}: OSS names {right}, so it is "
                    f"in another region than this endpoint's; write the endpoint into the URI "
                    f"(oss://{self.bucket_name}.{right}/{self.prefix}), or pass --region (internal endpoint: same "
                    "region, CEN or Express Connect) or --endpoint") from None
            raise
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
