"""The reward-model pandas UDF: text (and optionally a response) in, a score out.

The UDF is of the iterator form: each task's Arrow batches stream through one generator, which
tokenizes a batch, hands its token ids to the engine host of its GPU (``udfs.engine_host``,
started lazily by the first batch that needs it and kept for the life of the executor), and
keeps the next batch in flight while it waits, so the GPU does not idle between batches. A batch
goes to the engine in slices (128 rows by default), each sent as soon as it is tokenized, so the
engine starts on a task's first rows while the rest of its first batch is still being tokenized.
No more than ``max_rows_in_flight`` rows of a task are with the engine at once, however far Spark
reads ahead. Each task reports the rows whose scores are back, and its engine's start, to the
driver's progress line (``udfs.live``).

Rows that cannot be scored never sink a batch: null, empty or whitespace-only text gets a null
score and a reason before any engine sees it, and a row the engine refuses is isolated by
splitting its batch until only that row fails.
"""

from __future__ import annotations

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
    # Rows of one task with the engine at once (the engine host holds no more of them).
    max_rows_in_flight: int = 2048
    # Times a task starts its engine host again after losing it, before the task fails.
    engine_restarts: int = 1
    # The driver's live status server (promptscore.progress.StatusServer), if any.
    status_address: tuple[str, int] | None = None
    status_token: str | None = None


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
    from udfs.host_files import RowError

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
        self.started_at = time.time()
        self.rows = self.scored = self.tokens = 0
        self.engine_wait_s = 0.0
        self.restarts = 0
        self.busy_start: float | None = None
        self.idle_start: float | None = None
        self.host: dict[str, Any] = {}

    def as_dict(self, busy_end: float | None) -> dict[str, Any]:
        from pyspark import TaskContext

        from udfs.host_files import owner_pid

        ctx = TaskContext.get()
        seconds = time.monotonic() - self.start
        return {
            "partition": ctx.partitionId() if ctx else None,
            "attempt": ctx.attemptNumber() if ctx else None,
            "started_at": round(self.started_at, 3),
            "worker_pid": os.getpid(),
            "executor_pid": owner_pid(),
            "engine_pid": self.host.get("pid"),
            "engine_device": self.host.get("device"),
            "engine_key": self.host.get("key"),
            "engine_start_s": self.host.get("engine_start_s"),
            "engine_cache_dir": self.host.get("cache_dir"),
            "engine_cache_warm": self.host.get("cache_warm"),
            # Where the engine's start went (udfs.start_parts), who started it, and when (epoch
            # seconds) its process began and it was ready.
            "engine_start_parts": self.host.get("engine_start_parts"),
            "engine_started_by": self.host.get("started_by"),
            "engine_process_started_at": self.host.get("process_started_at"),
            "engine_ready_at": self.host.get("started_at"),
            "rows": self.rows,
            "scored": self.scored,
            "tokens": self.tokens,
            "seconds": round(seconds, 3),
            "engine_wait_s": round(self.engine_wait_s, 3),
            "engine_restarts": self.restarts,
            # The engine's busy seconds while this task ran (exact when one task uses the engine).
            "gpu_s": (round(busy_end - self.busy_start, 3)
                      if busy_end is not None and self.busy_start is not None else None),
            # The engine's lifetime counters at this task's start and end: seconds computing, and
            # seconds without rows to compute.
            "engine_busy_start_s": self.busy_start,
            "engine_busy_s": busy_end,
            "engine_idle_start_s": self.idle_start,
            "engine_idle_s": self.host.get("idle_s"),
            "prompts_per_s": round(self.rows / seconds, 2) if seconds else None,
            "tokens_per_s": round(self.tokens / seconds, 1) if seconds else None,
        }


class _Slice:
    """Up to ``slice_rows`` rows of a batch: their encoding, which of them go to the engine, the
    request that carries them and, once back, their values."""

    __slots__ = ("enc", "todo", "rid", "values")

    def __init__(self, enc, todo: list[int]):
        self.enc, self.todo, self.rid, self.values = enc, todo, None, None


