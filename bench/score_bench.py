"""Benchmark and accuracy check of the score job against bare vLLM and transformers, in one run.

    python bench/score_bench.py all --work /tmp/sb --out OUT          (what `make bench-score` runs)

On one GPU, each step a fresh process so that every engine gets the whole GPU:

1. ``prepare``: a random-weight model of Qwen2.5-Coder-1.5B's shape (bf16) and the tiny model,
   and N prompts (default 16,384) of 256-1,792 tokens (uniform) in 4 Parquet files.
2. ``vllm``: bare vLLM, ``LLM(runner="pooling").classify(...)`` on token ids or texts (bf16, fp8),
   timed after a warm-up; scores saved.
3. ``spark``: this job (``run_score`` in a local-mode SparkSession, one task per file) on the same
   Parquet, timed on a second run so the engine start is not counted, as it is not for bare vLLM.
4. ``transformers``: the transformers engine (length-sorted padded batches) on a subset.
5. ``accuracy``: vLLM bf16 against transformers fp32 on the tiny and the 1.5B model; ``probe``:
   transformers fp32 on the GPU against the CPU, with and without its attention-kernel guard.

``report`` turns the JSON files into the Markdown tables of bench/RESULTS.md. ``spark --master
"local-cluster[2,1,16384]" --gpus 1`` runs the job on two executors with one GPU each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16, from the data sheet


# ---------------------------------------------------------------------------------------------
# helpers


def load_prompts(path: Path, limit: int | None = None) -> list[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["id", "prompt"]).sort_by("id")
    texts = table.column("prompt").to_pylist()
    return texts[:limit] if limit else texts


def flops_per_prompt(config: dict, n_tokens: int) -> float:
    """Forward FLOPs of one prompt: 2 x (weights used per token) x tokens + causal attention."""
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = d // heads
    per_layer = d * d * 2 + d * kv * head_dim * 2 + 3 * d * config["intermediate_size"]
    return 2 * layers * per_layer * n_tokens + 2 * layers * d * n_tokens * n_tokens


def write_json(path: str | Path, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, default=str))
    print(json.dumps({k: v for k, v in data.items() if not isinstance(v, list)}, default=str), flush=True)


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = math.sqrt(sum((x - ma) ** 2 for x in ra))
    vb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (va * vb)


# ---------------------------------------------------------------------------------------------
# steps


def prepare(a) -> None:
    from transformers import AutoTokenizer

    from promptscore.tools import tiny_model

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "tiny" / "config.json").exists():
        tiny_model.build(work / "tiny")
    if not a.skip_big and not (work / "qwen1.5b" / "config.json").exists():
        t0 = time.monotonic()
        tiny_model.build(work / "qwen1.5b", shape="qwen2.5-1.5b", dtype="bfloat16", device=a.device)
        print(f"built the 1.5B model in {time.monotonic() - t0:.0f} s", flush=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    from promptscore.tools.sample_data import _prompt

    tok = AutoTokenizer.from_pretrained(work / "tiny")
    rng = random.Random(0)
    pool = tok(" ".join(_prompt(rng) for _ in range(4000)))["input_ids"]
    texts, lengths = [], []
    for _ in range(a.prompts):
        n = rng.randint(a.min_tokens, a.max_tokens)
        start = rng.randrange(0, len(pool) - n)
        text = tok.decode(pool[start:start + n])
        texts.append(text)
        lengths.append(len(tok(text)["input_ids"]))
    # Several files, as the convert job writes them: Spark reads one per task, with no shuffle.
    out = work / a.name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    table = pa.table({"id": list(range(a.prompts)), "prompt": texts})
    per_file = -(-a.prompts // a.files)
    for k in range(a.files):
        pq.write_table(table.slice(k * per_file, per_file), out / f"part-{k:05d}.parquet")
    print(f"{a.prompts} prompts, {sum(lengths):,} tokens (mean {sum(lengths) / len(lengths):.0f}, "
          f"min {min(lengths)}, max {max(lengths)})", flush=True)


def bare_vllm(a) -> None:
    from vllm import LLM, PoolingParams

    texts = load_prompts(Path(a.prompts), a.limit)
    kwargs = dict(model=a.model, runner="pooling", max_model_len=a.max_model_len, dtype=a.dtype,
                  max_num_batched_tokens=a.max_num_batched_tokens, max_num_seqs=a.max_num_seqs,
                  enable_prefix_caching=False, gpu_memory_utilization=0.9)
    if a.quantization:
        kwargs["quantization"] = a.quantization
    t0 = time.monotonic()
    llm = LLM(**kwargs)
    start_s = time.monotonic() - t0
    params = PoolingParams(use_activation=False)
    prompts: list = texts
    tokenize_s = None
    if a.token_ids:  # tokenized up front, as the job does, so only the engine is timed
        from vllm.inputs import TokensPrompt

        from udfs.prompts import Prompter

        t0 = time.monotonic()
        encoded = Prompter(a.model, "raw", a.max_model_len).encode(texts)
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in encoded.ids]
        tokenize_s = time.monotonic() - t0
    llm.classify(prompts[:256], pooling_params=params, use_tqdm=False)  # warm-up
    t0 = time.monotonic()
    outs = llm.classify(prompts, pooling_params=params, use_tqdm=False)
    secs = time.monotonic() - t0
    tokens = [len(o.prompt_token_ids) for o in outs]
    config = json.loads((Path(a.model) / "config.json").read_text())
    flops = sum(flops_per_prompt(config, n) for n in tokens)
    write_json(a.json, {
        "what": f"bare vLLM {a.quantization or a.dtype}, " + ("token ids" if a.token_ids else "texts"),
        "model": a.model, "prompts": len(texts), "tokenize_s": tokenize_s,
        "tokens": sum(tokens), "engine_start_s": start_s, "seconds": secs,
        "prompts_per_s": len(texts) / secs, "tokens_per_s": sum(tokens) / secs,
        "mfu": flops / secs / PEAK_BF16, "scores": [float(o.outputs.probs[0]) for o in outs],
    })
    llm.llm_engine.engine_core.shutdown()
    # A bare LLM's threads can still abort the interpreter's exit ("terminate called without an
    # active exception"); the results are written, so leave now.
    sys.stdout.flush()
    os._exit(0)


def transformers_run(a) -> None:
    from udfs.engines import EngineSpec, TransformersEngine
    from udfs.prompts import Prompter

    texts = load_prompts(Path(a.prompts), a.limit)
    t0 = time.monotonic()
    engine = TransformersEngine(EngineSpec(model_dir=a.model, device=a.device, dtype=a.dtype,
                                           batch_tokens=a.batch_tokens))
    start_s = time.monotonic() - t0
    ids = Prompter(a.model, "raw", a.max_model_len).encode(texts).ids
    engine.score(ids[:64])  # warm-up
    import torch

    sync = torch.cuda.synchronize if engine.device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.monotonic()
    scores = engine.score(ids)
    sync()
    secs = time.monotonic() - t0
    tokens = sum(len(r) for r in ids)
    config = json.loads((Path(a.model) / "config.json").read_text())
    flops = sum(flops_per_prompt(config, len(r)) for r in ids)
    write_json(a.json, {
        "what": f"transformers {a.dtype}, length-sorted batches of <= {a.batch_tokens} padded tokens",
        "model": a.model, "prompts": len(texts), "tokens": tokens, "engine_start_s": start_s, "seconds": secs,
        "prompts_per_s": len(texts) / secs, "tokens_per_s": tokens / secs, "mfu": flops / secs / PEAK_BF16,
        "scores": scores,
    })


def spark_run(a) -> None:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from promptscore.io.output import OutputSpec
    from promptscore.score.options import ScoreOptions
    from promptscore.score.run import run_score
    from udfs.engines import EngineSpec

    builder = (SparkSession.builder.master(a.master).appName("score-bench")
               .config("spark.log.level", "WARN").config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.memory", "8g")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(a.batch_rows)))
    if a.gpus:
        claim = ROOT / "bench" / "gpu_claim.sh"
        shutil.rmtree("/tmp/promptscore-gpu-claims", ignore_errors=True)
        builder = (builder.config("spark.worker.resource.gpu.amount", str(a.gpus))
                   .config("spark.worker.resource.gpu.discoveryScript", str(claim))
                   .config("spark.executor.resource.gpu.amount", str(a.gpus))
                   .config("spark.task.resource.gpu.amount", str(a.gpus))
                   .config("spark.scheduler.minRegisteredResourcesRatio", "1.0")
                   .config("spark.locality.wait", "0"))
    spark = builder.getOrCreate()
    work = Path(a.work)
    # The warm-up runs as many tasks as the timed run, so that every Python worker has started
    # (and imported pandas and the tokenizer) before the clock starts, as bare vLLM's has.
    tasks = a.partitions or len(list(Path(a.prompts).glob("*.parquet"))) or 1
    runs = [("warm-up", a.warmup, tasks), ("timed", None, a.partitions)]
    if a.one_task_too:
        runs.append(("timed-one-task", None, 1))
    runs += [(f"timed-{Path(more).name}", None, a.partitions) for more in a.more_prompts or []]
    results = {}
    for name, limit, partitions in runs:
        src = work / f"spark-in-{name}"
        if limit:
            import pyarrow.parquet as pq

            shutil.rmtree(src, ignore_errors=True)
            src.mkdir(parents=True)
            pq.write_table(pq.read_table(a.prompts).sort_by("id").slice(0, limit), src / "part-0.parquet")
        else:
            src = Path(a.prompts) if not name.startswith("timed-prompts") else work / name.removeprefix("timed-")
        out = work / f"spark-out-{name}"
        shutil.rmtree(out, ignore_errors=True)
        engine = EngineSpec(model_dir=a.model, backend=a.backend, dtype=a.dtype, quantization=a.quantization,
                            max_model_len=a.max_model_len, max_num_batched_tokens=a.max_num_batched_tokens,
                            max_num_seqs=a.max_num_seqs)
        opts = ScoreOptions(inputs=[str(src)], out=OutputSpec(str(out), mode="overwrite"), engine=engine,
                                  partitions=partitions, max_bad_fraction=1.0, cache_dir=a.cache_dir)
        t0 = time.monotonic()
        report = run_score(spark, opts)
        report["wall_s"] = time.monotonic() - t0
        results[name] = report
        print(f"{name}: {report['summary']}", flush=True)
    import pyarrow.dataset as ds

    table = ds.dataset(str(work / "spark-out-timed"), ignore_prefixes=["_", "."]).to_table(columns=["id", "score"])
    order = sorted(zip(table.column("id").to_pylist(), table.column("score").to_pylist()))
    config = json.loads((Path(a.model) / "config.json").read_text())

    def entry(r: dict, what: str) -> dict:
        write_s = r["phase_s"]["write"]
        return {
            "what": what, "model": a.model, "prompts": r["rows"], "tokens": r["tokens"], "seconds": write_s,
            "prompts_per_s": r["rows"] / write_s, "tokens_per_s": r["tokens"] / write_s,
            "mfu_estimate": r["tokens"] / write_s * flops_per_prompt(config, 1024) / 1024 / PEAK_BF16,
            "engine_busy_s": r["engine_busy_s"], "engine_idle_s": r["engine_idle_s"],
            "mean_tokens": r["tokens"] / max(1, r["rows"]),
            "engines": r["engines"], "tasks": r["tasks"],
            "report": {k: v for k, v in r.items() if k not in ("tasks", "score_histogram")},
        }

    what = f"this job, {a.master}" + (f", {a.gpus} GPU per executor" if a.gpus else "")
    data = entry(results["timed"], f"{what}, {len(results['timed']['tasks'])} tasks")
    data["engine_start_s"] = results["warm-up"]["engine_start_s"]
    data["scores"] = [s for _, s in order]
    if "timed-one-task" in results:
        data["one_task"] = entry(results["timed-one-task"], f"{what}, 1 task (one GPU busy)")
    data["more"] = {name.removeprefix("timed-"): entry(r, f"{what}, {name.removeprefix('timed-')}")
                    for name, r in results.items() if name.startswith("timed-prompts")}
    write_json(a.json, data)
    spark.stop()


def accuracy(a) -> None:
    """transformers fp32 on the same rows as a saved vLLM run: diffs and rank correlation."""
    from udfs.engines import EngineSpec, TransformersEngine
    from udfs.prompts import Prompter

    vllm_run = json.loads(Path(a.vllm_json).read_text())
    texts = load_prompts(Path(a.prompts), a.limit)
    engine = TransformersEngine(EngineSpec(model_dir=a.model, device="cuda", dtype="float32", batch_tokens=16384))
    ref = engine.score(Prompter(a.model, "raw", a.max_model_len).encode(texts).ids)
    got = vllm_run["scores"][: len(ref)]
    diffs = sorted(abs(x - y) for x, y in zip(got, ref))
    write_json(a.json, {
        "what": f"{vllm_run['what']} vs transformers fp32", "model": a.model, "rows": len(ref),
        "max_abs_diff": diffs[-1], "median_abs_diff": diffs[len(diffs) // 2],
        "score_std": (sum((x - sum(ref) / len(ref)) ** 2 for x in ref) / len(ref)) ** 0.5,
        "spearman": spearman(got, ref),
    })


def probe(a) -> None:
    """Where transformers fp32 on the GPU parts from the CPU: padded batches with and without
    the attention-kernel guard of ``TransformersEngine``, against CPU fp32 and vLLM."""
    from udfs.engines import EngineSpec, TransformersEngine
    from udfs.prompts import Prompter

    texts = load_prompts(Path(a.prompts), a.limit)
    ids = Prompter(a.model, "raw", a.max_model_len).encode(texts).ids
    spec = dict(model_dir=a.model, dtype="float32", batch_tokens=16384)
    cpu = TransformersEngine(EngineSpec(device="cpu", **spec)).score(ids)
    gpu = TransformersEngine(EngineSpec(device="cuda", **spec))
    guarded = gpu.score(ids)
    guard, gpu.sdpa_backends = gpu.sdpa_backends, None
    plain = gpu.score(ids)
    width = {i: w for rows, w in gpu.padded_batches([len(x) for x in ids]) for i in rows}
    vllm_scores = json.loads(Path(a.vllm_json).read_text())["scores"][: len(ids)]

    def compare(x: list[float], y: list[float]) -> dict:
        d = [abs(p - q) for p, q in zip(x, y)]
        worst = max(range(len(d)), key=d.__getitem__)
        return {"max_abs_diff": d[worst], "median_abs_diff": sorted(d)[len(d) // 2],
                "rows_over_0.1": sum(v > 0.1 for v in d), "spearman": spearman(x, y),
                "worst_row": worst, "worst_row_tokens": len(ids[worst]), "worst_row_padded_width": width[worst]}

    write_json(a.json, {
        "what": "transformers fp32 on the GPU, padded batches, against transformers fp32 on the CPU",
        "model": a.model, "rows": len(ids), "guard": [str(b) for b in guard or []],
        "gpu_unguarded_vs_cpu": compare(plain, cpu), "gpu_guarded_vs_cpu": compare(guarded, cpu),
        "vllm_bf16_vs_cpu": compare(vllm_scores, cpu), "vllm_bf16_vs_gpu_guarded": compare(vllm_scores, guarded),
        "padded_widths_mod_32_eq_1": sorted({w for w in width.values() if w % 32 == 1}),
    })


def engine_start(a) -> None:
    """(a) One engine start through the engine host, as a Spark worker starts one, with its
    compile caches in ``--cache-dir``: run twice in fresh processes on an empty cache, the first
    start is cold, the second warm."""
    from udfs import engine_client
    from udfs.engines import EngineSpec

    spec = EngineSpec(model_dir=a.model, backend=a.backend, dtype=a.dtype, quantization=a.quantization,
                      max_model_len=a.max_model_len, device=a.device)
    t0 = time.monotonic()
    client = engine_client.connect(spec, None, 1800.0, a.cache_dir)
    wall = time.monotonic() - t0
    info = client.stats()
    client.score([[1, 2, 3]])
    client.shutdown()
    cache = Path(info["cache_dir"] or a.cache_dir)
    write_json(a.json, {
        "what": f"engine start, {a.label}", "model": a.model, "backend": a.backend, "device": info["device"],
        "wall_s": wall, "engine_start_s": info["engine_start_s"], "cache_warm": info["cache_warm"],
        "engine_start_parts": info.get("engine_start_parts"),
        "cache_dir": str(cache), "cache_mb": sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 1e6,
    })


def _session(a, name: str):
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master(a.master).appName(name)
            .config("spark.log.level", "WARN").config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.memory", "8g")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(a.batch_rows)).getOrCreate())


def compare_run(a) -> None:
    """(c) The job's ``--compare-sample`` check: the options (e.g. ``--quantization fp8``) against
    the reference (the same without quantization, ``--compare-dtype``) on a fixed sample."""
    from promptscore.io.output import OutputSpec
    from promptscore.score.options import ScoreOptions
    from promptscore.score.run import run_score
    from udfs.engines import EngineSpec

    spark = _session(a, "score-bench-compare")
    engine = EngineSpec(model_dir=a.model, backend=a.backend, dtype=a.dtype, quantization=a.quantization,
                        max_model_len=a.max_model_len, max_num_batched_tokens=a.max_num_batched_tokens,
                        max_num_seqs=a.max_num_seqs, device=a.device)
    opts = ScoreOptions(inputs=[a.prompts], out=OutputSpec(str(Path(a.json).with_suffix(".out"))),
                              engine=engine, cache_dir=a.cache_dir, compare_sample=a.sample,
                              compare_dtype=a.compare_dtype)
    report = run_score(spark, opts)
    print(report["summary"], flush=True)
    write_json(a.json, {"what": f"--compare-sample {a.sample}", **report})
    spark.stop()


def run_step(argv: list[str], log: Path, env: dict | None = None) -> None:
    print(f"$ {' '.join(argv)}", flush=True)
    with open(log, "a") as f:
        proc = subprocess.run([sys.executable, __file__, *argv], stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        print(Path(log).read_text()[-4000:])
        raise SystemExit(f"step failed: {argv[0]}")


def engine_logs(runtime: Path, out: Path, name: str) -> None:
    """Keep the engine hosts' logs and say whether each shut its engine down cleanly."""
    time.sleep(3)  # the hosts notice their JVM is gone within a second
    logs = {p.name: p.read_text(errors="replace") for p in runtime.glob("*.log")}
    for log_name, text in logs.items():
        clean = "shutting down" in text and "terminate called" not in text
        print(f"  {log_name}: clean shutdown {clean}", flush=True)
        (out / f"{name}-{log_name}").write_text(text[-20000:])


