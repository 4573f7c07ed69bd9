"""The score job end to end on a local SparkSession, with the tiny model on the CPU."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from chispa import assert_df_equality
from conftest import direct_scores, has_gpu_and_vllm, run_job

from udfs import engine_cache
from udfs.host_files import paths_for
from udfs.start_parts import PART_KEYS

SCHEMA = "id int, prompt string, response string, meta struct<lang:string,n:bigint>"
ROWS = [
    (1, "Explain why the sky is blue.", "Rayleigh scattering.", ("en", 1)),
    (2, "def f(x): return x * 2", "It doubles x.", ("code", 2)),
    (3, "你好，请介绍一下你自己 🙂", "我是一个模型。", ("zh", 3)),
    (4, None, "no prompt", ("en", 4)),
    (5, "", "empty prompt", ("en", 5)),
    (6, "   \t ", "blank prompt", ("en", 6)),
    (7, " ".join(["a long prompt"] * 200), "long", ("en", 7)),
    (8, "What is 2+2?", None, ("en", 8)),
]
GOOD_IDS = [1, 2, 3, 7, 8]


@pytest.fixture(scope="module")
def prompts(spark, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("score-in") / "prompts"
    spark.createDataFrame(ROWS, SCHEMA).repartition(3).write.parquet(str(path))
    return path


def read(spark, path: Path):
    return spark.read.parquet(str(path))


def test_every_row_and_column_kept_and_scores_match_transformers(spark, prompts, tiny_model, tmp_path, capsys):
    out = tmp_path / "scored"
    code, stdout, err = run_job("score", ["--input", prompts, "--output", out, "--model", tiny_model,
                                          "--max-bad-fraction", "0.5"], capsys)
    assert code == 0, err
    got = read(spark, out)
    assert got.columns == ["id", "prompt", "response", "meta", "score", "score_error"]
    assert dict(got.dtypes)["score"] == "float"
    assert_df_equality(got.drop("score", "score_error"), spark.createDataFrame(ROWS, SCHEMA),
                       ignore_row_order=True, ignore_nullable=True)

    rows = {r.id: r for r in got.collect()}
    assert {i: rows[i].score_error for i in (4, 5, 6)} == {4: "null_text", 5: "empty_text", 6: "empty_text"}
    assert all(rows[i].score is None for i in (4, 5, 6))
    want = direct_scores(tiny_model, [rows[i].prompt for i in GOOD_IDS])
    assert max(abs(rows[i].score - w) for i, w in zip(GOOD_IDS, want)) < 1e-4
    assert all(rows[i].score_error is None for i in GOOD_IDS)

    report = json.loads((out / "_report.json").read_text())
    assert (report["rows"], report["scored"], report["error_rows"]) == (8, 5, 3)
    assert report["errors"] == {"null_text": 1, "empty_text": 2}
    assert report["truncated"] == 0 and report["backend"] == "transformers"
    assert report["tokens"] == sum(_token_counts(tiny_model, rows))
    assert set(report["score_quantiles"]) == {"p0", "p1", "p5", "p25", "p50", "p75", "p95", "p99", "p100"}
    assert report["score_quantiles"]["p0"] <= report["score_quantiles"]["p50"] <= report["score_quantiles"]["p100"]
    assert sum(h[1] for h in report["score_histogram"]) == 5
    assert (out / "_score_histogram.png").read_bytes()[:4] == b"\x89PNG"
    assert len(report["engines"]) == 1 and report["engines"][0]["device"] == "cpu"
    assert sum(t["rows"] for t in report["tasks"]) == 8
    for key in ("prompts_per_s", "tokens_per_s", "engine_start_s", "engine_busy_s", "elapsed_s"):
        assert report[key] is not None
    engine = report["engines"][0]
    # Where the engine's start went: the parts of one timeline from the host process's start to
    # its first answer (the transformers engine: no vLLM import, no engine core, no compile).
    parts = report["engine_start_parts"]
    assert parts == engine["start_parts"] and set(PART_KEYS) <= set(parts)
    assert parts["python_s"] > 0 and parts["torch_import_s"] > 0 and parts["weights_s"] > 0
    assert parts["vllm_import_s"] is None and parts["compile_s"] is None and parts["mp_method"] is None
    known = [v for k, v in parts.items() if k in PART_KEYS and k not in ("total_s", "unaccounted_s") and v is not None]
    assert parts["total_s"] == pytest.approx(sum(known) + parts["unaccounted_s"], abs=0.01)
    assert -0.01 <= parts["unaccounted_s"] < parts["total_s"]
    assert 0 < report["engine_start_s"] <= parts["total_s"] + 0.5  # the host's own clock, from build to ready
    assert engine["started_by"] in ("prestart", "task") and engine["process_started_at"] < engine["ready_at"]
    # This job's share of the engine's time: computing, and waiting for rows while its tasks ran.
    assert 0 < engine["busy_s"] and 0 <= engine["idle_s"]
    assert engine["busy_s"] + engine["idle_s"] <= report["phase_s"]["write"]
    # The throughput model's prediction beside the actual time: none for a CPU, with the reason.
    est = report["estimate"]
    assert est["predicted"] is None and "the engines ran on cpu" in est["reason"]
    assert est["actual"]["scored"] == 5 and est["actual"]["tokens"] == report["tokens"]
    assert 0 < est["actual"]["write_s"] <= report["phase_s"]["write"]
    assert est["actual"]["engine_busy_s"] == report["engine_busy_s"]
    assert (out / "_SUCCESS").exists()
    assert stdout.strip() == report["summary"] and stdout.startswith("score: 8 rows -> 5 scored")


def _token_counts(model, rows):
    from udfs.prompts import Prompter

    p = Prompter(str(model))
    return [len(ids) for ids in p.encode([rows[i].prompt for i in GOOD_IDS]).ids]


def test_chat_template_scores_prompt_response_pairs(spark, prompts, tiny_model, tmp_path, capsys):
    out = tmp_path / "scored"
    code, _, err = run_job("score", ["--input", prompts, "--output", out, "--model", tiny_model,
                                     "--template", "chat", "--response-col", "response", "--max-bad-fraction", "1"],
                           capsys)
    assert code == 0, err
    rows = {r.id: r for r in read(spark, out).collect()}
    assert rows[8].score_error == "null_response" and rows[8].score is None
    rendered = f"<|im_start|>user\n{rows[1].prompt}<|im_end|>\n<|im_start|>assistant\n{rows[1].response}<|im_end|>\n"
    assert abs(rows[1].score - direct_scores(tiny_model, [rendered])[0]) < 1e-4


def test_too_many_unscorable_rows_exit_3_after_writing(spark, prompts, tiny_model, tmp_path, capsys):
    out = tmp_path / "scored"
    code, stdout, err = run_job("score", ["--input", prompts, "--output", out, "--model", tiny_model], capsys)
    assert code == 3
    err = "".join(line for line in err.splitlines(keepends=True) if "engine hosts starting ahead" not in line)
    assert err.count("\n") == 1 and "3 of 8 rows got no score" in err and "Traceback" not in err
    assert read(spark, out).count() == 8
    report = json.loads((out / "_report.json").read_text())
    assert report["status"] == "too_many_errors"
    assert not (out / "_SUCCESS").exists()
    assert stdout.startswith("score: 8 rows")


def test_runs_are_deterministic(spark, prompts, tiny_model, tmp_path, capsys):
    from chispa import assert_approx_df_equality

    outs = []
    for name, partitions in (("a", "2"), ("b", "2"), ("c", "5")):
        out = tmp_path / name
        code, _, err = run_job("score", ["--input", prompts, "--output", out, "--model", tiny_model,
                                         "--max-bad-fraction", "1", "--partitions", partitions], capsys)
        assert code == 0, err
        outs.append(read(spark, out).select("id", "score", "score_error"))
    assert_df_equality(outs[0], outs[1], ignore_row_order=True)  # same run, same bits
    # Other batches pad rows differently: the same scores up to float rounding.
    assert_approx_df_equality(outs[0], outs[2], precision=1e-5, ignore_row_order=True)


def test_one_engine_for_many_tasks_and_batches_and_worker_churn(spark, tiny_model, tmp_path, capsys):
    from promptscore.score.rows import score_rows
    from udfs.engines import EngineSpec
    from udfs.reward import ScoreSpec, make_udf

    src = tmp_path / "in"
    spark.createDataFrame([(i, f"prompt {i} " * (i % 9 + 1)) for i in range(300)], "id int, prompt string") \
        .repartition(6).write.parquet(str(src))
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "7")
    try:
        first = tmp_path / "first"
        code, _, err = run_job("score", ["--input", src, "--output", first, "--model", tiny_model,
                                         "--partitions", "6"], capsys)
        assert code == 0, err
        report = json.loads((first / "_report.json").read_text())
        assert len(report["tasks"]) == 6
        assert len({t["engine_pid"] for t in report["tasks"]}) == 1  # one engine for all tasks
        assert len(report["engines"]) == 1
        engine = report["engines"][0]
        starts = Path(paths_for(engine["key"]).starts).read_text().splitlines()

        # Churn: a query that stops reading its UDF's output early (limit) strands its workers...
        spec = ScoreSpec(engine=EngineSpec(model_dir=str(tiny_model), backend="transformers"))
        df = spark.read.parquet(str(src)).repartition(6)
        assert len(score_rows(df, make_udf(spec), "prompt").limit(3).collect()) == 3
        # ... and the next job still gets the same single engine.
        second = tmp_path / "second"
        code, _, err = run_job("score", ["--input", src, "--output", second, "--model", tiny_model,
                                         "--partitions", "6"], capsys)
        assert code == 0, err
        again = json.loads((second / "_report.json").read_text())
        assert {t["engine_pid"] for t in again["tasks"]} == {engine["pid"]}
        assert Path(paths_for(engine["key"]).starts).read_text().splitlines() == starts
        assert again["scored"] == 300
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")


def test_long_prompts_are_truncated_not_failed(spark, prompts, tiny_model, tmp_path, capsys):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "scored"
    code, _, err = run_job("score", ["--input", prompts, "--output", out, "--model", tiny_model,
                                     "--max-model-len", "32", "--max-bad-fraction", "1"], capsys)
    assert code == 0, err
    report = json.loads((out / "_report.json").read_text())
    assert report["truncated"] == 1 and report["max_tokens"] == 32
    row = {r.id: r for r in read(spark, out).collect()}[7]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    kept = tok(row.prompt)["input_ids"][-32:]  # the end of the text is kept
    with torch.inference_mode():
        want = float(model(input_ids=torch.tensor([kept])).logits[0, 0])
    assert row.score_error is None and abs(row.score - want) < 1e-4


def test_engine_rejected_rows_are_isolated_and_marked(spark, oov_model, tmp_path, capsys):
    src = tmp_path / "in"
    texts = [f"prompt number {i}" for i in range(40)]
    texts[7] = texts[23] = "holds <|oov|> which the model cannot embed"
    spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "id int, prompt string") \
        .repartition(2).write.parquet(str(src))
    out = tmp_path / "scored"
    code, _, err = run_job("score", ["--input", src, "--output", out, "--model", oov_model,
                                     "--max-bad-fraction", "0.1"], capsys)
    assert code == 0, err
    rows = {r.id: r for r in read(spark, out).collect()}
    assert {i for i, r in rows.items() if r.score is None} == {7, 23}
    assert rows[7].score_error.startswith("engine_rejected: ValueError: token id")
    assert json.loads((out / "_report.json").read_text())["errors"] == {"engine_rejected": 2}


def test_model_as_a_uri_is_copied_once_and_checked(spark, prompts, tiny_model, tmp_path, capsys):
    cache = tmp_path / "cache"
    out = tmp_path / "scored"
    code, _, err = run_job("score", ["--input", prompts, "--output", out, "--model", f"file://{tiny_model}",
                                     "--cache-dir", cache, "--max-bad-fraction", "1"], capsys)
    assert code == 0, err
    copies = [p for p in cache.iterdir() if p.is_dir() and p.name != "engine-cache"]
    assert len(copies) == 1 and (copies[0] / "model.safetensors").stat().st_size == \
        (tiny_model / "model.safetensors").stat().st_size
    report = json.loads((out / "_report.json").read_text())
    assert report["scored"] == 5

    # The engine (a new one: another model path) keeps its compile caches beside the model's copy,
    # in a directory of this user's own.
    mine = cache / "engine-cache" / str(os.getuid())
    assert mine.stat().st_mode & 0o777 == 0o700 and (cache / "engine-cache").stat().st_mode & 0o7777 == 0o1777
    (engine,) = report["engines"]
    assert engine["cache_dir"] == str(mine) and engine["cache_warm"] is False
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{engine['pid']}/environ").read_text().split("\0") if "=" in item)
    for name, sub in engine_cache.ENV_DIRS.items():
        assert environ[name] == str(mine / sub) and (mine / sub).is_dir()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--text-col", "nope"], "--text-col 'nope' is not a column"),
        (["--text-col", "id"], "--text-col 'id' is int, not string"),
        (["--response-col", "response"], "--response-col needs --template chat"),
        (["--engine-args", "{bad"], "--engine-args is not JSON"),
        (["--max-model-len", "0"], "--max-model-len must be at least 1"),
        (["--backend", "tensorrt"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(prompts, tiny_model, tmp_path, capsys, extra, message):
    code, stdout, err = run_job("score", ["--input", prompts, "--output", tmp_path / "o", "--model", tiny_model,
                                          *extra], capsys)
    assert code == 2 and stdout == ""
    assert err.startswith("score: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_models_that_are_not_reward_models_are_refused(prompts, tiny_model, tmp_path, capsys):
    two = tmp_path / "two-labels"
    shutil.copytree(tiny_model, two)
    config = json.loads((two / "config.json").read_text())
    config["id2label"] = {"0": "bad", "1": "good"}
    config.pop("num_labels", None)
    (two / "config.json").write_text(json.dumps(config))
    code, _, err = run_job("score", ["--input", prompts, "--output", tmp_path / "o", "--model", two], capsys)
    assert code == 2 and "has 2 labels; a reward model has one" in err

    code, _, err = run_job("score", ["--input", prompts, "--output", tmp_path / "o", "--model", tmp_path / "none"],
                           capsys)
    assert code == 2 and "no config.json there" in err

    code, _, err = run_job("score", ["--input", tmp_path / "missing", "--output", tmp_path / "o", "--model",
                                     tiny_model], capsys)
    assert code == 2 and "cannot read --input as Parquet" in err


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu_and_vllm(), reason="needs an NVIDIA GPU and vLLM")
def test_vllm_matches_transformers_on_the_gpu(spark, prompts, tiny_model, tmp_path, capsys):
    outs = {}
    for backend in ("vllm", "transformers"):
        out = tmp_path / backend
        code, _, err = run_job("score", ["--input", prompts, "--output", out, "--model", tiny_model,
                                         "--backend", backend, "--dtype", "bfloat16", "--max-bad-fraction", "1"],
                               capsys)
        assert code == 0, err
        outs[backend] = {r.id: r.score for r in read(spark, out).collect()}
    diffs = [abs(outs["vllm"][i] - outs["transformers"][i]) for i in GOOD_IDS]
    assert max(diffs) < 0.05
