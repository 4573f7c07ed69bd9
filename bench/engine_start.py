"""Engine start of the score job against bare vLLM, part by part, cold and warm, in two device calls.

    python3 bench/engine_start.py call1 --work /tmp/engine-bench --out OUT   (<= 560 s)
    python3 bench/engine_start.py call2 --work /tmp/engine-bench --out OUT   (<= 300 s, same machine, right after)
    python bench/engine_start.py report --work /tmp/engine-bench            (the Markdown of bench/RESULTS.md)
    python bench/engine_start.py call1 --dry ... ; ... call2 --dry ...       (a CPU: tiny model, transformers)
    python3 bench/engine_start.py daemon --work /tmp/engine-bench --out OUT  (<= 450 s: the job cold, then warm
                                                                           with and without udfs.worker_daemon)
    python3 bench/engine_start.py more --work /tmp/engine-bench --out OUT    (<= 590 s, right after daemon: more
                                                                           warm runs, without and with it in turn;
                                                                           again for more, numbered on)
    python3 bench/engine_start.py mega --work /tmp/engine-bench --out OUT    (<= 480 s, a fresh machine: imports
                                                                           profiled, the job cold and warm with
                                                                           VLLM_USE_MEGA_AOT_ARTIFACT=1)

``call1`` (one fresh GPU machine, <= 560 s): ``prepare`` (a random-weight Qwen2.5-1.5B-shaped model
in bf16 with a tokenizer built here, 8,192 prompts of 223-1,867 tokens in 4 Parquet files) while
the page cache takes in torch, vLLM and Spark's jars (so that "cold" means empty compile caches,
not a cold disk, for both peers); then bare vLLM cold (its own empty cache directories), the job
cold (``spark-submit --master local[8] jobs/score.py --backend vllm`` with an empty
``--cache-dir``) and, if time is left, bare vLLM with ``enforce_eager`` (no torch.compile, no CUDA
graphs: what a start without compiling costs, and what it does to the busy time and the scores).
``call2`` (the same machine, right after, <= 300 s): the job warm, bare vLLM warm (the same caches
as call 1) and an engine host started alone with ``VLLM_WORKER_MULTIPROC_METHOD=spawn`` (warm),
beside the job's own forked one.

Every run is a fresh process under its own ``timeout``, and writes one JSON file: its start parts
(``udfs.start_parts``), classify or engine-busy seconds, whole-process seconds, and its scores
(compared: max abs diff, Spearman). Progress goes unbuffered to ``OUT/progress.log``; every log to
``OUT/logs.tar.gz``; results are kept in ``WORK/results`` too, so ``report`` (and the end of each
call) sees both calls. Needs no install of this checkout: the runs import it from PYTHONPATH, and
``spark-submit`` is PySpark's own (``SPARK_HOME``, else the pyspark package's folder).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from udfs.start_parts import PART_KEYS, StartClock  # noqa: E402 - light; the clock starts in each run

PROMPTS, MIN_TOKENS, MAX_TOKENS, FILES = 8192, 223, 1867, 4
MAX_MODEL_LEN = 2048
ENGINE = dict(max_num_batched_tokens=65536, max_num_seqs=512)  # the job's defaults, for both peers
SPAWN = {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
EAGER = {"enforce_eager": True}
NOCHUNK = {"enable_chunked_prefill": False}  # every prompt prefilled in one step, whatever arrives with it
DAEMON = ("spark.python.daemon.module=udfs.worker_daemon",)  # as conf/local.conf and conf/emr-score-gpu.conf


# ---------------------------------------------------------------------------------------------
# One run each, in a process of its own


def bare(a) -> None:
    """Bare vLLM: ``LLM(model, runner="pooling")``, one request, then ``classify`` on every prompt
    (tokenized first, as the job's tokenizer does), scores written; with ``--backend
    transformers``, the transformers engine on the CPU instead (``--dry``)."""
    clock = StartClock.for_this_process()
    engine_args = json.loads(a.engine_args)
    if a.backend == "transformers":
        return _bare_transformers(a, clock)
    import torch  # noqa: F401

    clock.mark("torch")
    from vllm import LLM, PoolingParams
    from vllm.inputs import TokensPrompt

    from udfs.engines import probe_ids

    clock.mark("vllm")
    llm = LLM(model=a.model, runner="pooling", max_model_len=MAX_MODEL_LEN, dtype=a.dtype, enable_prefix_caching=False,
              gpu_memory_utilization=0.9, **ENGINE, **engine_args)
    clock.mark("ready")
    clock.note_engine_core()
    params = PoolingParams(use_activation=False)
    llm.classify([TokensPrompt(prompt_token_ids=probe_ids(llm.model_config.get_vocab_size()))],
                 pooling_params=params, use_tqdm=False)
    clock.mark("first")
    parts = clock.finish()
    ids, tokenize_s = _tokenized(a)
    t0 = time.monotonic()
    outs = llm.classify([TokensPrompt(prompt_token_ids=x) for x in ids], pooling_params=params, use_tqdm=False)
    seconds = time.monotonic() - t0
    _write_run(a, clock, parts, seconds, tokenize_s, [float(o.outputs.probs[0]) for o in outs], ids)
    llm.llm_engine.engine_core.shutdown()
    sys.stdout.flush()
    os._exit(0)  # a bare LLM's threads can abort the interpreter's exit; the results are written


def _bare_transformers(a, clock: StartClock) -> None:
    from udfs.engines import EngineSpec, TransformersEngine

    engine = TransformersEngine(EngineSpec(model_dir=a.model, device="cpu", dtype=a.dtype), clock)
    ids, tokenize_s = _tokenized(a)
    t0 = time.monotonic()
    scores = engine.score(ids)
    _write_run(a, clock, engine.start_parts, time.monotonic() - t0, tokenize_s, scores, ids)


def _tokenized(a) -> tuple[list[list[int]], float]:
    from score_bench import load_prompts

    from udfs.prompts import Prompter

    t0 = time.monotonic()
    ids = Prompter(a.model, "raw", MAX_MODEL_LEN).encode(load_prompts(Path(a.prompts))).ids
    return ids, time.monotonic() - t0


def _write_run(a, clock: StartClock, parts: dict, seconds: float, tokenize_s: float, scores: list[float],
               ids: list[list[int]]) -> None:
    from score_bench import write_json

    write_json(a.json, {
        "what": f"bare {a.backend}, {a.label}", "label": a.label, "engine_args": json.loads(a.engine_args),
        "prompts": len(ids), "tokens": sum(len(x) for x in ids), "start_parts": parts,
        "engine_start_s": parts.get("total_s") if parts else None, "tokenize_s": round(tokenize_s, 3),
        "busy_s": round(seconds, 3), "process_s_inside": clock.now(), "scores": scores,
    })


def host(a) -> None:
    """One engine host started alone, as a task starts it (``udfs.engine_client.connect``), with the
    environment ``--env`` adds (e.g. the multiprocessing method); its start parts."""
    from score_bench import write_json

    from udfs import engine_client
    from udfs.engines import EngineSpec

    os.environ.update(dict(kv.split("=", 1) for kv in a.env))
    spec = EngineSpec(model_dir=a.model, backend=a.backend, dtype=a.dtype, max_model_len=MAX_MODEL_LEN,
                      engine_args=json.loads(a.engine_args), device="cpu" if a.backend == "transformers" else "auto")
    t0 = time.monotonic()
    client = engine_client.connect(spec, None, 600.0, a.cache_dir)
    wall = time.monotonic() - t0
    info = client.stats()
    client.shutdown()
    write_json(a.json, {"what": f"engine host alone, {a.label}", "label": a.label, "env": a.env, "wall_s": wall,
                        "engine_start_s": info["engine_start_s"], "start_parts": info["engine_start_parts"],
                        "cache_warm": info["cache_warm"], "device": info["device"]})


# ---------------------------------------------------------------------------------------------
# The calls


def cpu_samples(path: Path, done: threading.Event, every_s: float = 1.0) -> None:
    """Busy CPU cores of the whole machine (from ``/proc/stat``), one line a second, until ``done``:
    what else ran while an engine started."""
    def read() -> tuple[int, int] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)

    last, t0, cores = read(), time.monotonic(), os.cpu_count() or 1
    if last is None:
        return
    with open(path, "w", buffering=1) as f:
        while not done.wait(every_s):
            now = read()
            if now is None:
                return
            total, idle = now[0] - last[0], now[1] - last[1]
            f.write(f"{time.monotonic() - t0:.0f} {cores * (total - idle) / max(total, 1):.1f}\n")
            last = now


class Call:
    """The steps of one device call: each a command under ``timeout`` within the call's deadline,
    its output in a log of its own, progress in ``OUT/progress.log``."""

    def __init__(self, a):
        self.a, self.work, self.out = a, Path(a.work), Path(a.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.results = self.work / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + a.deadline_s
        self.progress = open(self.out / "progress.log", "a", buffering=1)
        self.model = str(self.work / ("tiny" if a.dry else "qwen1.5b"))
        self.backend = "transformers" if a.dry else "vllm"
        self.dtype = "float32" if a.dry else "bfloat16"

    def say(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        print(line, flush=True)
        self.progress.write(line + "\n")

    def run(self, name: str, argv: list[str], limit_s: float, env: dict | None = None,
            need_s: float = 0.0) -> tuple[int | None, float]:
        """Run ``argv`` under ``timeout`` (at most ``limit_s``, less when the call's end is nearer;
        skipped when fewer than ``need_s`` seconds are left). (exit code or None, wall seconds)."""
        left = self.deadline - time.monotonic() - 15
        if left < max(need_s, 10):
            self.say(f"{name}: skipped ({left:.0f} s left of the call)")
            return None, 0.0
        limit = int(min(limit_s, left))
        self.say(f"{name}: start (timeout {limit} s): {' '.join(argv)[:300]}")
        t0 = time.monotonic()
        done = threading.Event()
        sampler = threading.Thread(target=cpu_samples, args=(self.logs / f"{name}.cpu", done), daemon=True)
        sampler.start()
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.run(["timeout", "-k", "10", str(limit), *argv], stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})}, cwd=ROOT)
        wall = time.monotonic() - t0
        done.set()
        sampler.join()
        self.say(f"{name}: exit {proc.returncode} after {wall:.1f} s")
        return proc.returncode, wall

    def me(self, step: str, *args: str) -> list[str]:
        return [sys.executable, "-u", __file__, step, *args]

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        """Pack this call's results and every log so far into OUT/logs.tar.gz (after each step: a
        call cut short still brings back what it did; few files come back from a device call)."""
        tmp = self.out / "logs.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.logs, arcname="logs")
            for p in self.results.glob("*.json"):
                if p.name in self.keep:
                    tar.add(p, arcname=f"results/{p.name}")
            runtime = self.work / "runtime-logs"
            if runtime.exists():
                tar.add(runtime, arcname="engine-hosts")
        os.replace(tmp, self.out / "logs.tar.gz")

    def finish(self) -> None:
        self.say("report:")
        try:
            text = report_text(self.results)
            (self.out / "summary.md").write_text(text)
            self.progress.write(text)
        finally:
            self.save()
            self.progress.close()

    keep: set[str] = set()


def prepare(c: Call) -> None:
    """The model and the prompts (once per machine), while the page cache takes in the libraries."""
    if (c.work / "prompts" / f"part-{FILES - 1:05d}.parquet").exists() and Path(c.model, "config.json").exists():
        c.say("prepare: already there")
        return
    warm = "import torch, transformers" if c.a.dry else "import torch, vllm, transformers"
    spark_jars = spark_home() / "jars"
    readers = [subprocess.Popen(["timeout", "120", sys.executable, "-c", warm], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)]
    if spark_jars.is_dir():
        readers.append(subprocess.Popen(["timeout", "60", "sh", "-c", f"cat {spark_jars}/*.jar > /dev/null"]))
    n, lo, hi = (64, 40, 400) if c.a.dry else (PROMPTS, MIN_TOKENS, MAX_TOKENS)
    argv = [sys.executable, "-u", str(ROOT / "bench" / "score_bench.py"), "prepare", "--work", str(c.work),
            "--prompts", str(n), "--min-tokens", str(lo), "--max-tokens", str(hi), "--files", str(FILES),
            "--name", "prompts", "--device", "cpu" if c.a.dry else "cuda", *(["--skip-big"] if c.a.dry else [])]
    code, _ = c.run("prepare", argv, 240)
    for r in readers:
        r.wait()
    if code != 0:
        raise SystemExit("prepare failed; see logs/prepare.log")
    compile_site(c)


def compile_site(c: Call) -> None:
    """Byte-compile the packages vLLM was installed with, as ``pip install`` does unless told
    ``--no-compile`` (wheels staged for an offline machine may have been installed that way, and a
    Python that may not write ``__pycache__`` then compiles every module at every start)."""
    import importlib.util

    spec = importlib.util.find_spec("torch" if c.a.dry else "vllm")
    if not spec or not spec.origin:
        return
    site = Path(spec.origin).parents[1]
    before = sum(1 for _ in (site / ("torch" if c.a.dry else "vllm")).rglob("*.pyc"))
    c.say(f"compile: {site}: {before} .pyc files under the package before; this Python writes bytecode: "
          f"{not sys.dont_write_bytecode} (PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE')!r})")
    c.run("compile", [sys.executable, "-m", "compileall", "-q", "-j", "0", str(site)], 180)


def bare_run(c: Call, label: str, fresh: bool, engine_args: dict | None = None, limit_s: float = 330,
             need_s: float = 60, variant: str = "default") -> None:
    cache = c.work / f"bare-cache-{variant}"
    if fresh:
        shutil.rmtree(cache, ignore_errors=True)
    from udfs.engine_cache import engine_env

    env = {**engine_env(str(cache)), "TOKENIZERS_PARALLELISM": "true"}
    name = f"bare-{label}"
    c.keep.add(f"{name}.json")
    path = c.results / f"{name}.json"
    path.unlink(missing_ok=True)
    code, wall = c.run(name, c.me("bare", "--model", c.model, "--prompts", str(c.work / "prompts"), "--backend",
                                  c.backend, "--dtype", c.dtype, "--engine-args", json.dumps(engine_args or {}),
                                  "--label", label, "--json", str(path)), limit_s, env, need_s)
    if path.exists():  # the whole process, as the caller saw it (its exit included)
        data = json.loads(path.read_text())
        data.update(process_s=round(wall, 3), exit=code)
        path.write_text(json.dumps(data, indent=2, default=str))
    c.save()


def gpu_idle(c: Call, timeout_s: float = 90.0) -> None:
    """Wait until no engine host of an earlier step runs and no process holds the GPU."""
    from score_bench import wait_for_engine_hosts

    timeout_s = max(1.0, min(timeout_s, c.left_s() - 30))
    wait_for_engine_hosts(c.work / "runtime", timeout_s)
    if c.a.dry or not shutil.which("nvidia-smi"):
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.split()
        if not apps:
            return
        time.sleep(1)
    c.say(f"the GPU is still held by {apps}")


def job_run(c: Call, label: str, fresh: bool, limit_s: float, need_s: float, conf: tuple[str, ...] = DAEMON,
            engine_args: dict | None = None, variant: str = "default") -> None:
    """``spark-submit jobs/score.py`` on the prompts, timed whole; the report's engine, its start
    parts and the scores in ``job-<label>.json``. ``variant`` names the engine cache (one per
    engine configuration, so that a variant's cold run is cold)."""
    cache = c.work / ("job-cache" if variant == "default" else f"job-cache-{variant}")
    runtime, out = c.work / "runtime", c.work / f"job-out-{label}"
    gpu_idle(c)
    for path in ([cache] if fresh else []) + [runtime, out]:
        shutil.rmtree(path, ignore_errors=True)
    name = f"job-{label}"
    c.keep.add(f"{name}.json")
    c.results.joinpath(f"{name}.json").unlink(missing_ok=True)
    master = "local[2]" if c.a.dry else "local[8]"
    spark_submit = str(spark_home() / "bin" / "spark-submit")
    confs = [x for kv in ("spark.driver.memory=8g", "spark.ui.showConsoleProgress=false", *conf)
             for x in ("--conf", kv)]
    argv = [spark_submit, "--master", master, *confs, "jobs/score.py", "--input", str(c.work / "prompts"),
            "--output", str(out), "--model", c.model, "--backend", c.backend, "--dtype", c.dtype,
            "--max-model-len", str(MAX_MODEL_LEN), "--cache-dir", str(cache), *(["--device", "cpu"] if c.a.dry else []),
            *(["--engine-args", json.dumps(engine_args)] if engine_args else [])]
    # This checkout need not be installed (a GPU machine with staged wheels): the driver, the
    # Python workers and the engine hosts import it from PYTHONPATH.
    env = {"PROMPTSCORE_RUNTIME_DIR": str(runtime), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_HOME": str(spark_home()),
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    submitted = time.time()
    code, wall = c.run(name, argv, limit_s, env, need_s)
    gpu_idle(c, 60)
    keep = c.work / "runtime-logs"
    keep.mkdir(exist_ok=True)
    for log in runtime.glob("*.log"):
        shutil.copy(log, keep / f"{label}-{log.name}")
    if code is not None:
        c.results.joinpath(f"{name}.json").write_text(json.dumps(
            job_result(label, out, c.logs / f"{name}.log", code, wall, submitted), indent=2, default=str))
    c.save()


def spark_home() -> Path:
    """``SPARK_HOME``, or the PySpark package's own folder (a pip-installed PySpark)."""
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"])
    import pyspark

    return Path(pyspark.__file__).parent


def job_result(label: str, out: Path, log: Path, code: int, wall: float, submitted: float) -> dict:
    """What a job run measured, from its report, its output and its log."""
    data: dict = {"what": f"the job, {label}", "label": label, "exit": code, "process_s": round(wall, 3)}
    report_path = out / "_report.json"
    if not report_path.exists():
        return data
    r = json.loads(report_path.read_text())
    e = r["engines"][0] if r.get("engines") else {}
    phases = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("score: ")]
    data.update(
        prompts=r["rows"], tokens=r["tokens"], busy_s=r["engine_busy_s"], idle_s=r["engine_idle_s"],
        phase_s=r["phase_s"], elapsed_s=r["elapsed_s"], engine=e, start_parts=e.get("start_parts"),
        engine_start_s=(e.get("start_parts") or {}).get("total_s"), cache_warm=e.get("cache_warm"),
        started_by=e.get("started_by"),
        host_spawned_after_submit_s=(round(e["process_started_at"] - submitted, 3)
                                     if e.get("process_started_at") else None),
        host_ready_after_submit_s=round(e["ready_at"] - submitted, 3) if e.get("ready_at") else None,
        first_task_after_submit_s=(round(min(t["started_at"] for t in r["tasks"]) - submitted, 3)
                                   if r["tasks"] else None),
        progress_lines=[p for p in phases if "engines starting" in p][:2] + phases[-1:],
        scores=_scores(out),
    )
    return data


def _scores(out: Path) -> list[float | None]:
    import pyarrow.dataset as ds

    table = ds.dataset(str(out), ignore_prefixes=["_", "."]).to_table(columns=["id", "score"])
    return [s for _, s in sorted(zip(table.column("id").to_pylist(), table.column("score").to_pylist()))]


def host_run(c: Call, label: str, env: dict[str, str], limit_s: float, need_s: float) -> None:
    """An engine host alone with the job's (warm) cache and ``env``."""
    gpu_idle(c)
    runtime = c.work / "runtime"
    shutil.rmtree(runtime, ignore_errors=True)
    name = f"host-{label}"
    c.keep.add(f"{name}.json")
    c.results.joinpath(f"{name}.json").unlink(missing_ok=True)
    c.run(name, c.me("host", "--model", c.model, "--backend", c.backend, "--dtype", c.dtype, "--cache-dir",
                     str(c.work / "job-cache"), "--label", label, "--json", str(c.results / f"{name}.json"),
                     *[x for kv in env.items() for x in ("--env", "=".join(kv))]),
          limit_s, {"PROMPTSCORE_RUNTIME_DIR": str(runtime)}, need_s)
    keep = c.work / "runtime-logs"
    keep.mkdir(exist_ok=True)
    for log in runtime.glob("*.log"):
        shutil.copy(log, keep / f"{label}-{log.name}")
    c.save()


def call1(a) -> None:
    c = Call(a)
    more = "both with enable_chunked_prefill=False" if a.set == "prefill" else "bare eager"
    c.say(f"call 1: prepare, bare vLLM cold, the job cold, {more} ({'dry: ' if a.dry else ''}{c.model})")
    try:
        prepare(c)
        gpu_idle(c)
        bare_run(c, "cold", fresh=True, limit_s=330, need_s=150)
        job_run(c, "cold", fresh=True, limit_s=400, need_s=180)
        gpu_idle(c)
        if a.set == "prefill":
            job_run(c, "cold-nochunk", fresh=True, limit_s=200, need_s=120, engine_args=NOCHUNK, variant="nochunk")
            gpu_idle(c)
            bare_run(c, "cold-nochunk", fresh=True, engine_args=NOCHUNK, limit_s=200, need_s=140, variant="nochunk")
        else:
            bare_run(c, "eager", fresh=True, engine_args=EAGER, limit_s=200, need_s=110, variant="eager")
    finally:
        c.finish()


def daemon(a) -> None:
    """One call on a fresh machine: prepare, the job cold, then warm with the profiles' Python
    daemon (``udfs.worker_daemon``), warm with Spark's own, and warm again with the profiles'."""
    c = Call(a)
    c.say(f"daemon: prepare, the job cold, warm, warm under pyspark.daemon, warm ({c.model})")
    try:
        prepare(c)
        gpu_idle(c)
        job_run(c, "cold", fresh=True, limit_s=300, need_s=100)
        job_run(c, "warm", fresh=False, limit_s=150, need_s=70)
        job_run(c, "warm-nodaemon", fresh=False, limit_s=150, need_s=70, conf=())
        job_run(c, "warm2", fresh=False, limit_s=150, need_s=70)
    finally:
        c.finish()


def after(a, step: str) -> None:
    """Exit 2 with one line unless ``step`` left its model and job cache in ``--work`` (the steps
    that follow it run on the same machine, right after)."""
    model = Path(a.work) / ("tiny" if a.dry else "qwen1.5b")
    if not (Path(a.work) / "job-cache").is_dir() or not (model / "config.json").exists():
        print(f"engine_start: no model or job cache of {step} in {a.work} (a fresh machine?): run {step} first, "
              "on the same machine", file=sys.stderr)
        raise SystemExit(2)


def first_round(results: Path) -> int:
    """The first round of ``more`` whose runs are not in ``results`` yet: ``more`` again on the same
    machine adds runs (``job-warm-nodaemon<n>``, ``job-warm<n+1>``) instead of replacing them."""
    rounds = [2]
    for p in results.glob("job-warm*.json"):
        m = re.fullmatch(r"job-warm(-nodaemon)?(\d+)\.json", p.name)
        if m:
            rounds.append(int(m.group(2)) + (1 if m.group(1) else 0))
    return max(rounds)


def more(a) -> None:
    """Right after ``daemon`` on the same machine: more warm runs, with Spark's own Python daemon
    and with the profiles' in turn, for as long as the call's deadline allows."""
    after(a, "daemon")
    c = Call(a)
    first = first_round(c.results)
    c.say(f"more: the job warm, under pyspark.daemon and udfs.worker_daemon in turn, from round {first}")
    try:
        for n in range(first, first + 6):
            job_run(c, f"warm-nodaemon{n}", fresh=False, limit_s=150, need_s=75, conf=())
            job_run(c, f"warm{n + 1}", fresh=False, limit_s=150, need_s=75)
    finally:
        c.finish()


def imports(c: Call) -> None:
    """The engine host's imports under ``-X importtime`` (warm page cache, byte-compiled)."""
    code = ("import torch; from vllm import AsyncEngineArgs, AsyncLLMEngine, ModelRegistry, PoolingParams; "
            "from vllm.inputs import tokens_input")
    for n in (1, 2):
        c.run(f"importtime{n}", [sys.executable, "-X", "importtime", "-c", code], 90, need_s=40)


def mega(a) -> None:
    """One call on a fresh machine: prepare, the host's imports profiled, then the job cold and
    warm twice with ``VLLM_USE_MEGA_AOT_ARTIFACT=1`` (compiled graphs loaded as one artifact; the
    engine host sets it unless the environment does, ``udfs.engine_client.HOST_ENV_DEFAULTS``)."""
    c = Call(a)
    c.say(f"mega: prepare, imports, the job cold, warm, warm with the compiled artifact ({c.model})")
    try:
        prepare(c)
        imports(c)
        gpu_idle(c)
        job_run(c, "cold-mega", fresh=True, limit_s=240, need_s=100, variant="mega")
        job_run(c, "warm-mega", fresh=False, limit_s=150, need_s=75, variant="mega")
        job_run(c, "warm-mega2", fresh=False, limit_s=150, need_s=75, variant="mega")
    finally:
        c.finish()


def call2(a) -> None:
    after(a, "call1")
    c = Call(a)
    more = ("both with enable_chunked_prefill=False, the job again" if a.set == "prefill"
            else "an engine host alone under spawn")
    c.say(f"call 2: the job warm, bare vLLM warm, {more} (warm)")
    try:
        job_run(c, "warm", fresh=False, limit_s=200, need_s=90)
        gpu_idle(c)
        if a.set == "prefill":
            job_run(c, "warm-nochunk", fresh=False, limit_s=200, need_s=90, engine_args=NOCHUNK, variant="nochunk")
            gpu_idle(c)
            bare_run(c, "warm-nochunk", fresh=False, engine_args=NOCHUNK, limit_s=200, need_s=80, variant="nochunk")
            gpu_idle(c)
        bare_run(c, "warm", fresh=False, limit_s=200, need_s=80)
        if a.set == "prefill":
            job_run(c, "warm2", fresh=False, limit_s=200, need_s=90)
        else:
            host_run(c, "spawn", SPAWN, limit_s=120, need_s=40)
    finally:
        c.finish()


# ---------------------------------------------------------------------------------------------
# The report


def _load(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json")) if not p.stem.endswith("report")}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def compare(got: list, ref: list) -> str:
    """Max abs diff and Spearman of two runs' scores (float32, as the job writes them)."""
    import struct

    from score_bench import spearman

    f32 = [struct.unpack("f", struct.pack("f", x))[0] if x is not None else None for x in ref]
    pairs = [(g, r) for g, r in zip(got, f32) if g is not None and r is not None]
    if not pairs or len(pairs) != len(ref):
        return f"{len(pairs)} of {len(ref)} rows comparable"
    diff = max(abs(g - r) for g, r in pairs)
    return f"max abs diff {diff:.3g}, Spearman {spearman([g for g, _ in pairs], [r for _, r in pairs]):.6f}"


def report_text(results: Path) -> str:
    runs = _load(results)
    cols = [n for n in ("bare-cold", "job-cold", "bare-warm", "job-warm", "job-warm2", "job-warm-nodaemon",
                        "bare-eager", "host-spawn",
                        "bare-cold-nochunk", "job-cold-nochunk", "bare-warm-nochunk", "job-warm-nochunk") if n in runs]
    cols += sorted((n for n in runs if n.startswith(("job-warm", "job-cold")) and n not in cols), key=_in_rounds)
    lines = ["| start part, s | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    keys = [*PART_KEYS, "compile_cache_hit", "cuda_graphs", "mp_method"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt((runs[n].get("start_parts") or {}).get(k)) for n in cols) + " |")
    lines += ["", "| | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    rows = {
        "engine start (process start to first request), s": lambda r: r.get("engine_start_s"),
        "classify / engine busy, s": lambda r: r.get("busy_s"),
        "whole process, s": lambda r: r.get("process_s"),
        "host spawned after spark-submit started, s": lambda r: r.get("host_spawned_after_submit_s"),
        "host ready after spark-submit started, s": lambda r: r.get("host_ready_after_submit_s"),
        "first scoring task after spark-submit started, s": lambda r: r.get("first_task_after_submit_s"),
    }
    for title, get in rows.items():
        lines.append(f"| {title} | " + " | ".join(_fmt(get(runs[n])) for n in cols) + " |")
    lines.append("")
    pairs = [(f"bare-{t}", f"job-{t}") for t in ("cold", "warm", "cold-nochunk", "warm-nochunk")]
    pairs += [("bare-warm", "job-warm2"), ("job-cold", "job-warm"), ("job-warm", "job-warm2"),
              ("job-warm-nodaemon", "job-warm"), ("job-warm-nodaemon", "job-warm2"),
              ("job-cold-nochunk", "job-warm-nochunk"), ("bare-cold", "bare-cold-nochunk")]
    for bn, jn in pairs:
        b, j = runs.get(bn), runs.get(jn)
        temp = f"{jn} against {bn}"
        if b and j and b.get("process_s") and j.get("process_s"):
            lines.append(f"- {temp}: whole process, {bn} / {jn} = {b['process_s'] / j['process_s']:.3f}x; engine "
                         f"start difference {_fmt((j.get('engine_start_s') or 0) - (b.get('engine_start_s') or 0))} s; "
                         f"busy {_fmt(b.get('busy_s'))} s and {_fmt(j.get('busy_s'))} s; "
                         f"scores: {compare(j.get('scores') or [], b.get('scores') or [])}")
    lines += _daemon_summary(runs)
    if runs.get("bare-eager") and runs.get("bare-cold"):
        lines.append(f"- bare eager vs bare compiled scores: "
                     f"{compare(runs['bare-eager']['scores'], runs['bare-cold']['scores'])}")
    for n in cols:
        for p in runs[n].get("progress_lines") or []:
            lines.append(f"- {n} progress: `{p}`")
    return "\n".join(lines) + "\n"


def _in_rounds(name: str) -> tuple[str, int]:
    """``job-warm10`` after ``job-warm9``: a run's name without its round, then the round."""
    m = re.fullmatch(r"(.*?)(\d*)", name)
    return m.group(1), int(m.group(2) or 0)


def _daemon_summary(runs: dict[str, dict]) -> list[str]:
    """Warm engine starts and whole processes with and without the profiles' Python daemon."""
    import statistics

    warm = sorted((n for n in runs if n.startswith("job-warm") and not any(v in n for v in ("nochunk", "mega"))
                   and runs[n].get("engine_start_s")), key=_in_rounds)
    lines = []
    for title, names in (("udfs.worker_daemon", [n for n in warm if "nodaemon" not in n]),
                         ("pyspark.daemon", [n for n in warm if "nodaemon" in n])):
        if names:
            starts = [runs[n]["engine_start_s"] for n in names]
            whole = [runs[n]["process_s"] for n in names if runs[n].get("process_s")]
            lines.append(f"- warm under {title}, {len(names)} runs: engine start "
                         f"{', '.join(f'{x:.1f}' for x in starts)} s (median {statistics.median(starts):.1f})"
                         + (f"; whole process median {statistics.median(whole):.1f} s" if whole else ""))
    return lines


def report(a) -> None:
    text = report_text(Path(a.work) / "results")
    print(text)
    if a.md:
        Path(a.md).write_text(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    for name, fn, deadline in (("call1", call1, 550), ("call2", call2, 290), ("daemon", daemon, 440),
                               ("more", more, 580),
                               ("mega", mega, 480)):
        s = sub.add_parser(name)
        s.add_argument("--work", default="/tmp/engine-bench")
        s.add_argument("--out", required=True)
        s.add_argument("--dry", action="store_true", help="tiny model, transformers on the CPU, 64 prompts")
        s.add_argument("--deadline-s", type=float, default=deadline, help="the call's wall-clock budget")
        s.add_argument("--set", choices=("start", "prefill"), default="start",
                       help="start: also bare vLLM eager (call 1) and an engine host under spawn (call 2); prefill: "
                            "also both peers with enable_chunked_prefill=False, cold and warm, and the job warm twice")
        s.set_defaults(fn=fn)
    s = sub.add_parser("report")
    s.add_argument("--work", default="/tmp/engine-bench")
    s.add_argument("--md", help="also write the Markdown here")
    s.set_defaults(fn=report)
    for name, fn in (("bare", bare), ("host", host)):
        s = sub.add_parser(name)
        s.add_argument("--model", required=True)
        s.add_argument("--backend", default="vllm")
        s.add_argument("--dtype", default="bfloat16")
        s.add_argument("--engine-args", default="{}")
        s.add_argument("--label", default="")
        s.add_argument("--json", required=True)
        if name == "bare":
            s.add_argument("--prompts", required=True)
        else:
            s.add_argument("--cache-dir", required=True)
            s.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
        s.set_defaults(fn=fn)
    a = p.parse_args()
    a.fn(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
