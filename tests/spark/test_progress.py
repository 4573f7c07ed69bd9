"""Progress lines that tell the truth: captured from real runs with a short interval, each line is
checked against what had been done when it was printed (read right after it): the score job's
rows against the rows its engine host had scored, the convert job's lines and bytes against the
files the object store had served. And the driver's status server on its own."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time

import fake_oss
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_job

from promptscore import progress
from promptscore.convert import reader
from promptscore.frames import session_conf
from udfs import engine_client, host_files


class Recorder:
    """Stands in for ``progress.Reporter``: the same thread and interval, but each line is kept
    with what ``measure()`` says right after it is made (work done then: a bound the line's
    numbers must stay under)."""

    def __init__(self, measure):
        self.measure = measure
        self.lines: list[tuple[str, object]] = []
        recorder = self

        class Reporter(progress.Reporter):
            def __init__(self, line, interval, printer=None):
                super().__init__(line, interval, recorder.record)

        self.cls = Reporter

    def record(self, text: str) -> None:
        self.lines.append((text, self.measure()))


@contextlib.contextmanager
def bucket_settings(spark, **emu):
    """``fs.oss.emu.*`` settings for the file system of a bucket first used inside this block
    (Hadoop keeps one instance per bucket, made with the settings of its first use)."""
    hconf = spark.sparkContext._jsc.hadoopConfiguration()
    keys = fake_oss.hadoop_conf(**emu)
    for k, v in keys.items():
        hconf.set(k, v)
    try:
        yield
    finally:
        for k in keys:
            hconf.unset(k)


# ---------------------------------------------------------------------------------------------
# The status server


def _task(server, group, partition, attempt):
    sock = socket.create_connection(server.address, timeout=5)
    sock.sendall((json.dumps({"token": server.token, "group": group, "stage": 3, "partition": partition,
                              "attempt_id": attempt}) + "\n").encode())
    return sock


def _say(sock, **msg):
    sock.sendall((json.dumps(msg) + "\n").encode())


def _until(cond, timeout=10):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.02)


def test_status_server_counts_open_groups_latest_attempts_and_live_engines():
    server = progress.StatusServer("127.0.0.1", "127.0.0.1", stale_s=1.0)
    try:
        server.open("g1")
        a = _task(server, "g1", 0, 7)
        _say(a, rows=0, engine=None, preparing_s=2.5)
        _until(lambda: server.engine_states()["preparing"] == 1)
        assert server.engine_states()["preparing_s"] >= 2.5
        _say(a, rows=128, engine={"node": "n1", "key": "gpu0", "state": "starting", "pid": 42, "for_s": 12.0})
        _until(lambda: server.rows("g1") == 128)
        states = server.engine_states()
        assert states["starting"] == 1 and states["ready"] == 0 and states["starting_s"] >= 12.0
        # A retried task (a later attempt of the same partition) starts again from nothing.
        b = _task(server, "g1", 0, 9)
        _say(b, rows=5, engine={"node": "n1", "key": "gpu0", "state": "ready", "pid": 42, "start_s": 14.0})
        _until(lambda: server.rows("g1") == 5)
        _say(a, rows=256, engine=None)  # the old attempt, still talking: not counted
        # A task still waiting on a host that is up by now does not turn it back to starting.
        _say(a, rows=256, engine={"node": "n1", "key": "gpu0", "state": "starting", "pid": 42, "for_s": 13.0})
        time.sleep(0.3)
        assert server.rows("g1") == 5 and server.engine_states()["ready"] == 1
        # A group not open (not started, or committed and closed) counts nothing.
        c = _task(server, "other", 1, 1)
        _say(c, rows=1000, engine=None)
        server.close("g1")
        time.sleep(0.3)
        assert server.rows("g1") == 0 and server.rows("other") == 0
        # Without the token, nothing is heard.
        server.open("g2")
        bad = socket.create_connection(server.address, timeout=5)
        bad.sendall(b'{"token": "guess", "group": "g2", "stage": 1, "partition": 0, "attempt_id": 1}\n')
        bad.sendall(b'{"rows": 99, "engine": null}\n')
        time.sleep(0.3)
        assert server.rows("g2") == 0
        # An engine no task reported on lately no longer counts.
        time.sleep(1.2)
        assert server.engine_states() == {"ready": 0, "starting": 0, "starting_s": 0.0, "preparing": 0,
                                          "preparing_s": 0.0}
        for s in (a, b, c, bad):
            s.close()
    finally:
        server.shutdown()


# ---------------------------------------------------------------------------------------------
# The score job


ROWS = re.compile(r"([\d,]+) / ([\d,]+) rows scored")


def _num(text: str) -> int:
    return int(text.replace(",", ""))


class HostRows:
    """Rows the session's engine host (local mode: one, keyed by the Spark JVM) has scored."""

    def __init__(self, spark):
        self.key = f"cpu-{spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()}"
        self.client: engine_client.EngineClient | None = None

    def __call__(self) -> int:
        for _ in range(2):
            if self.client is None:
                conn = engine_client._try_connect(host_files.paths_for(self.key).sock)
                if conn is None:
                    return 0
                self.client = engine_client.EngineClient(conn, self.key)
            try:
                return int(self.client.stats()["rows"])
            except Exception:  # noqa: BLE001 - a host on its way out: ask the next one
                self.client = None
        return 0

    def stop_host(self) -> None:
        """Shut the running host down, so that the next task starts an engine."""
        conn = engine_client._try_connect(host_files.paths_for(self.key).sock)
        if conn is not None:
            engine_client.EngineClient(conn, self.key).shutdown()
        _until(lambda: host_files.host_state(self.key) is None, timeout=60)
        self.client = None


