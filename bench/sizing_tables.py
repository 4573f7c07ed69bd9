"""The mission's sizing, every step shown: converting 4 million files (400 GB) and scoring every
prompt in them, on stated clusters, from the rates measured in bench/RESULTS.md.

    python bench/sizing_tables.py [--parse-mb-s 21.0] [--h100-tokens-s-300 ...] [--h100-tokens-s-1k ...]

Prints Markdown to paste into bench/RESULTS.md. Every input is a flag with the measured value as
its default, so a new measurement updates the tables with one command.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from promptscore import sizing

FILES = 4_000_000
BYTES = 400 * 10**9
QWEN_1_5B = {"hidden_size": 1536, "num_hidden_layers": 28, "intermediate_size": 8960, "num_attention_heads": 12,
             "num_key_value_heads": 2}
LLAMA_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "num_attention_heads": 32,
            "num_key_value_heads": 8}


def convert_tables(a: argparse.Namespace) -> None:
    print("### Converting 4 million files (400 GB)\n")
    print(f"Inputs: {FILES:,} files, {BYTES / 1e9:,.0f} GB (mean {BYTES / FILES / 1e3:,.0f} KB); one core converts "
          f"{a.parse_mb_s} MB/s (read, parse and Parquet: the job's steady state); an OSS GET takes "
          f"{a.latency_ms} ms to "
          f"the first byte; listing {a.list_s} s (4,000 LIST pages of one flat prefix, page after page, at "
          f"{a.list_s / 4000 * 1000:.0f} ms); publishing copies each output file once, ~2 s per 256 MB copy, "
          "16 at a time.\n")
    print("| cluster | task slots (cores x tasks per core) | files in flight per task | bound | files/s | CPU busy | "
          "read | total | instance-hours |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    out_files = math.ceil(BYTES * 0.27 / (256 << 20))
    for name, nodes, vcpus, tasks, in_flight, limit in a.clusters:
        cores = nodes * vcpus
        est = sizing.convert_estimate(FILES, BYTES, a.list_s, a.parse_mb_s * 1e6, cores, tasks, a.latency_ms,
                                      max_requests_per_s=limit, output_files=out_files, copy_s_per_file=2.0,
                                      files_in_flight=in_flight)
        hours = (nodes + 1) * est.wall_s / 3600  # + the master node
        # The share of each core's conversion rate that the run uses: below 100% the cores wait.
        busy = est.files_per_s_per_core / (a.parse_mb_s * 1e6 / (BYTES / FILES))
        print(f"| {name}: {nodes} x {vcpus} vCPU | {cores} x {tasks} | {in_flight} | {est.bound} | "
              f"{est.files_per_s_per_core * cores:,.0f} | {busy:.0%} | {sizing.human_seconds(est.read_s)} | "
              f"{sizing.human_seconds(est.wall_s)} | {hours:.1f} |")
    print()


def score_tables(a: argparse.Namespace) -> None:
    prompts = int(BYTES / a.line_bytes)
    print("### Scoring every prompt\n")
    print(f"Prompts: 400 GB / {a.line_bytes:,} bytes per JSONL line (a ~1,000-character prompt and its "
          f"fields) = {prompts / 1e6:,.0f} million prompts of ~{a.tokens} tokens (~1,000 characters: 250-400 "
          f"tokens in English with a Qwen2.5 or Llama-3 tokenizer) = {prompts * a.tokens / 1e9:,.0f} billion "
          "tokens.\n")
    for label, cfg in (("Qwen2.5-1.5B-shaped reward model", QWEN_1_5B),
                       ("Llama-3.1-8B-shaped (Skywork-Reward-Llama-3.1-8B)", LLAMA_8B)):
        shape = sizing.ModelShape.from_config(cfg)
        print(f"**{label}** ({shape.params / 1e9:.2f}B weights per token):\n")
        print("| GPU | how | tokens/s per GPU | GPU-hours | 8 GPUs: wall-clock | physical limit (GPU-hours) |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        lengths = [a.tokens] * 8
        for gpu in ("H100", "H20", "A100", "L20", "A10"):
            measured = a.h100_tokens_s if gpu == "H100" and cfg is QWEN_1_5B and a.h100_tokens_s else None
            est = sizing.score_estimate(prompts, lengths, shape, gpu, gpus=8, calibrated_tokens_per_s=measured)
            how = ("measured" if measured
                   else "FLOPs-scaled from the H100" if gpu != "H100" else "FLOPs model, H100 MFU")
            print(f"| {gpu} | {how} | {est['tokens_per_s_per_gpu']:,.0f} | {est['gpu_hours']:,.0f} | "
                  f"{est['wall']} | {est['physical_limit_gpu_hours']:,.0f} |")
        print()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parse-mb-s", type=float, default=21.0,
                   help="one core's conversion rate, MB/s: the job's steady state (bench/RESULTS.md)")
    p.add_argument("--latency-ms", type=float, default=30.0)
    p.add_argument("--list-s", type=float, default=200.0)
    p.add_argument("--line-bytes", type=int, default=1200)
    p.add_argument("--tokens", type=int, default=300)
    p.add_argument("--h100-tokens-s", type=float, default=0.0,
                   help="measured tokens/s of one H100 at --tokens (1.5B model); 0: use the FLOPs model")
    a = p.parse_args()
    # (name, nodes, vCPUs per node, task slots per vCPU, files in flight per task, OSS requests/s allowed)
    a.clusters = [
        ("profile as shipped (2 executors x 5 slots, read-ahead 7)", 2, 5, 1, 7, 2_000),
        ("the profile before (2 executors x 8 slots, read-ahead 4)", 2, 8, 1, 4, 2_000),
        ("before read-ahead: 8 executors x 8 slots, Spark's reader", 8, 8, 1, 1, 2_000),
        ("4 x ecs.g7.4xlarge, read-ahead 16, random key prefixes", 4, 16, 1, 16, 10_000),
        ("16 x ecs.g7.4xlarge, 4 slots per vCPU, Spark's reader, random key prefixes", 16, 16, 4, 1, 10_000),
    ]
    convert_tables(a)
    score_tables(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
