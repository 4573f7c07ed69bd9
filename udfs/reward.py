"""The reward-model pandas UDF: text (and optionally a response) in, a score out.

The UDF is of the iterator form: each task's Arrow batches stream through one generator, which
tokenizes a batch, hands its token ids to the engine host of its GPU (``udfs.engine_host``,
started lazily by the first batch that needs it and kept for the life of the executor), and
keeps the next batch in flight while it waits, so the GPU does not idle between batches. A batch
goes to the engine in slices (128 rows by default), each sent as soon as it is tokenized, so the
engine starts on a task's first rows while the rest of its first batch is still being tokenized.

Rows that cannot be scored never sink a batch: null, empty or whitespace-only text gets a null
score and a reason before any engine sees it, and a row the engine refuses is isolated by
splitting its batch until only that row fails.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator

import pandas as pd

from udfs.engines import EngineSpec
from udfs.prompts import Prompter
from udfs.reasons import ENGINE_REJECTED, NON_FINITE

RESULT_TYPE = "struct<score:float,score_error:string,n_tokens:int,truncated:boolean>"


@dataclass
class ScoreSpec:
    """What every worker needs to score: the engine, the template and where the model is."""

    engine: EngineSpec
    template: str = "raw"
    model_manifest: list[tuple[str, int]] | None = None
    cache_dir: str = "/tmp/promptscore-models"
    inflight: int = 2
    slice_rows: int = 128
    start_timeout_s: float = 1800.0


_PROMPTERS: dict[tuple, Prompter] = {}


def cached_prompter(model_dir: str, template: str, max_len: int) -> Prompter:
    """This Python worker's Prompter for a tokenizer, template and length, built once."""
    key = (model_dir, template, max_len)
    if key not in _PROMPTERS:
        _PROMPTERS[key] = Prompter(model_dir, template, max_len)
    return _PROMPTERS[key]


def task_gpus() -> list[str] | None:
    """The GPU addresses Spark's resource scheduler gave the running task, if any."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return None
    gpu = ctx.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None and gpu.addresses else None


def isolate(client, rows: list[list[int]]) -> list[float | str]:
    """Score ``rows`` after the engine refused them together: split until each refusal is one row."""
    from udfs.engine_host import RowError

    if len(rows) == 1:
        try:
            return list(client.score(rows))
        except RowError as e:
            return [f"{ENGINE_REJECTED}: {e}"]
    mid = len(rows) // 2
    out: list[float | str] = []
    for part in (rows[:mid], rows[mid:]):
        try:
            out.extend(client.score(part))
        except RowError:
            out.extend(isolate(client, part))
    return out


class TaskStats:
    """What one task did, for the job report (sent back through an accumulator)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.rows = self.scored = self.tokens = 0
        self.engine_wait_s = 0.0
        self.busy_start: float | None = None
        self.idle_start: float | None = None
        self.host: dict[str, Any] = {}

    def as_dict(self, busy_end: float | None) -> dict[str, Any]:
        from pyspark import TaskContext

        from udfs.engine_host import owner_pid

        ctx = TaskContext.get()
        seconds = time.monotonic() - self.start
        return {
            "partition": ctx.partitionId() if ctx else None,
            "attempt": ctx.attemptNumber() if ctx else None,
            "worker_pid": os.getpid(),
            "executor_pid": owner_pid(),
            "engine_pid": self.host.get("pid"),
            "engine_device": self.host.get("device"),
            "engine_key": self.host.get("key"),
            "engine_start_s": self.host.get("engine_start_s"),
            "engine_cache_dir": self.host.get("cache_dir"),
            "engine_cache_warm": self.host.get("cache_warm"),
            "rows": self.rows,
            "scored": self.scored,
            "tokens": self.tokens,
            "seconds": round(seconds, 3),
            "engine_wait_s": round(self.engine_wait_s, 3),
            # The engine's busy seconds while this task ran (exact when one task uses the engine).
            "gpu_s": round(busy_end - self.busy_start, 3) if busy_end is not None and self.busy_start is not None else None,
            # The engine's lifetime counters at this task's start and end: seconds computing, and
            # seconds without rows to compute.
            "engine_busy_start_s": self.busy_start,
            "engine_busy_s": busy_end,
            "engine_idle_start_s": self.idle_start,
            "engine_idle_s": self.host.get("idle_s"),
            "prompts_per_s": round(self.rows / seconds, 2) if seconds else None,
            "tokens_per_s": round(self.tokens / seconds, 1) if seconds else None,
        }


