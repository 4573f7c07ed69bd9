"""How long a run will take: the models behind the jobs' ``--plan`` estimates.

Pure functions of measured rates and stated cluster sizes, so that an estimate can be checked by
hand and tested without a cluster.

The convert model. Each task reads its files one after another: a file costs one request's
latency to open, its bytes over the stream, and its parse on a core. With ``tasks_per_core``
tasks on each core, waits overlap with other tasks' parsing, so a core converts

    min(tasks_per_core / per_file_s, parse_bytes_per_s / mean_file_bytes)   files per second

where ``per_file_s = latency + bytes / stream_bandwidth + bytes / parse_rate``. The cluster's
rate is that times its cores, capped by the object store's request rate. Listing (measured) and
the per-object publish copies come on top.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class ConvertEstimate:
    """A convert run's expected wall-clock time on a stated cluster, and what bounds it."""

    files: int
    bytes: int
    cores: int
    tasks_per_core: int
    request_latency_ms: float
    parse_mb_s_per_core: float
    files_per_s_per_core: float
    bound: str  # cpu | latency | request_rate
    list_s: float
    read_s: float
    publish_s: float
    wall_s: float

    def as_dict(self) -> dict:
        d = asdict(self)
        d["wall"] = human_seconds(self.wall_s)
        return d


def convert_estimate(files: int, total_bytes: int, list_s: float, parse_bytes_per_s: float, cores: int,
                     tasks_per_core: int = 1, request_latency_ms: float = 0.0, requests_per_file: float = 1.0,
                     stream_bytes_per_s: float = 50e6, max_requests_per_s: float = 10_000.0,
                     output_files: int = 1, copy_s_per_file: float = 0.0) -> ConvertEstimate:
    """Expected seconds to convert ``files`` files of ``total_bytes`` on ``cores`` cores.

    ``parse_bytes_per_s`` is one core's parse-and-write rate (measured on a sample);
    ``request_latency_ms`` the object store's time to first byte; ``max_requests_per_s`` the
    store's request-rate limit for the account or prefix; ``copy_s_per_file`` what publishing one
    output file costs (a server-side copy on object stores, 0 on HDFS and local disk).
    """
    cores = max(1, cores)
    tasks_per_core = max(1, tasks_per_core)
    mean = total_bytes / files if files else 0.0
    latency = request_latency_ms / 1000.0 * requests_per_file
    per_file_s = latency + (mean / stream_bytes_per_s if stream_bytes_per_s else 0.0) + \
        (mean / parse_bytes_per_s if parse_bytes_per_s else 0.0)
    by_latency = tasks_per_core / per_file_s if per_file_s else math.inf
    by_cpu = parse_bytes_per_s / mean if mean else math.inf
    per_core = min(by_latency, by_cpu)
    cluster = per_core * cores
    by_requests = max_requests_per_s / requests_per_file if requests_per_file else math.inf
    bound = "cpu" if by_cpu <= by_latency else "latency"
    if by_requests < cluster:
        cluster, bound = by_requests, "request_rate"
    read_s = files / cluster if files and cluster not in (0, math.inf) else 0.0
    # Publishing moves 16 files at a time.
    publish_s = math.ceil(output_files / 16) * copy_s_per_file
    return ConvertEstimate(
        files=files, bytes=total_bytes, cores=cores, tasks_per_core=tasks_per_core,
        request_latency_ms=request_latency_ms, parse_mb_s_per_core=round(parse_bytes_per_s / 1e6, 2),
        files_per_s_per_core=round(cluster / cores, 2) if cluster != math.inf else 0.0, bound=bound,
        list_s=round(list_s, 3), read_s=round(read_s, 1), publish_s=round(publish_s, 1),
        wall_s=round(list_s + read_s + publish_s, 1))


def human_seconds(s: float) -> str:
    """``3725`` -> ``1h02m``; ``95`` -> ``1m35s``; ``4.2`` -> ``4.2s``."""
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