def test_score_progress_never_counts_a_row_before_its_score_is_back(spark, tiny_model, tmp_path, capsys,
                                                                   monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for f in range(6):
        pq.write_table(pa.table({"id": list(range(f * 400, f * 400 + 400)),
                                 "prompt": [f"prompt {i}: " + "words " * (i % 29 + 1)
                                            for i in range(f * 400, f * 400 + 400)]}),
                       src / f"part-{f}.parquet")
    host_rows = HostRows(spark)
    host_rows.stop_host()  # a fresh engine (its row count starts at 0) and its start to watch
    recorder = Recorder(host_rows)
    monkeypatch.setattr(progress, "Reporter", recorder.cls)
    # the tasks wait for the engine to start (no prestart), so its start is a phase of the line
    with session_conf(spark, {progress.INTERVAL_CONF: "0.3", "spark.promptscore.score.prestart": "false"}):
        code, _, err = run_job("score", ["--input", src, "--output", tmp_path / "out", "--model", tiny_model],
                               capsys)
    assert code == 0, err
    lines = [(text, scored) for text, scored in recorder.lines if text.startswith("score: ")]
    assert lines, recorder.lines
    claims = []
    for text, scored in lines:
        m = ROWS.search(text)
        assert m and _num(m.group(2)) == 2400, text
        claims.append(_num(m.group(1)))
        # Rows of committed chunks plus rows scored in running ones: never more than scored.
        assert claims[-1] <= scored, (text, scored)
    preparing = [t for t, _ in lines if t.startswith("score: tasks preparing (")]
    assert all(" so far; 0 / 2,400 rows scored; chunks 0 / 6 done" in t for t in preparing), lines
    starting = [t for t, _ in lines if t.startswith("score: engines starting (")]
    assert starting and all(" so far; 0 / 2,400 rows scored; chunks 0 / 6 done" in t for t in starting), lines
    assert any(0 < c < 2400 for c in claims), lines  # live, between commits
    assert claims == sorted(claims)
    scoring = [t for t, c in zip([t for t, _ in lines], claims) if c > 0]
    assert scoring and all("rows/s, ETA" in t and "engine(s) scoring" in t for t in scoring), lines


# ---------------------------------------------------------------------------------------------
# The convert job


CONVERT = re.compile(r"convert: (?:.* read \((?P<pct>[\d.]+)%\), (?P<lines>[\d,]+) lines"
                     r"|(?P<lines0>[\d,]+) lines read of)")


@pytest.mark.parametrize("read_ahead", ["16", "0"])
def test_convert_progress_never_claims_more_than_the_files_read(spark, oss_bucket, tmp_path, capsys, monkeypatch,
                                                               read_ahead):
    files, per_file = 300, 5
    for i in range(files):
        lines = [json.dumps({"prompt": f"p{i:05d}-{j}"}) for j in range(per_file)]
        oss_bucket.path(f"in/f{i:05d}.jsonl").parent.mkdir(parents=True, exist_ok=True)
        oss_bucket.path(f"in/f{i:05d}.jsonl").write_text("\n".join(lines) + "\n")
    size = oss_bucket.path("in/f00000.jsonl").stat().st_size
    total = files * size

    def opened() -> int:  # GETs of input files (this test's only GETs): an upper bound on work done
        return fake_oss.counts(spark)["open"]

    recorder = Recorder(opened)
    monkeypatch.setattr(progress, "Reporter", recorder.cls)
    with bucket_settings(spark, delays_ms={"open": 15}), \
            session_conf(spark, {progress.INTERVAL_CONF: "0.05", reader.KEY: read_ahead}):
        fake_oss.reset_counts(spark)
        code, _, err = run_job("convert", ["--input", oss_bucket / "in", "--output", oss_bucket / "out",
                                           "--schema", "prompt string", "--sample-files", "0"], capsys)
    assert code == 0, err
    report = json.loads(oss_bucket.path("out/_report.json").read_text())
    assert report["rows_written"] == files * per_file
    lines = [(t, n) for t, n in recorder.lines if t.startswith("convert: ")]
    assert lines
    for text, opens in lines:
        m = CONVERT.match(text)
        assert m, text
        claimed_lines = _num(m.group("lines") or m.group("lines0"))
        assert claimed_lines <= opens * per_file, (text, opens)
        if m.group("pct"):
            assert float(m.group("pct")) / 100 * total <= opens * size + 0.0005 * total, (text, opens)
    if read_ahead == "0":  # one file after another: slow enough to see it move
        assert any(0 < _num((CONVERT.match(t).group("lines") or CONVERT.match(t).group("lines0")))
                   < files * per_file for t, _ in lines), lines