def run_all(a) -> None:
    work, out = Path(a.work), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runtime = work / "runtime"
    os.environ["PROMPTSCORE_RUNTIME_DIR"] = str(runtime)
    log = out / "bench-score.log"
    big, tiny, prompts = str(work / "qwen1.5b"), str(work / "tiny"), str(work / "prompts")
    common = ["--prompts", prompts, "--max-model-len", "2048"]
    spark = ["spark", "--model", big, *common, "--work", str(work)]
    steps = {
        "prepare": ["prepare", "--work", str(work), "--prompts", str(a.prompts), "--device", "cuda"],
        "vllm-bf16": ["vllm", "--model", big, *common, "--dtype", "bfloat16", "--json", str(out / "vllm-bf16.json")],
        "spark": [*spark, "--master", a.master, "--json", str(out / "spark.json")],
        "spark-1gpu": [*spark, "--master", "local-cluster[1,1,16384]", "--gpus", "1",
                       "--json", str(out / "spark-1gpu.json")],
        "spark-2gpu": [*spark, "--master", "local-cluster[2,1,16384]", "--gpus", "1", "--partitions", "8",
                       "--one-task-too", "--json", str(out / "spark-2gpu.json")],
        "vllm-ids": ["vllm", "--model", big, *common, "--dtype", "bfloat16", "--token-ids",
                     "--json", str(out / "vllm-bf16-ids.json")],
        "vllm-fp8": ["vllm", "--model", big, *common, "--quantization", "fp8", "--token-ids",
                     "--json", str(out / "vllm-fp8.json")],
        "transformers": ["transformers", "--model", big, *common, "--limit", str(a.transformers_prompts),
                         "--dtype", "bfloat16", "--json", str(out / "transformers.json")],
        "accuracy-big": ["accuracy", "--model", big, *common, "--limit", "512", "--vllm-json",
                         str(out / "vllm-bf16-ids.json"), "--json", str(out / "accuracy-1.5b.json")],
        "vllm-tiny": ["vllm", "--model", tiny, *common, "--limit", "512", "--dtype", "bfloat16",
                      "--json", str(out / "vllm-tiny.json")],
        "accuracy-tiny": ["accuracy", "--model", tiny, *common, "--limit", "512", "--vllm-json",
                          str(out / "vllm-tiny.json"), "--json", str(out / "accuracy-tiny.json")],
        "probe-tiny": ["probe", "--model", tiny, *common, "--limit", "512", "--vllm-json",
                       str(out / "vllm-tiny.json"), "--json", str(out / "probe-tiny.json")],
    }
    for name in a.steps.split(","):
        t0 = time.monotonic()
        wait_for_engine_hosts(runtime)
        shutil.rmtree(runtime, ignore_errors=True)
        run_step(steps[name], log)
        if name.startswith("spark"):
            engine_logs(runtime, out, name)
        print(f"  {name} done in {time.monotonic() - t0:.0f} s", flush=True)
    report(a)


