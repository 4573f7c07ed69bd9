"""Where a warm engine start spends its time before vLLM's engine core runs, in one device call.

    python3 bench/engine_profile.py call --work /tmp/engine-prof --out OUT --deadline-s 540
    python bench/engine_profile.py call --dry ...     (a CPU: the tiny model, transformers; checks the script)

The job's own engine (``udfs.engines.VllmEngine``, as an engine host builds it) is started in a
process of its own, several times on one machine: once cold (empty caches) to fill the engine
cache, then warm, (1) plainly, (2) under ``-X importtime`` (every import's own and cumulative
microseconds, lazy ones included), (3) under cProfile (``profile-warm.prof`` and its top functions
by cumulative and own time) and (4) with environment variants (``--variant NAME=K=V,K=V``). Each
run writes its start parts (``udfs.start_parts``). What comes back: ``progress.log``,
``summary.md`` and ``logs.tar.gz`` (every log, the profiles, the import times).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine_start import Call, gpu_idle, prepare  # noqa: E402 - the same device call, model, prompts and byte-compiling

from udfs.start_parts import PART_KEYS, StartClock  # noqa: E402 - light; the clock starts in each run

VARIANTS = {
    "offline": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_PLUGINS": "", "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1"},
}


def probe(a) -> None:
    """Start the job's vLLM engine once (cProfile around everything with ``--profile``), answer one
    request, write the start parts to ``--json``."""
    clock = StartClock.for_this_process()
    prof = cProfile.Profile() if a.profile else None
    if prof:
        prof.enable()
    from udfs.engines import EngineSpec, build

    spec = EngineSpec(model_dir=a.model, backend=a.backend, dtype=a.dtype, max_model_len=2048,
                      device="cpu" if a.backend == "transformers" else "auto")
    engine = build(spec, clock)
    if prof:
        prof.disable()
        prof.dump_stats(a.profile)
        text = io.StringIO()
        stats = pstats.Stats(a.profile, stream=text)
        stats.sort_stats("cumulative").print_stats(150)
        stats.sort_stats("tottime").print_stats(60)
        Path(a.profile).with_suffix(".txt").write_text(text.getvalue())
    Path(a.json).write_text(json.dumps({"label": a.label, "start_parts": engine.start_parts,
                                        "env": {k: os.environ.get(k) for k in VARIANTS["offline"]}}, indent=2))
    print(f"probe {a.label}: {json.dumps(engine.start_parts)}", flush=True)
    engine.close()  # else its engine core, a child, outlives this process and holds the GPU
    sys.stdout.flush()
    os._exit(0)


class ProfileCall(Call):
    """``engine_start``'s device call, with probes of the job's engine and the profiles in its logs."""

    def probe(self, label: str, fresh: bool, env: dict | None = None, flags: tuple[str, ...] = (),
              py: tuple[str, ...] = ()) -> None:
        from udfs.engine_cache import engine_env

        cache = self.work / "cache"
        if fresh:
            shutil.rmtree(cache, ignore_errors=True)
        env = {**engine_env(str(cache)), "VLLM_WORKER_MULTIPROC_METHOD": "fork", "TOKENIZERS_PARALLELISM": "false",
               **(env or {})}
        argv = [sys.executable, *py, "-u", __file__, "probe", "--model", self.model, "--backend", self.backend,
                "--dtype", self.dtype, "--label", label, "--json", str(self.results / f"{label}.json"), *flags]
        gpu_idle(self)  # the run before may still be giving the GPU back
        self.run(label, argv, 240, env, need_s=30)
        self.save()

    def save(self) -> None:
        tmp = self.out / "logs.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for sub in ("logs", "results", "profiles"):
                if (self.work / sub).exists():
                    tar.add(self.work / sub, arcname=sub)
        os.replace(tmp, self.out / "logs.tar.gz")


def importtime_summary(log: Path, top: int = 60) -> str:
    """The imports of a ``-X importtime`` log with the largest cumulative time, at any depth."""
    rows = []
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"import time:\s*(\d+) \|\s*(\d+) \|( *)(\S.*)$", line)
        if m:
            rows.append((int(m.group(2)), int(m.group(1)), m.group(3) + m.group(4)))
    total_own = sum(r[1] for r in rows)
    rows.sort(reverse=True)
    out = [f"{len(rows)} imports, own time in all {total_own / 1e6:.1f} s", "cumulative s | own s | module"]
    out += [f"{c / 1e6:8.2f} | {o / 1e6:6.2f} | {n}" for c, o, n in rows[:top]]
    by_own = sorted(rows, key=lambda r: -r[1])[:40]
    out += ["", "largest own times:"] + [f"{o / 1e6:6.2f} | {n.strip()}" for c, o, n in by_own]
    return "\n".join(out)


def call(a) -> None:
    c = ProfileCall(a)
    prepare(c)
    (c.work / "profiles").mkdir(exist_ok=True)
    c.probe("cold", fresh=True)
    c.probe("warm", fresh=False)
    c.probe("warm-importtime", fresh=False, py=("-X", "importtime"))
    log = c.work / "logs" / "warm-importtime.log"
    if log.exists():
        (c.work / "profiles" / "importtime-warm.txt").write_text(importtime_summary(log))
    c.probe("warm-profile", fresh=False, flags=("--profile", str(c.work / "profiles" / "warm.prof")),
            env={"VLLM_LOGGING_LEVEL": "DEBUG"})
    for name in a.variant or ["offline"]:
        c.probe(f"warm-{name}", fresh=False, env=VARIANTS[name])
    summary = ["| part, s | " + " | ".join(p.stem for p in sorted((c.work / "results").glob("*.json"))) + " |"]
    results = [json.loads(p.read_text()) for p in sorted((c.work / "results").glob("*.json"))]
    summary.append("| --- |" + " ---: |" * len(results))
    for key in PART_KEYS:
        summary.append(f"| {key} | " + " | ".join(str((r["start_parts"] or {}).get(key)) for r in results) + " |")
    (c.out / "summary.md").write_text("\n".join(summary) + "\n")
    c.say("\n".join(summary))
    c.save()
    c.progress.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    s = sub.add_parser("probe")
    s.add_argument("--model", required=True)
    s.add_argument("--backend", default="vllm")
    s.add_argument("--dtype", default="bfloat16")
    s.add_argument("--label", required=True)
    s.add_argument("--json", required=True)
    s.add_argument("--profile")
    s = sub.add_parser("call")
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--deadline-s", type=float, default=540)
    s.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    s.add_argument("--dry", action="store_true")
    a = p.parse_args()
    probe(a) if a.step == "probe" else call(a)


if __name__ == "__main__":
    main()