def score_batches(spec: ScoreSpec, batches: Iterator[Any], stats: TaskStats | None = None,
                  gpus: list[str] | None = None, live=None) -> Iterator[pd.DataFrame]:
    """The UDF's body: Arrow batches (a Series of texts, or a (texts, responses) tuple) in,
    DataFrames of ``score``, ``score_error``, ``n_tokens``, ``truncated`` out, in order.

    At most ``spec.max_rows_in_flight`` rows are with the engine at once (the oldest slice's
    scores are awaited before more are sent) and at most ``spec.inflight`` batches are held.
    An engine host that goes away mid-task (killed, out of memory) is started again and given
    the rows it had not answered, ``spec.engine_restarts`` times per task; every row is still
    scored once. ``live`` (a ``udfs.live.TaskReporter``) hears the rows whose scores are back
    and the engine's state while the task waits for it to start (or, while the task prepares,
    the state of a host the job's prestart started)."""
    run = _TaskRun(spec, stats or TaskStats(), gpus, live)
    pending: deque[list[_Slice]] = deque()  # batches not yet handed back
    for batch in batches:
        if run.client is None:
            # Connect (and start the engine host, if this is the executor's first task) before
            # the tokenizer's threads run: a process that forks after them loses them.
            t0 = time.monotonic()
            run.stats.host = run.connect()  # an engine that cannot start fails the task at once
            run.stats.engine_wait_s = time.monotonic() - t0
            run.stats.busy_start = run.stats.host.get("busy_s")
            run.stats.idle_start = run.stats.host.get("idle_s")
        pending.append(run.send_batch(batch))
        if len(pending) >= spec.inflight:
            yield run.finish(pending.popleft())
    while pending:
        yield run.finish(pending.popleft())
    run.last_stats()


