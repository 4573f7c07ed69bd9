"""Requests the jobs make beyond the reading itself, counted on the fake ``oss://`` of the tests.

    python bench/leftovers_bench.py [--files 64] [--json OUT]

Each figure is the difference between two whole ``spark-submit`` runs of a job (``jobs/*.py``,
the local profile's settings, ``local[2]``) that differ in one thing, from the requests every JVM
of a run counted (``tests/objectstore/FakeObjectStoreFileSystem.java``: head, list, open, create,
rename, delete) and the bytes its tasks read (Spark's event log, input metrics):

- the rejects' re-read: a run whose input has R files with a malformed line, against one without;
- examples of skipped files: S files of 1 MB with other names (``.txt``) beside the input;
- the bad-file search: one truncated ``.jsonl.gz`` among the input, against a whole one;
- ``--plan``: ``--sample-files 32`` against ``--sample-files 8`` (per sampled file);
- publishing: about 2 x --outputs output files (``--target-file-size``) against --outputs / 2
  (per output file; the write's own commit is in it too);
- resume: the score job run to its last chunk and failed before publishing
  (``PROMPTSCORE_TEST_FAIL_AT=staged``), then the same command again, reusing every chunk: the
  rerun's requests per input file and per reused chunk;
- the model on ``oss://`` (copied once, and its files' ranges read for the resume fingerprint):
  the score job with ``--model oss://...`` against a local model, both at ``--fp-delay-ms`` per
  request: the extra seconds against what the extra requests would take one after another (the
  executors copy such a model with the ``hadoop`` command: it must be on PATH).

Only the jobs' command lines and the tests' fake store are used, so the bench keeps working when
the package's modules move. Needs ``javac`` (for the fake store) and, for the score rows, the CPU
environment (``transformers``; the model is built by ``python -m promptscore.tools.tiny_model``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import fake_oss  # noqa: E402

BUCKET = "left"
OPS = ("head", "list", "open", "create", "rename", "delete")
CASES = ("rejects", "skipped", "skipped-bytes", "bad-gzip", "plan", "publish", "resume", "model")


def local_conf() -> list[str]:
    """conf/local.conf as ``--conf`` pairs."""
    out = []
    for line in (ROOT / "conf" / "local.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out += ["--conf", f"{key}={value.strip()}"]
    return out


def write_jsonl(path: Path, n_lines: int, seed: int, bad: bool = False, gz: bool = False) -> None:
    rng = random.Random(seed)
    lines = [json.dumps({"id": f"r{seed}-{i}", "prompt": " ".join(rng.choice(("alpha", "beta", "gamma", "delta"))
                                                                  for _ in range(40)),
                         "turns": rng.randint(1, 8)}) for i in range(n_lines)]
    if bad:
        lines.insert(n_lines // 2, '{"prompt": "cut off in the mid')
    data = ("\n".join(lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)


def make_input(bucket: Path, name: str, files: int, bad: int = 0, skipped: int = 0, truncated_gz: bool = False) -> str:
    """``files`` JSONL files (~25 KB) in 8 folders, two of them gzipped; ``bad`` of them with a
    malformed line; ``skipped`` 1 MB files of another name; one gzip cut short."""
    root = bucket / name
    shutil.rmtree(root, ignore_errors=True)
    for n in range(files):
        gz = n in (1, 2)
        path = root / f"{n % 8:02d}" / (f"part-{n:05d}.jsonl" + (".gz" if gz else ""))
        write_jsonl(path, 100, n, bad=n >= files - bad, gz=gz)
    for n in range(skipped):
        p = root / f"{n % 8:02d}" / f"notes-{n:03d}.txt"
        p.write_bytes(os.urandom(1 << 19).hex().encode())
    if truncated_gz:
        p = root / "00" / "part-cut.jsonl.gz"
        write_jsonl(p, 100, 999, gz=True)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    return f"oss://{BUCKET}/{name}"


def bytes_read(event_dir: Path) -> int:
    total = 0
    for log in event_dir.glob("*"):
        for line in log.read_text(errors="replace").splitlines():
            if '"SparkListenerTaskEnd"' in line:
                metrics = json.loads(line).get("Task Metrics") or {}
                total += int((metrics.get("Input Metrics") or {}).get("Bytes Read", 0))
    return total


class Runner:
    def __init__(self, work: Path, jar: Path, cores: int):
        import pyspark

        self.work, self.jar, self.cores = work, jar, cores
        self.root = work / "oss"
        self.bucket = self.root / BUCKET
        self.env = dict(os.environ)
        self.env["SPARK_HOME"] = os.path.dirname(pyspark.__file__)
        self.env["PYSPARK_PYTHON"] = self.env["PYSPARK_DRIVER_PYTHON"] = sys.executable
        self.env["PATH"] = f"{Path(sys.executable).parent}:{self.env['PATH']}"
        self.submit = str(Path(sys.executable).parent / "spark-submit")

    def run(self, label: str, job: str, args: list[str], delay_ms: int = 0, env: dict | None = None,
            ok: tuple[int, ...] = (0,), conf: tuple[str, ...] = ()) -> dict:
        counters = self.work / f"counts-{label}.jsonl"
        counters.unlink(missing_ok=True)
        events = self.work / f"events-{label}"
        shutil.rmtree(events, ignore_errors=True)
        events.mkdir(parents=True)
        cmd = [self.submit, "--master", f"local[{self.cores}]", *local_conf(),
               "--conf", "spark.ui.showConsoleProgress=false", "--conf", "spark.log.level=WARN",
               "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir=file://{events}",
               *(x for c in conf for x in ("--conf", c)),
               *fake_oss.submit_args(self.jar, self.root, delays_ms={"all": delay_ms} if delay_ms else None,
                                     counters_file=counters),
               f"jobs/{job}.py", *args]
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, env={**self.env, **(env or {})}, capture_output=True, text=True)
        wall = time.monotonic() - start
        (self.work / f"{label}.stderr").write_text(proc.stderr)
        if proc.returncode not in ok:
            raise SystemExit(f"{label}: exit {proc.returncode} (stderr in {self.work / f'{label}.stderr'})\n"
                             f"{proc.stderr[-3000:]}")
        counts = fake_oss.read_counts(counters)
        counts["bytes_read"] = bytes_read(events)
        counts["wall_s"] = round(wall, 1)
        counts["rc"] = proc.returncode
        print(f"  {label:<22} {wall:6.1f} s  " + " ".join(f"{op} {counts[op]}" for op in OPS)
              + f"  read {counts['bytes_read']:,} B", flush=True)
        return counts

    def report(self, out_uri: str) -> dict:
        return json.loads((self.bucket / out_uri.split(f"oss://{BUCKET}/", 1)[1] / "_report.json").read_text())


def diff(a: dict, b: dict) -> dict:
    return {k: a[k] - b[k] for k in (*OPS, "bytes_read")}


def fmt(d: dict, per: float = 1.0) -> str:
    return " | ".join(f"{d[op] / per:,.1f}" if per != 1 else f"{d[op]:,}" for op in (*OPS, "bytes_read"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=64, help="input files of the convert runs")
    p.add_argument("--bad", type=int, default=8, help="files with a malformed line (the rejects' re-read)")
    p.add_argument("--skipped", type=int, default=8, help="1 MB files of another name (skipped examples)")
    p.add_argument("--outputs", type=int, default=8, help="about the output files of the publish runs (half, twice)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--fp-delay-ms", type=int, default=100, help="delay per request of the two model runs")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    p.add_argument("--work", default=str(ROOT / "bench-data" / "leftovers"))
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()

    jar = fake_oss.build_jar()
    if jar is None:
        raise SystemExit("no javac: the fake oss:// needs a JDK")
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    r = Runner(work, jar, a.cores)
    shutil.rmtree(r.bucket, ignore_errors=True)
    r.bucket.mkdir(parents=True)
    n = a.files
    cases = {c.strip() for c in a.cases.split(",") if c.strip()}
    if cases - set(CASES):
        raise SystemExit(f"unknown --cases: {', '.join(sorted(cases - set(CASES)))}")
    base_in = make_input(r.bucket, "in-base", n)
    res: dict[str, dict] = {}
    rows: list[tuple[str, str, dict, float, str]] = []

    def convert(label: str, inp: str, *extra: str, ok=(0,)) -> dict:
        out = f"oss://{BUCKET}/out-{label}"
        shutil.rmtree(r.bucket / f"out-{label}", ignore_errors=True)
        res[label] = r.run(label, "convert", ["--input", inp, "--output", out, *extra], ok=ok)
        if (r.bucket / f"out-{label}" / "_report.json").is_file():
            res[label]["report"] = r.report(out)
        return res[label]

    print("convert runs:", flush=True)
    base = {}
    if cases & {"rejects", "skipped", "bad-gzip", "resume", "model"}:
        base = convert("base", base_in, "--max-bad-fraction", "1")
    if "rejects" in cases:
        rej = convert("rejects", make_input(r.bucket, "in-rejects", n, bad=a.bad), "--max-bad-fraction", "1")
        rows.append(("the rejects' re-read: per file holding rejects", f"{a.bad} such files of {n}",
                     diff(rej, base), a.bad, "rejects vs base"))
    if "skipped" in cases:
        skp = convert("skipped", make_input(r.bucket, "in-skipped", n, skipped=a.skipped), "--max-bad-fraction", "1")
        rows.append(("examples of skipped files: per skipped 1 MB file", f"{a.skipped} files",
                     diff(skp, base), a.skipped, "skipped vs base"))
    if "skipped-bytes" in cases:
        # The fake store's streams do not count bytes for Spark's input metrics; the local file
        # system does: the same pair on local disk says how many bytes the examples cost.
        for label, name in (("base-local", "in-base"), ("skipped-local", "in-skipped")):
            if not (r.bucket / name).is_dir():
                make_input(r.bucket, name, n, skipped=a.skipped if name == "in-skipped" else 0)
            out = work / f"out-{label}"
            shutil.rmtree(out, ignore_errors=True)
            res[label] = r.run(label, "convert", ["--input", str(r.bucket / name), "--output", str(out),
                                                  "--max-bad-fraction", "1"])
        skipped_bytes = sum(f.stat().st_size for f in (r.bucket / "in-skipped").rglob("*.txt"))
        rows.append(("examples of skipped files, local disk: per skipped 1 MB file",
                     f"{a.skipped} files, {skipped_bytes:,} B", diff(res["skipped-local"], res["base-local"]),
                     a.skipped, "skipped-local vs base-local"))
    if "bad-gzip" in cases:
        bad = convert("bad-gzip", make_input(r.bucket, "in-badgz", n, truncated_gz=True), "--max-bad-fraction", "1")
        rows.append(("the bad-file search: one truncated .jsonl.gz", "1 file", diff(bad, base), 1,
                     "bad-gzip vs base"))
    if "plan" in cases:
        p8 = convert("plan-8", base_in, "--plan", "--sample-files", "8")
        p32 = convert("plan-32", base_in, "--plan", "--sample-files", "32")
        rows.append(("`--plan`: per sampled file", "32 against 8 sampled", diff(p32, p8), 24, "plan-32 vs plan-8"))
    if "publish" in cases:
        # Two runs that differ only in how many output files they write (--target-file-size; both
        # sample the compression ratio, which a run of more files than task slots does).
        total_kb = sum(f.stat().st_size for f in (r.bucket / "in-base").rglob("*") if f.is_file()) // 1024
        few = convert("publish-few", base_in, "--max-bad-fraction", "1", "--target-file-size",
                      f"{max(1, total_kb // (4 * a.outputs // 2))}k")
        many = convert("publish-many", base_in, "--max-bad-fraction", "1", "--target-file-size",
                       f"{max(1, total_kb // (4 * a.outputs * 2))}k")
        k = many.get("report", {}).get("output_files", 0) - few.get("report", {}).get("output_files", 0)
        rows.append(("writing and publishing: per output file",
                     f"{many.get('report', {}).get('output_files', 0)} against "
                     f"{few.get('report', {}).get('output_files', 0)} output files", diff(many, few), max(1, k),
                     "publish-many vs publish-few"))

    if cases & {"resume", "model"}:
        print("score runs:", flush=True)
        model_local = work / "tiny-model"
        if not (model_local / "config.json").is_file():
            subprocess.run([sys.executable, "-m", "promptscore.tools.tiny_model", str(model_local)], cwd=ROOT, check=True,
                           capture_output=True)
        shutil.rmtree(r.bucket / "model", ignore_errors=True)
        shutil.copytree(model_local, r.bucket / "model")
        model_files = sum(1 for f in (r.bucket / "model").rglob("*") if f.is_file())
        src = f"oss://{BUCKET}/out-base"
        in_files = len(list((r.bucket / "out-base").glob("*.parquet")))
        # Small chunks, so that the input is several chunks.
        chunks = ("spark.promptscore.score.maxChunkBytes=65536",)
        out = f"oss://{BUCKET}/scored"
        shutil.rmtree(r.bucket / "scored", ignore_errors=True)
        common = ["--input", src, "--output", out, "--model", str(model_local), "--max-bad-fraction", "1"]
    if "resume" in cases:
        first = r.run("score-fail-staged", "score", common, env={"PROMPTSCORE_TEST_FAIL_AT": "staged"},
                      ok=tuple(range(1, 11)), conf=chunks)
        again = r.run("score-resume", "score", common, conf=chunks)
        rep = r.report(out)
        reused = rep.get("resume", {}).get("chunks_resumed", 0)
        res["score-fail-staged"], res["score-resume"] = first, again
        rows.append(("resume: the rerun that reuses every chunk (whole run)",
                     f"{in_files} input files, {reused} chunks reused, {rep.get('rows', 0):,} rows",
                     {k2: again[k2] for k2 in (*OPS, "bytes_read")}, 1, "score-resume"))
    if "model" in cases:
        delay = a.fp_delay_ms
        for where, model in (("local", str(model_local)), ("oss", f"oss://{BUCKET}/model")):
            o = f"oss://{BUCKET}/scored-model-{where}"
            shutil.rmtree(r.bucket / f"scored-model-{where}", ignore_errors=True)
            res[f"model-{where}"] = r.run(f"score-model-{where}-{delay}ms", "score",
                                          ["--input", src, "--output", o, "--model", model, "--max-bad-fraction",
                                           "1", "--cache-dir", str(work / f"cache-{where}")], delay_ms=delay)
            shutil.rmtree(work / f"cache-{where}", ignore_errors=True)
        d = diff(res["model-oss"], res["model-local"])
        extra_s = res["model-oss"]["wall_s"] - res["model-local"]["wall_s"]
        requests = sum(d[op] for op in ("head", "list", "open"))
        res["fingerprint"] = {"model_files": model_files, "extra_s": extra_s, "model_requests": requests,
                              "one_after_another_s": requests * delay / 1000}
        rows.append((f"the model on oss:// against a local model, {delay} ms per request",
                     f"{model_files} model files; {requests} more requests, +{extra_s:.1f} s (one after another "
                     f"they would take {requests * delay / 1000:.1f} s)", d, 1, "model-oss vs model-local"))

    print()
    print(f"Command: python bench/leftovers_bench.py --files {a.files} --bad {a.bad} --skipped {a.skipped} "
          f"--outputs {a.outputs} --cases {','.join(c for c in CASES if c in cases)}")
    print(f"Load average after the runs: {os.getloadavg()[0]:.1f}")
    print()
    print("| what | case | " + " | ".join(OPS) + " | bytes read | runs compared |")
    print("| --- | --- |" + " ---: |" * (len(OPS) + 1) + " --- |")
    for what, case, d, per, how in rows:
        print(f"| {what} | {case} | {fmt(d, per)} | {how} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"results": res, "rows": [
            {"what": w, "case": c, "diff": d, "per": p_, "compared": h} for w, c, d, p_, h in rows]},
            indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