def score_batches(spec: ScoreSpec, batches: Iterator[Any], stats: TaskStats | None = None,
                  gpus: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """The UDF's body: Arrow batches (a Series of texts, or a (texts, responses) tuple) in,
    DataFrames of ``score``, ``score_error``, ``n_tokens``, ``truncated`` out, in order."""
    from udfs import engine_host, staging

    stats = stats or TaskStats()
    model_dir = staging.local_model(spec.engine.model_dir, spec.cache_dir, spec.model_manifest)
    engine = dataclasses.replace(spec.engine, model_dir=model_dir)
    prompter = cached_prompter(model_dir, spec.template, engine.max_model_len)
    client = None
    pending: deque = deque()

    def finish_slice(enc, todo: list[int], rid: int | None) -> pd.DataFrame:
        n = len(enc.ids)
        scores: list[float | None] = [None] * n
        errors = list(enc.errors)
        if rid is not None:
            try:
                values: list[float | str] = list(client.result(rid))
            except engine_host.RowError:
                values = isolate(client, [enc.ids[i] for i in todo])
            for i, v in zip(todo, values):
                if isinstance(v, str):
                    errors[i] = v
                elif not math.isfinite(v):
                    errors[i] = NON_FINITE
                else:
                    scores[i] = v
        stats.rows += n
        stats.scored += sum(s is not None for s in scores)
        n_tokens = [len(x) if x is not None else None for x in enc.ids]
        stats.tokens += sum(t or 0 for t in n_tokens)
        return pd.DataFrame({
            "score": pd.array(scores, dtype="Float32"),
            "score_error": pd.array(errors, dtype="object"),
            "n_tokens": pd.array(n_tokens, dtype="Int32"),
            "truncated": pd.array(enc.truncated, dtype="boolean"),
        })

    def finish(slices: list) -> pd.DataFrame:
        frames = [finish_slice(*item) for item in slices]
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)

    step = max(1, spec.slice_rows)
    for batch in batches:
        if client is None:
            # Connect (and start the engine host, if this is the executor's first task) before
            # the tokenizer's threads run: a process that forks after them loses them.
            t0 = time.monotonic()
            client = engine_host.connect(engine, gpus, spec.start_timeout_s, spec.cache_dir)
            stats.engine_wait_s = time.monotonic() - t0
            stats.host = client.stats()
            stats.busy_start = stats.host.get("busy_s")
            stats.idle_start = stats.host.get("idle_s")
        if isinstance(batch, tuple):
            prompts, responses = batch[0].tolist(), batch[1].tolist()
        else:
            prompts, responses = batch.tolist(), None
        slices = []
        for lo in range(0, max(len(prompts), 1), step):
            enc = prompter.encode(prompts[lo:lo + step], responses[lo:lo + step] if responses is not None else None)
            todo = [i for i, ids in enumerate(enc.ids) if ids is not None]
            rid = client.submit([enc.ids[i] for i in todo]) if todo else None
            slices.append((enc, todo, rid))
        pending.append(slices)
        if len(pending) >= spec.inflight:
            yield finish(pending.popleft())
    while pending:
        yield finish(pending.popleft())
    if client is not None:
        stats.host = client.stats()


def make_udf(spec: ScoreSpec, accumulator=None, with_response: bool = False):
    """The pandas UDF (iterator form) returning ``RESULT_TYPE``; task stats go to ``accumulator``."""
    from pyspark.sql.functions import pandas_udf

    def run(batches):
        stats = TaskStats()
        yield from score_batches(spec, batches, stats, task_gpus())
        if accumulator is not None:
            accumulator.add([stats.as_dict(stats.host.get("busy_s"))])

    if with_response:
        def score_pairs(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
            yield from run(batches)
        return pandas_udf(score_pairs, RESULT_TYPE)

    def score_texts(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        yield from run(batches)
    return pandas_udf(score_texts, RESULT_TYPE)