class _TaskRun:
    """One task's rows on their way to the engine and back (see ``score_batches``)."""

    def __init__(self, spec: ScoreSpec, stats: TaskStats, gpus: list[str] | None, live):
        from udfs import engine_client
        from udfs.engines import EngineError

        self.spec, self.stats, self.gpus, self.live = spec, stats, gpus, live
        try:
            self.key: str | None = engine_client.key_for(spec.engine, gpus)
        except EngineError:
            self.key = None  # no device for this engine: said when the first batch connects
        if live is not None:  # a host already starting (the job's prestart) is reported as such
            live.engine = self._prestarted
        self.engine = engine_client.local_spec(spec.engine, spec.cache_dir, spec.model_manifest)
        self.prompter = cached_prompter(self.engine.model_dir, spec.template, self.engine.max_model_len)
        self.limit = max(1, spec.max_rows_in_flight)
        self.client = None
        self.sent: deque[_Slice] = deque()  # slices with the engine, oldest first
        self.in_flight = 0
        self.done_rows = 0

    def _prestarted(self) -> dict[str, Any] | None:
        from udfs.host_files import host_state
        from udfs.live import engine_state

        host = host_state(self.key) if self.key is not None else None
        return engine_state(self.key, time.monotonic(), host=host) if host is not None else None

    def connect(self) -> dict[str, Any]:
        from udfs import engine_client, host_files
        from udfs.live import engine_state

        key, live, waiting = engine_client.key_for(self.engine, self.gpus), self.live, time.monotonic()
        if live is not None:
            live.engine = lambda: engine_state(key, waiting, host=host_files.host_state(key))
            live.preparing_since = None
        self.client = engine_client.connect(self.engine, self.gpus, self.spec.start_timeout_s, self.spec.cache_dir,
                                          self.limit)
        info = self.client.stats()
        if live is not None:
            start_s = info.get("engine_start_s")
            live.engine = lambda: engine_state(key, None, start_s, info)
        return info

    def restart(self, error: Exception) -> None:
        """Start the engine host again and send it every slice the lost one had not answered."""
        if self.stats.restarts >= self.spec.engine_restarts:
            raise error
        self.stats.restarts += 1
        self.stats.host = self.connect()
        self.stats.busy_start = self.stats.host.get("busy_s")
        self.stats.idle_start = self.stats.host.get("idle_s")
        for sl in self.sent:
            sl.rid = self.client.submit([sl.enc.ids[i] for i in sl.todo])

    def with_engine(self, call):
        from udfs.engines import EngineError

        while True:
            try:
                return call()
            except EngineError as e:
                self.restart(e)

    def _send(self, sl: _Slice) -> None:
        sl.rid = self.client.submit([sl.enc.ids[i] for i in sl.todo])

    def _answer(self, sl: _Slice) -> list[float | str]:
        from udfs import host_files

        try:
            return list(self.client.result(sl.rid))
        except host_files.RowError:
            return isolate(self.client, [sl.enc.ids[i] for i in sl.todo])

    def _done(self, sl: _Slice) -> None:
        self.done_rows += len(sl.enc.ids)
        if self.live is not None:
            self.live.rows = self.done_rows

    def await_oldest(self) -> None:
        sl = self.sent[0]
        sl.values = self.with_engine(lambda: self._answer(sl))
        self.sent.popleft()
        self.in_flight -= len(sl.todo)
        self._done(sl)

    def send_batch(self, batch) -> list[_Slice]:
        """Tokenize a batch slice by slice, sending each to the engine as soon as it is tokenized."""
        if isinstance(batch, tuple):
            prompts, responses = batch[0].tolist(), batch[1].tolist()
        else:
            prompts, responses = batch.tolist(), None
        step = max(1, self.spec.slice_rows)
        slices = []
        for lo in range(0, max(len(prompts), 1), step):
            enc = self.prompter.encode(prompts[lo:lo + step],
                                       responses[lo:lo + step] if responses is not None else None)
            sl = _Slice(enc, [i for i, ids in enumerate(enc.ids) if ids is not None])
            slices.append(sl)
            if not sl.todo:  # nothing for the engine (null or empty texts): done already
                self._done(sl)
                continue
            while self.sent and self.in_flight + len(sl.todo) > self.limit:
                self.await_oldest()
            self.with_engine(lambda sl=sl: self._send(sl))
            self.sent.append(sl)
            self.in_flight += len(sl.todo)
        return slices

    def finish_slice(self, sl: _Slice) -> pd.DataFrame:
        enc, stats = sl.enc, self.stats
        n = len(enc.ids)
        scores: list[float | None] = [None] * n
        errors = list(enc.errors)
        for i, v in zip(sl.todo, sl.values or []):
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

    def finish(self, slices: list[_Slice]) -> pd.DataFrame:
        """A batch's DataFrame, once every slice of it is back."""
        while any(sl.todo and sl.values is None for sl in slices):
            self.await_oldest()
        frames = [self.finish_slice(sl) for sl in slices]
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)

    def last_stats(self) -> None:
        from udfs.engines import EngineError

        if self.client is not None:
            try:
                self.stats.host = self.client.stats()
            except EngineError:
                pass  # every row is back already: a host lost now costs this task nothing


def make_udf(spec: ScoreSpec, accumulator=None, with_response: bool = False):
    """The pandas UDF (iterator form) returning ``RESULT_TYPE``; task stats go to ``accumulator``."""
    from pyspark.sql.functions import pandas_udf

    def run(batches):
        from udfs.live import reporter_for_task

        stats = TaskStats()
        live = reporter_for_task(spec.status_address, spec.status_token)
        try:
            yield from score_batches(spec, batches, stats, task_gpus(), live)
        finally:
            if live is not None:
                live.close()
        if accumulator is not None:
            accumulator.add([stats.as_dict(stats.host.get("busy_s"))])

    if with_response:
        def score_pairs(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
            yield from run(batches)
        return pandas_udf(score_pairs, RESULT_TYPE)

    def score_texts(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        yield from run(batches)
    return pandas_udf(score_texts, RESULT_TYPE)