def wait_for_engine_hosts(runtime: Path, timeout_s: float = 300.0) -> None:
    """Wait until no engine host of an earlier step runs (one shuts down after its step ends, and
    holds the GPU and its lock file until then): the next step then starts on a free device. A
    host's command line names its spec file, which lies in ``runtime``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                    if b"udfs.engine_host" in cmdline and str(runtime).encode() in cmdline:
                        alive.append(proc.name)
                except OSError:
                    pass
        if not alive:
            return
        time.sleep(0.5)
    print(f"  engine hosts still running after {timeout_s:.0f} s: {', '.join(alive)}", flush=True)


def run_scale(a) -> None:
    """The device steps of scoring at scale, each a fresh process, JSON per step in ``--out``:
    ``prepare`` (the model; prompts of ~1,000 and ~300 tokens), ``start`` (a cold and a warm engine
    start), ``bare`` (bare vLLM ``LLM.classify`` on the ~1k-token prompts), ``job`` (the score job on
    the same prompts, then on the ~300-token ones, in one Spark application), ``compare``
    (``--compare-sample``, fp8 against bf16). ``--dry``: the tiny model, transformers on the CPU,
    few prompts, float32 against bfloat16: every step's code runs without a GPU."""
    work, out = Path(a.work), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runtime = work / "runtime"
    os.environ["PROMPTSCORE_RUNTIME_DIR"] = str(runtime)
    log = out / "bench-scale.log"
    cache = work / "cache"
    if a.dry:
        model, backend, device, dtype = str(work / "tiny"), "transformers", "cpu", "float32"
        n1k, n300, sample, gpu = a.prompts or 64, 2 * (a.prompts or 64), a.sample or 32, "cpu"
        compare = ["--dtype", "bfloat16", "--compare-dtype", "float32"]
    else:
        model, backend, device, dtype = str(work / "qwen1.5b"), "vllm", "auto", "bfloat16"
        n1k, n300, sample, gpu = a.prompts or 3072, 2 * (a.prompts or 3072), a.sample or 1024, "cuda"
        compare = ["--dtype", "bfloat16", "--quantization", "fp8"]
    p1k, p300 = str(work / "prompts-1k"), str(work / "prompts-300")
    common = ["--model", model, "--max-model-len", "2048", "--dtype", dtype]
    steps = {
        "prepare": [["prepare", "--work", str(work), "--prompts", str(n1k), "--min-tokens", "900",
                     "--max-tokens", "1100", "--name", "prompts-1k", "--device", gpu,
                     *(["--skip-big"] if a.dry else [])],
                    ["prepare", "--work", str(work), "--prompts", str(n300), "--min-tokens", "250",
                     "--max-tokens", "350", "--name", "prompts-300", "--device", gpu, "--skip-big"]],
        "start": [["engine-start", *common, "--prompts", p1k, "--backend", backend, "--device", device,
                   "--cache-dir", str(cache), "--label", label, "--json", str(out / f"start-{label}.json")]
                  for label in ("cold", "warm")],
        "bare": [["transformers", *common, "--prompts", p1k, "--device", "cpu", "--batch-tokens", "16384",
                  "--json", str(out / "bare-1k.json")] if a.dry else
                 ["vllm", *common, "--prompts", p1k, "--token-ids", "--json", str(out / "bare-1k.json")]],
        "job": [["spark", *common, "--prompts", p1k, "--more-prompts", p300, "--work", str(work),
                 "--backend", backend, "--cache-dir", str(cache), "--master", a.master, "--warmup", "64",
                 "--json", str(out / "job.json")]],
        "compare": [["compare", "--model", model, "--max-model-len", "2048", "--prompts", p1k, *compare,
                     "--backend", backend, "--device", device, "--sample", str(sample), "--cache-dir", str(cache),
                     "--master", a.master, "--json", str(out / "compare.json")]],
    }
    for name in a.steps.split(","):
        t0 = time.monotonic()
        if name == "start":
            shutil.rmtree(cache, ignore_errors=True)
        for argv in steps[name]:
            wait_for_engine_hosts(runtime)
            shutil.rmtree(runtime, ignore_errors=True)
            env = None
            if name == "bare" and not a.dry:
                from udfs.engine_cache import engine_env

                env = {**os.environ, **engine_env(str(cache))}  # bare vLLM with the same warm cache
            run_step(argv, log, env)
        print(f"  {name} done in {time.monotonic() - t0:.0f} s", flush=True)
    report_scale(a)


