"""A score run by spark-submit SIGKILLed mid-run: the old output stays, the same command resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from chispa import assert_df_equality
from conftest import kill_when, submit
from test_resume import scores

from promptscore import progress
from promptscore.io.publish import work_dir


def test_killed_mid_run_keeps_the_old_output_and_the_same_command_resumes(spark, resume_input, tiny_model, tmp_path,
                                                                         resume_baseline):
    import pyarrow as pa

    out = tmp_path / "scores"
    flag = tmp_path / "paused"
    args = ["jobs/score.py", "--input", resume_input, "--output", out, "--model", tiny_model, "--mode", "overwrite"]
    # An earlier run's output (its contents do not matter to the publish step, only that it is ours).
    out.mkdir()
    pq.write_table(pa.table({"prompt": ["old"], "score": [0.5]}), out / "part-00000-old.parquet")
    old = json.dumps({"job": "score", "run_id": "old"})
    (out / "_report.json").write_text(old)
    (out / "_SUCCESS").write_text("")

    # SIGKILL to spark-submit's whole process group once a chunk is committed (the engine host has
    # a session of its own and goes when its executor does).
    proc = submit(args, {}, None, flag)
    kill_when(proc, lambda: any(Path(work_dir(str(out))).glob("pieces-*/done/[!.]*.json")))
    assert (out / "_report.json").read_text() == old and (out / "_SUCCESS").exists()
    done = [json.loads(p.read_text()) for p in Path(work_dir(str(out))).glob("pieces-*/done/[!.]*.json")]

    # The same command, on the shared session (progress lines through spark-submit's JVM: test_print_err).
    import contextlib
    import io

    from conftest import load_job

    stdout_io, stderr_io = io.StringIO(), io.StringIO()
    spark.conf.set(progress.INTERVAL_CONF, "1")
    try:
        with contextlib.redirect_stdout(stdout_io), contextlib.redirect_stderr(stderr_io):
            code = load_job("score").main([str(a) for a in args[1:]])
    finally:
        spark.conf.set(progress.INTERVAL_CONF, "0")
    stdout, err = stdout_io.getvalue(), stderr_io.getvalue()
    assert code == 0, err[-3000:]
    report = json.loads((out / "_report.json").read_text())
    resumed = sum(m["counts"]["rows"] for m in done)
    assert report["run_id"] != "old" and report["rows"] == 240
    assert report["resumed_rows"] == resumed > 0
    assert report["resume"]["chunks_resumed"] == len(done) and report["resume"]["chunks_scored"] == 6 - len(done)
    assert f"({resumed:,} resumed from an earlier run)" in stdout
    assert any(line.startswith("score: ") and "/ 240 rows" in line for line in err.splitlines())
    assert_df_equality(scores(spark, out), scores(spark, resume_baseline[0]), ignore_row_order=True)
    assert not Path(work_dir(str(out))).exists()
