"""The score job's write: every chunk not committed yet scored by a Spark write of its own,
several at a time from driver threads, each committed when done (``pieces``)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from pyspark.sql import Observation, SparkSession
from pyspark.sql import functions as F

from promptscore import progress
from promptscore.frames import list_accumulator
from promptscore.io import files, hadoop, output, publish
from promptscore.score import pieces
from promptscore.score.options import ScoreOptions
from promptscore.score.plan import ScorePlan, conf_int, score_slots
from promptscore.score.progress import ScoreProgress
from promptscore.score.rows import COUNTS, final_rows, merge_counts, observed_metrics, score_rows

MAX_ROWS_IN_FLIGHT_CONF = "spark.promptscore.score.maxRowsInFlight"


@dataclass
class ScoreResult:
    """What the chunk writes committed (this run's and the reused ones) and what they observed."""

    metrics: dict
    tasks: list[dict]
    write_s: float
    output_files: list[files.File]
    resume: dict = field(default_factory=dict)
    this_run: dict = field(default_factory=dict)


def execute_score(spark: SparkSession, opts: ScoreOptions, plan: ScorePlan, out: output.Output,
                  pcs: pieces.Pieces, rp: pieces.ResumePlan) -> ScoreResult:
    """Score every chunk not committed yet into the pieces (several at a time), then gather the
    counts of all of them and list the output files."""
    from udfs.reward import ScoreSpec, make_udf

    interval = progress.interval_s(spark)
    status = progress.StatusServer.for_session(spark) if interval > 0 and rp.todo else None
    spec = ScoreSpec(engine=plan.engine, template=opts.template, model_manifest=plan.manifest,
                     cache_dir=opts.cache_dir,
                     max_rows_in_flight=conf_int(spark, MAX_ROWS_IN_FLIGHT_CONF, ScoreSpec.max_rows_in_flight),
                     status_address=status.address if status else None, status_token=status.token if status else None)
    tasks_acc = list_accumulator(spark)
    udf = make_udf(spec, tasks_acc, with_response=opts.response_col is not None)
    resumed_rows = sum(int(m.counts.get("rows", 0)) for m in rp.reused)
    state = ScoreProgress(spark, plan.input_rows, len(rp.reused) + len(rp.todo), resumed_rows, len(rp.reused),
                          status)
    writer = _ChunkWriter(spark, opts, plan, out, pcs, udf, state, sum(c.bytes for c in rp.todo) or 1)
    start = time.monotonic()
    concurrency = conf_int(spark, pieces.CONCURRENT_CONF, score_slots(spark))
    if rp.todo:
        try:
            with progress.Reporter(state.line, interval):
                _write_all(spark, writer, rp.todo, concurrency, state)
        finally:
            if status is not None:
                status.shutdown()
    write_s = time.monotonic() - start
    tasks = sorted(tasks_acc.value, key=lambda t: (t["partition"] is None, t["partition"], t["attempt"]))
    every = rp.reused + writer.markers
    resume = {
        "fingerprint": plan.fp, "chunks": len(every), "chunks_resumed": len(rp.reused),
        "chunks_scored": len(writer.markers), "resumed_rows": resumed_rows, "chunks_dropped": rp.dropped,
        "orphan_files_removed": rp.orphans, "concurrent_chunks": concurrency,
        "chunk_bytes": rp.target_bytes, "basis": {k: v for k, v in plan.basis.items() if k != "schema"},
    }
    return ScoreResult(merge_counts([m.counts for m in every]), tasks, write_s,
                       files.list_data_files(spark, pcs.parts), resume,
                       merge_counts([m.counts for m in writer.markers]))


class _ChunkWriter:
    """Scores one chunk into ``tmp/<chunk>/`` by a Spark write of its own and commits it; called
    from several driver threads at once."""

    def __init__(self, spark: SparkSession, opts: ScoreOptions, plan: ScorePlan, out: output.Output,
                 pcs: pieces.Pieces, udf, state: ScoreProgress, total_bytes: int):
        self.spark, self.opts, self.plan, self.out, self.pcs = spark, opts, plan, out, pcs
        self.udf, self.state, self.total_bytes = udf, state, total_bytes
        self.markers: list[pieces.Marker] = []
        self.cancel = threading.Event()

    def __call__(self, chunk: pieces.Chunk) -> None:
        if self.cancel.is_set():
            return
        spark, opts, pcs = self.spark, self.opts, self.pcs
        paths = [hadoop.encoded_uri(spark, f.path) for f in chunk.files]
        df = self.plan.df.where(F.col("_metadata.file_path").isin(paths))
        if opts.partitions:
            df = df.repartition(max(1, round(opts.partitions * chunk.bytes / self.total_bytes)))
        obs = Observation(f"chunk-{chunk.id}-{self.out.run_id}")
        group = f"{output.new_group('score')}-{chunk.id}"
        self.state.begin(group)
        rows = None
        try:
            start = time.monotonic()
            hadoop.delete(spark, pcs.tmp(chunk))
            output.write_parquet(spark, final_rows(observed_metrics(score_rows(df, self.udf, opts.text_col,
                                                                               opts.response_col), obs)),
                                 pcs.tmp(chunk), opts.out.compression, group)
            got = obs.get  # each .get reads the whole map from the JVM
            counts = {k: got[k] for k in COUNTS}
            self.out.verify_lock()  # a run whose lock was taken over commits nothing more
            marker = pcs.commit(chunk, self.out.run_id, counts, time.monotonic() - start)
            self.markers.append(marker)
            rows = int(counts["rows"])
        finally:
            self.state.end(group, rows)
        publish.pause_point("chunk-committed")


def _write_all(spark: SparkSession, writer: _ChunkWriter, todo: list[pieces.Chunk], concurrency: int,
               state: ScoreProgress) -> None:
    """Run ``writer`` over ``todo``, ``concurrency`` at a time; on the first failure, cancel the
    rest (their Spark jobs too) and raise it."""
    with ThreadPoolExecutor(max_workers=min(concurrency, len(todo)), thread_name_prefix="promptscore-chunk") as pool:
        futures = [pool.submit(writer, c) for c in todo]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in finished if f.exception() is not None), None)
        if failed is not None:
            writer.cancel.set()
            for f in futures:
                f.cancel()
            for group in list(state.running):
                spark.sparkContext.cancelJobGroup(group)
            wait(futures)
            raise failed.exception()