def report_scale(a) -> None:
    """The figures of the scale steps, as Markdown lines for bench/RESULTS.md (printed, and in
    ``summary.md``)."""
    out = Path(a.out)
    lines: list[str] = []
    print_ = lines.append

    def load(name: str) -> dict | None:
        p = out / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None

    cold, warm, bare, job, cmp = (load(n) for n in ("start-cold", "start-warm", "bare-1k", "job", "compare"))
    if cold and warm:
        print_(f"| engine start | cold {cold['engine_start_s']:.1f} s (wall {cold['wall_s']:.1f} s, cache_warm "
              f"{cold['cache_warm']}) | warm {warm['engine_start_s']:.1f} s (wall {warm['wall_s']:.1f} s, cache_warm "
              f"{warm['cache_warm']}) | {cold['engine_start_s'] / max(warm['engine_start_s'], 1e-9):.2f}x | "
              f"cache {warm['cache_mb']:.0f} MB | {warm['device']} |")
    if bare and job:
        ratio = job["engine_busy_s"] / bare["seconds"]
        print_(f"| engine busy, job vs bare | bare {bare['seconds']:.2f} s ({bare['prompts']:,} prompts, "
              f"{bare['prompts_per_s']:.1f}/s) | job busy {job['engine_busy_s']:.2f} s, "
              f"idle {job['engine_idle_s']:.2f} s, write {job['seconds']:.2f} s | **{ratio:.4f}x** "
              f"(goal at most 1.02x: {'met' if ratio <= 1.02 else 'NOT met'}) |")
    if job:
        for name, r in [("prompts-1k", job), *job.get("more", {}).items()]:
            print_(f"| throughput {name} | {r['prompts']:,} prompts, mean {r['mean_tokens']:.0f} tokens | "
                  f"{r['prompts_per_s']:.1f} prompts/s | {r['tokens_per_s']:,.0f} tokens/s | "
                  f"busy {r['engine_busy_s']:.1f} s |")
    if cmp:
        print_(f"| compare-sample | {cmp['summary']} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def report(a) -> None:
    out = Path(a.out)
    runs = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json") if "engine-logs" not in p.name}
    base = runs.get("vllm-bf16-ids") or runs.get("vllm-bf16")
    print("| run | prompts | tokens | seconds | prompts/s | tokens/s | MFU (of 989 TFLOP/s) "
          "| vs bare vLLM bf16 (ids) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for name in ("vllm-bf16-ids", "vllm-bf16", "spark", "spark-1gpu", "spark-2gpu", "vllm-fp8", "transformers"):
        if runs.get(name):
            rows.append(runs[name])
            if runs[name].get("one_task"):
                rows.append(runs[name]["one_task"])
    for r in rows:
        mfu = r.get("mfu", r.get("mfu_estimate"))
        ratio = f"{r['prompts_per_s'] / base['prompts_per_s']:.3f}x" if base else "-"
        print(f"| {r['what']} | {r['prompts']:,} | {r['tokens']:,} | {r['seconds']:.1f} | {r['prompts_per_s']:.1f} | "
              f"{r['tokens_per_s']:,.0f} | {mfu:.0%} | {ratio} |")
    if base and "vllm-fp8" in runs:
        print(f"\nfp8 vs bf16 scores (bare vLLM, {len(base['scores'])} prompts): Spearman "
              f"{spearman(base['scores'], runs['vllm-fp8']['scores']):.4f}")
    if base and "spark" in runs:
        d = sorted(abs(x - y) for x, y in zip(base["scores"], runs["spark"]["scores"]))
        print(f"this job vs bare vLLM bf16 scores: max abs diff {d[-1]:.3g}, median {d[len(d) // 2]:.3g}, "
              f"Spearman {spearman(base['scores'], runs['spark']['scores']):.5f}")
    for name in ("accuracy-tiny", "accuracy-1.5b"):
        r = runs.get(name)
        if r:
            print(f"{r['what']} ({Path(r['model']).name}, {r['rows']} rows): max abs diff {r['max_abs_diff']:.4g}, "
                  f"median {r['median_abs_diff']:.4g} (score std {r['score_std']:.3g}), Spearman {r['spearman']:.5f}")
    for name in ("spark", "spark-1gpu", "spark-2gpu"):
        r = runs.get(name)
        if r:
            print(f"{name} engines: " + "; ".join(f"{e['key']} pid {e['pid']} on {e['device']} ({e['tasks']} tasks, "
                                                  f"busy {e['busy_s']:.1f} s, idle {e.get('idle_s') or 0:.1f} s)"
                                                  for e in r["engines"]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)

    def engine_flags(s):
        s.add_argument("--model", required=True)
        s.add_argument("--prompts", required=True, help="the prompts Parquet file")
        s.add_argument("--limit", type=int)
        s.add_argument("--dtype", default="bfloat16")
        s.add_argument("--quantization")
        s.add_argument("--max-model-len", type=int, default=2048)
        s.add_argument("--max-num-batched-tokens", type=int, default=65536)
        s.add_argument("--max-num-seqs", type=int, default=512)
        s.add_argument("--json", required=True)

    s = sub.add_parser("prepare")
    s.add_argument("--work", required=True)
    s.add_argument("--prompts", type=int, default=16384)
    s.add_argument("--files", type=int, default=4, help="Parquet files to write the prompts to")
    s.add_argument("--min-tokens", type=int, default=256)
    s.add_argument("--max-tokens", type=int, default=1792)
    s.add_argument("--device", default="cuda")
    s.add_argument("--skip-big", action="store_true")
    s.add_argument("--name", default="prompts", help="the prompts' directory under --work")
    s.set_defaults(fn=prepare)
    s = sub.add_parser("vllm")
    engine_flags(s)
    s.add_argument("--token-ids", action="store_true", help="give vLLM token ids, not texts")
    s.set_defaults(fn=bare_vllm)
    s = sub.add_parser("transformers")
    engine_flags(s)
    s.add_argument("--batch-tokens", type=int, default=32768)
    s.add_argument("--device", default="cuda")
    s.set_defaults(fn=transformers_run)
    s = sub.add_parser("spark")
    engine_flags(s)
    s.add_argument("--work", required=True)
    s.add_argument("--master", default="local[4]")
    s.add_argument("--gpus", type=int, default=0, help="GPUs per executor (local-cluster masters)")
    s.add_argument("--partitions", type=int, help="repartition the input into N tasks (default: one per file)")
    s.add_argument("--warmup", type=int, default=512)
    s.add_argument("--batch-rows", type=int, default=512)
    s.add_argument("--backend", default="vllm", help="transformers: a dry run without a GPU")
    s.add_argument("--one-task-too", action="store_true", help="also time one task alone (one GPU busy)")
    s.add_argument("--more-prompts", action="append", help="also time the job on this prompts directory "
                   "(under --work, named prompts*), in the same Spark application")
    s.add_argument("--cache-dir", default="/tmp/promptscore-models", help="the job's --cache-dir")
    s.set_defaults(fn=spark_run)
    s = sub.add_parser("engine-start")
    engine_flags(s)
    s.add_argument("--backend", default="vllm")
    s.add_argument("--device", default="auto")
    s.add_argument("--cache-dir", required=True)
    s.add_argument("--label", default="start")
    s.set_defaults(fn=engine_start)
    s = sub.add_parser("compare")
    engine_flags(s)
    s.add_argument("--backend", default="vllm")
    s.add_argument("--device", default="auto")
    s.add_argument("--cache-dir", default="/tmp/promptscore-models")
    s.add_argument("--sample", type=int, default=1024)
    s.add_argument("--compare-dtype")
    s.add_argument("--master", default="local[4]")
    s.add_argument("--batch-rows", type=int, default=512)
    s.set_defaults(fn=compare_run)
    s = sub.add_parser("accuracy")
    engine_flags(s)
    s.add_argument("--vllm-json", required=True)
    s.set_defaults(fn=accuracy)
    s = sub.add_parser("probe")
    engine_flags(s)
    s.add_argument("--vllm-json", required=True)
    s.set_defaults(fn=probe)
    s = sub.add_parser("all")
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--prompts", type=int, default=16384)
    s.add_argument("--master", default="local[4]")
    s.add_argument("--transformers-prompts", type=int, default=2048)
    s.add_argument("--steps", default="prepare,vllm-ids,spark,vllm-bf16,vllm-fp8,transformers,accuracy-big,"
                   "vllm-tiny,accuracy-tiny,probe-tiny")
    s.set_defaults(fn=run_all)
    s = sub.add_parser("scale", help="engine starts, busy time vs bare vLLM, throughput, fp8 check (see run_scale)")
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--dry", action="store_true", help="tiny model, transformers on the CPU, few prompts")
    s.add_argument("--prompts", type=int, help="~1k-token prompts (twice as many of ~300 tokens)")
    s.add_argument("--sample", type=int, help="rows of --compare-sample")
    s.add_argument("--master", default="local[4]")
    s.add_argument("--steps", default="prepare,start,bare,job,compare")
    s.set_defaults(fn=run_scale)
    s = sub.add_parser("report")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=report)
    a = p.parse_args()
    a.fn(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
