"""How long a run will take: the models behind the jobs' ``--plan`` estimates.

Pure functions of measured rates and stated cluster sizes, so that an estimate can be checked by
hand and tested without a cluster.

The convert model. A file costs one request's latency to open, its bytes over the stream, and its
parse on a core. With ``tasks_per_core`` tasks on each core, each keeping ``files_in_flight``
files' requests open at once (the read-ahead reader; 1 for Spark's text source, which opens a
task's files one after another), waits overlap with parsing, so a core converts

    min(tasks_per_core x files_in_flight / per_file_s, parse_bytes_per_s / mean_file_bytes)   files per second

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
    files_in_flight: int
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
                     output_files: int = 1, copy_s_per_file: float = 0.0,
                     files_in_flight: int = 1) -> ConvertEstimate:
    """Expected seconds to convert ``files`` files of ``total_bytes`` on ``cores`` cores.

    ``parse_bytes_per_s`` is one core's parse-and-write rate (measured on a sample);
    ``request_latency_ms`` the object store's time to first byte; ``max_requests_per_s`` the
    store's request-rate limit for the account or prefix; ``copy_s_per_file`` what publishing one
    output file costs (a server-side copy on object stores, 0 on HDFS and local disk);
    ``files_in_flight`` the files each task has requested ahead (1 without read-ahead).
    """
    cores = max(1, cores)
    tasks_per_core = max(1, tasks_per_core)
    mean = total_bytes / files if files else 0.0
    latency = request_latency_ms / 1000.0 * requests_per_file
    per_file_s = latency + (mean / stream_bytes_per_s if stream_bytes_per_s else 0.0) + \
        (mean / parse_bytes_per_s if parse_bytes_per_s else 0.0)
    files_in_flight = max(1, files_in_flight)
    by_latency = tasks_per_core * files_in_flight / per_file_s if per_file_s else math.inf
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
        files=files, bytes=total_bytes, cores=cores, tasks_per_core=tasks_per_core, files_in_flight=files_in_flight,
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


# ---------------------------------------------------------------------------------------------
# Scoring

# Dense bf16 (fp16 where the card has no bf16) tensor-core peak of each GPU's data sheet, FLOP/s.
GPU_PEAK_FLOPS = {
    "H100": 989e12,   # SXM
    "H800": 989e12,   # SXM
    "H200": 989e12,
    "H20": 148e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L20": 119.5e12,
    "A10": 125e12,
    "V100": 125e12,   # fp16
    "T4": 65e12,      # fp16
}
# Share of the peak that scoring reached on a measured GPU, by prompt length in tokens: the score
# job's own rate (rows written per second, Spark included) on one H100 with a 1.5B-shaped model in
# bf16 (bench/RESULTS.md, "Sizing"). Lengths in between are interpolated linearly, outside held at
# the nearest point.
MEASURED_MFU = {"H100": [(300, 0.463), (1000, 0.495)]}


@dataclass(frozen=True)
class ModelShape:
    """What a reward model's FLOPs per prompt depend on."""

    params: float
    layers: int
    hidden: int

    @classmethod
    def from_config(cls, config: dict) -> "ModelShape":
        """The shape of a Hugging Face ``config.json``: the weights that multiply every token
        (attention and MLP of every layer; the embedding is a lookup, not a matmul)."""
        hidden = int(config.get("hidden_size") or config.get("d_model") or 0)
        layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
        inter = int(config.get("intermediate_size") or 4 * hidden)
        heads = int(config.get("num_attention_heads") or 1)
        kv = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or (hidden // heads if heads else 0))
        attn = hidden * head_dim * (heads + 2 * kv) + heads * head_dim * hidden
        mlp = 3 * hidden * inter  # gated MLP (Llama, Qwen)
        params = layers * (attn + mlp)
        return cls(float(params), layers, hidden)


def prompt_flops(shape: ModelShape, tokens: float) -> float:
    """FLOPs of one forward pass over a prompt: 2 x weights x tokens, plus causal attention
    (2 x layers x hidden x tokens^2)."""
    return 2 * shape.params * tokens + 2 * shape.layers * shape.hidden * tokens * tokens


def mfu_at(gpu: str, tokens: float) -> tuple[float, str]:
    """The share of peak to expect at this prompt length, and where it comes from."""
    points = MEASURED_MFU.get(gpu)
    source = f"measured on {gpu}"
    if not points:
        points, source = MEASURED_MFU["H100"], f"measured on H100, assumed for {gpu}"
    points = sorted(points)
    if tokens <= points[0][0]:
        return points[0][1], source
    if tokens >= points[-1][0]:
        return points[-1][1], source
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= tokens <= x1:
            return y0 + (y1 - y0) * (tokens - x0) / (x1 - x0), source
    return points[-1][1], source


def score_estimate(rows: int, token_lengths: list[int], shape: ModelShape, gpu: str = "H100", gpus: int = 1,
                   calibrated_tokens_per_s: float | None = None) -> dict:
    """GPU-hours and wall-clock time to score ``rows`` prompts whose token lengths are sampled by
    ``token_lengths``, on ``gpus`` GPUs of kind ``gpu`` (``score_estimate_from_sums`` over the
    sample's sums scaled to ``rows``)."""
    n = len(token_lengths)
    scale = rows / n if n else 0.0
    return score_estimate_from_sums(rows, sum(token_lengths) * scale, sum(t * t for t in token_lengths) * scale,
                                    shape, gpu, gpus, calibrated_tokens_per_s)


def score_estimate_from_sums(rows: int, tokens: float, tokens_sq: float, shape: ModelShape, gpu: str = "H100",
                             gpus: int = 1, calibrated_tokens_per_s: float | None = None) -> dict:
    """GPU-hours and wall-clock time to score ``rows`` prompts of ``tokens`` tokens in all (and
    ``tokens_sq``, the sum of each prompt's length squared: the attention term of the FLOPs), on
    ``gpus`` GPUs of kind ``gpu``; with the physical limit (every GPU at its data-sheet peak)
    beside it. The rate is the FLOPs model (peak x the MFU measured at the mean prompt length,
    ``MEASURED_MFU``) unless ``calibrated_tokens_per_s`` (one engine, measured on this data) is
    given."""
    if gpu not in GPU_PEAK_FLOPS:
        raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(GPU_PEAK_FLOPS)}")
    flops = 2 * shape.params * tokens + 2 * shape.layers * shape.hidden * tokens_sq
    peak = GPU_PEAK_FLOPS[gpu]
    mean = tokens / rows if rows else 0.0
    mfu, source = mfu_at(gpu, mean)
    if calibrated_tokens_per_s:
        per_gpu_s = tokens / calibrated_tokens_per_s
        source = f"calibrated: {calibrated_tokens_per_s:,.0f} tokens/s on one engine"
    else:
        per_gpu_s = flops / (peak * mfu) if peak and mfu else 0.0
    limit_s = flops / peak if peak else 0.0
    gpus = max(1, gpus)
    return {
        "rows": rows, "tokens": int(tokens), "mean_tokens": round(mean, 1), "gpu": gpu, "gpus": gpus,
        "model_params": shape.params, "flops": flops, "peak_flops_per_gpu": peak,
        "expected_mfu": round(mfu, 3) if not calibrated_tokens_per_s else None, "rate_source": source,
        "gpu_hours": round(per_gpu_s / 3600, 3), "wall_s": round(per_gpu_s / gpus, 1),
        "wall": human_seconds(per_gpu_s / gpus),
        "physical_limit_gpu_hours": round(limit_s / 3600, 3), "physical_limit_wall_s": round(limit_s / gpus, 1),
        "physical_limit_wall": human_seconds(limit_s / gpus),
        "tokens_per_s_per_gpu": round(tokens / per_gpu_s, 1) if per_gpu_s else None,
    }


def gpu_kind(device: str | None) -> str | None:
    """The ``GPU_PEAK_FLOPS`` key a device name (``torch.cuda.get_device_name``, e.g. ``NVIDIA
    H100 80GB HBM3``) names, or None (``cpu``, an unknown card). A key counts only as a whole
    model name (``A10`` is not ``A100``, ``H20`` not ``H200``); the longest match wins."""
    import re

    if not device:
        return None
    found = [k for k in GPU_PEAK_FLOPS if re.search(rf"(?<![A-Za-z0-9]){re.escape(k)}(?![0-9A-Za-z])", device)]
    return max(found, key=len) if found else None
