"""Engine hosts started while the driver plans (``udfs.prestart``, ``spark.promptscore.score.prestart``):
the host is spawned before the first scoring task runs and that task joins it; off, the first task
starts it; a run that fails after the prestart leaves one host, for its executor, which the next run
uses; a bad setting is exit 2."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import run_job

from udfs import engine_client, host_files
from udfs.engine_client import EngineClient
from udfs.engines import EngineSpec
from udfs.host_files import paths_for
from udfs.start_parts import PART_KEYS

MAX_LEN = 1000  # an engine spec of these tests' own


@pytest.fixture(scope="module")
def prompts(spark, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prestart-in") / "prompts"
    rows = [(i, f"prompt number {i} " * (1 + i % 5)) for i in range(40)]
    spark.createDataFrame(rows, "id int, prompt string").repartition(2).write.parquet(str(path))
    return path


@pytest.fixture()
def no_host(spark, tiny_model):
    """No engine host on this session's executor when the test starts (a test before may have
    left one, as runs do); the key of that executor's CPU engine."""
    spec = EngineSpec(model_dir=str(tiny_model), backend="transformers", max_model_len=MAX_LEN)
    key = spark.sparkContext.parallelize([0], 1).map(lambda _: engine_client.key_for(spec)).collect()[0]
    stop_host(key)
    yield key
    stop_host(key)


def stop_host(key: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conn = engine_client._try_connect(paths_for(key).sock)
        if conn is not None:
            EngineClient(conn, key).shutdown()
        elif host_files.host_state(key) is None:
            return
        time.sleep(0.2)
    raise AssertionError(f"the engine host of {key} did not stop")


def args(prompts: Path, out: Path, model: Path) -> list:
    return ["--input", prompts, "--output", out, "--model", model, "--backend", "transformers",
            "--max-model-len", MAX_LEN]


def test_the_engine_host_is_spawned_before_the_first_scoring_task_which_joins_it(spark, prompts, tiny_model,
                                                                                  tmp_path, capsys, no_host):
    code, _, err = run_job("score", args(prompts, tmp_path / "out", tiny_model), capsys)
    assert code == 0, err
    assert "score: engine hosts starting ahead of the scoring: " + no_host in err
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    (engine,) = report["engines"]
    assert engine["key"] == no_host and engine["started_by"] == "prestart"
    assert engine["process_started_at"] < min(t["started_at"] for t in report["tasks"])
    assert engine["process_started_at"] < engine["ready_at"]
    parts = engine["start_parts"]
    assert set(PART_KEYS) <= set(parts) and parts["weights_s"] > 0 and parts["vllm_import_s"] is None
    starts = Path(paths_for(no_host).starts).read_text().splitlines()
    assert [json.loads(line)["started_by"] for line in starts][-1] == "prestart"
    assert report["scored"] == 40


def test_off_the_first_scoring_task_starts_the_engine(spark, prompts, tiny_model, tmp_path, capsys, no_host):
    spark.conf.set("spark.promptscore.score.prestart", "false")
    try:
        code, _, err = run_job("score", args(prompts, tmp_path / "out", tiny_model), capsys)
    finally:
        spark.conf.unset("spark.promptscore.score.prestart")
    assert code == 0, err
    assert "ahead of the scoring" not in err
    (engine,) = json.loads((tmp_path / "out" / "_report.json").read_text())["engines"]
    assert engine["started_by"] == "task"


def test_a_bad_setting_is_exit_2(spark, prompts, tiny_model, tmp_path, capsys):
    spark.conf.set("spark.promptscore.score.prestart", "maybe")
    try:
        code, _, err = run_job("score", args(prompts, tmp_path / "out", tiny_model), capsys)
    finally:
        spark.conf.unset("spark.promptscore.score.prestart")
    assert code == 2
    assert "spark.promptscore.score.prestart must be true or false, not 'maybe'" in err
    assert not (tmp_path / "out").exists()


def test_a_run_that_fails_after_the_prestart_leaves_one_host_that_the_next_run_uses(spark, prompts, tiny_model,
                                                                                      tmp_path, capsys, no_host):
    from test_output_lock import write_lease

    out = tmp_path / "out"
    write_lease(tmp_path / ".promptscore.out", run_id="20260101T000000-other", job="score")
    code, _, err = run_job("score", args(prompts, out, tiny_model), capsys)
    assert code == 2 and "20260101T000000-other" in err  # another run holds the output
    deadline = time.monotonic() + 60
    while host_files.host_state(no_host) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    state = host_files.host_state(no_host)
    assert state is not None and state["started_by"] == "prestart"
    tracker = spark.sparkContext.statusTracker()
    while tracker.getActiveJobsIds() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not tracker.getActiveJobsIds()  # the prestart's Spark job is over, not left running
    while host_files.host_state(no_host)["state"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.2)
    starts = Path(paths_for(no_host).starts).read_text().splitlines()

    for lease in (tmp_path / ".promptscore.out").glob("lock.*.json"):
        lease.unlink()
    code, _, err = run_job("score", args(prompts, out, tiny_model), capsys)
    assert code == 0, err
    (engine,) = json.loads((out / "_report.json").read_text())["engines"]
    assert engine["pid"] == state["pid"] and engine["started_by"] == "prestart"
    assert Path(paths_for(no_host).starts).read_text().splitlines() == starts  # no second start
