"""``jobs/score.py --plan`` on a local SparkSession with the tiny model: rows and tokens against
the tokenizer's own counts, the sample's stated error, calibration on the CPU, usage errors; and
the prediction beside the actual time that real runs report."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import run_job

from promptscore import sizing
from promptscore.score import estimate, rows
from promptscore.tools.words import WORDS

MAX_LEN = 40
UNSCORABLE = {3: None, 11: "", 19: "  \t ", 60: None}


def _texts(n: int = 160) -> list[str | None]:
    rng = random.Random(7)
    texts: list[str | None] = []
    for i in range(n):
        # Mostly short prompts, every eighth one far longer than MAX_LEN tokens.
        words = rng.randint(60, 120) if i % 8 == 5 else rng.randint(1, 25)
        texts.append(" ".join(rng.choice(WORDS) for _ in range(words)))
    for i, t in UNSCORABLE.items():
        texts[i] = t
    return texts


TEXTS = _texts()


@pytest.fixture(scope="module")
def plan_input(spark, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan-in") / "prompts"
    spark.createDataFrame([(i, t) for i, t in enumerate(TEXTS)], "id int, prompt string") \
        .repartition(3).write.parquet(str(path))
    return path


@pytest.fixture(scope="module")
def lengths(tiny_model) -> list[int]:
    """The tokenizer's own count of every scorable row, untruncated."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    return [len(tok(t)["input_ids"]) for t in TEXTS if t is not None and t.strip()]


def _plan(args: list, capsys, tmp_path: Path) -> tuple[dict, list[str]]:
    report_path = tmp_path / "plan.json"
    code, stdout, err = run_job("score", ["--plan", *args, "--report", report_path], capsys)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    lines = stdout.strip().splitlines()
    assert lines[-1] == report["summary"] and lines[-1].startswith("score plan: ")
    return report, lines


def test_plan_counts_every_row_and_the_tokenizers_tokens(plan_input, tiny_model, lengths, tmp_path, capsys):
    out = tmp_path / "scored"
    report, lines = _plan(["--input", plan_input, "--output", out, "--model", tiny_model,
                           "--max-model-len", MAX_LEN, "--gpus", 8], capsys, tmp_path)
    assert not out.exists()  # nothing written at --output
    assert report["rows"] == len(TEXTS) and report["sampled_rows"] == len(TEXTS) and report["exact"]
    assert report["unscorable_rows"] == len(UNSCORABLE) and report["scorable_rows"] == len(lengths)
    assert report["tokens"] == sum(min(n, MAX_LEN) for n in lengths)
    assert report["tokens_untruncated"] == sum(lengths)
    assert report["tokens_sq"] == sum(min(n, MAX_LEN) ** 2 for n in lengths)
    assert report["tokens_error_95"] == 0
    truncated = sum(n > MAX_LEN for n in lengths)
    assert 10 <= truncated < len(lengths)
    assert report["truncated_rows"] == truncated and report["truncated_share"] == round(truncated / len(TEXTS), 6)
    ordered = sorted(lengths)
    assert report["length_tokens"] == {"mean": round(sum(lengths) / len(lengths), 1), "p50": ordered[79],
                                       "p99": ordered[-2], "max": ordered[-1]}

    e = report["estimate"]
    shape = sizing.ModelShape.from_config(json.loads((tiny_model / "config.json").read_text()))
    want = sizing.score_estimate_from_sums(len(lengths), report["tokens"], report["tokens_sq"], shape, "H100", 8)
    assert {k: e[k] for k in want} == want
    assert e["gpus"] == 8 and e["gpu"] == "H100" and e["rate_source"] == "measured on H100"
    assert e["flops"] > 0 and e["physical_limit_wall_s"] <= e["wall_s"]
    assert {g["gpu"] for g in report["estimate_by_gpu"]} == set(sizing.GPU_PEAK_FLOPS)
    assert "FLOPs-scaled" in report["estimate_by_gpu_basis"] and report["calibration"] is None
    assert any(line.startswith(f"tokens: {report['tokens']:,} tokens (exact)") for line in lines)
    assert any("estimate on 8 x H100" in line and "physical limit" in line for line in lines)


def test_plan_sample_states_an_error_that_holds(plan_input, tiny_model, lengths, tmp_path, capsys):
    # The model as a URI: the driver ships only its tokenizer files to the executors.
    report, lines = _plan(["--input", plan_input, "--model", f"file://{tiny_model}", "--max-model-len", MAX_LEN,
                           "--plan-sample", "0.5"], capsys, tmp_path)
    true = sum(min(n, MAX_LEN) for n in lengths)
    assert report["rows"] == len(TEXTS) and not report["exact"]
    assert 0.3 * len(TEXTS) < report["sampled_rows"] < 0.7 * len(TEXTS)
    assert report["tokens"] != true and 0 < report["tokens_error_95"] < 0.3 * true
    assert abs(report["tokens"] - true) <= report["tokens_error_95"], (report["tokens"], true)
    assert report["tokens_error_pct"] == pytest.approx(100 * report["tokens_error_95"] / report["tokens"], abs=0.02)
    assert f"± {report['tokens_error_95']:,} tokens" in "\n".join(lines)


def test_calibrate_on_the_cpu_uses_the_measured_rate(plan_input, tiny_model, tmp_path, capsys):
    report, lines = _plan(["--input", plan_input, "--model", tiny_model, "--max-model-len", MAX_LEN,
                           "--calibrate", 24, "--gpus", 4, "--gpu-type", "A100"], capsys, tmp_path)
    c = report["calibration"]
    assert c["rows"] == 24 and c["engines"] == 1 and c["device"] == "cpu" and c["gpu"] is None
    assert c["tokens"] > 0 and c["busy_s"] > 0 and c["tokens_per_s"] == round(c["tokens"] / c["busy_s"], 1)
    e = report["estimate"]
    assert e["gpu"] == "A100" and e["gpus"] == 4 and e["rate_source"].startswith("calibrated")
    assert e["tokens_per_s_per_gpu"] == pytest.approx(c["tokens_per_s"], rel=1e-3)
    assert e["wall_s"] == pytest.approx(report["tokens"] / c["tokens_per_s"] / 4, abs=0.1)
    assert "calibrated on cpu" in e["note"]
    table = {g["gpu"]: g for g in report["estimate_by_gpu"]}
    assert table["H100"]["tokens_per_s_per_gpu"] == pytest.approx(c["tokens_per_s"] * 989 / 312, rel=1e-3)
    assert any(line.startswith("calibration: 24 rows") for line in lines)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--output", "OUT", "--plan-sample", "0.5"], "--plan-sample goes with --plan"),
        (["--output", "OUT", "--calibrate", "5", "--gpus", "2"], "--gpus, --calibrate go with --plan"),
        ([], "the following arguments are required: --output"),
        (["--plan", "--plan-sample", "0"], "--plan-sample must be a fraction in (0, 1]"),
        (["--plan", "--plan-sample", "1.5"], "--plan-sample must be a fraction in (0, 1]"),
        (["--plan", "--gpus", "0"], "--gpus must be at least 1"),
        (["--plan", "--calibrate", "0"], "--calibrate must be at least 1"),
        (["--plan", "--gpu-type", "Z9"], "invalid choice"),
        (["--plan", "--compare-sample", "10", "--quantization", "fp8"], "--plan and --compare-sample"),
    ],
)
def test_plan_usage_errors_exit_2(plan_input, tiny_model, tmp_path, capsys, extra, message):
    extra = [str(tmp_path / "o") if a == "OUT" else a for a in extra]
    code, stdout, err = run_job("score", ["--input", plan_input, "--model", tiny_model, *extra], capsys)
    assert code == 2 and stdout == ""
    assert err.startswith("score: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_prediction_beside_the_actual_time_of_a_run():
    config = {"hidden_size": 1536, "num_hidden_layers": 28, "intermediate_size": 8960, "num_attention_heads": 12,
              "num_key_value_heads": 2}
    counts = {"rows": 1000, "scored": 990, "tokens": 990_000, "tokens_sq": 990 * 1000 ** 2}
    engines = [{"device": "NVIDIA H100 80GB HBM3", "busy_s": 5.0, "start_s": 40.0},
               {"device": "NVIDIA H100 80GB HBM3", "busy_s": 7.0, "start_s": 42.0}]
    got = estimate.predicted_vs_actual(config, counts, engines, write_s=60.0)
    want = sizing.score_estimate_from_sums(990, 990_000, 990e6, sizing.ModelShape.from_config(config), "H100", 2)
    assert got["predicted"] == want and got["reason"] is None
    assert got["actual"] == {"rows": 1000, "scored": 990, "tokens": 990_000, "engines": 2, "write_s": 60.0,
                             "engine_start_s": 42.0, "engine_busy_s": 12.0,
                             "engine_busy_gpu_hours": round(12 / 3600, 4), "tokens_per_s_per_gpu": 82500.0}
    assert got["actual_over_predicted"]["wall"] == round(60 / want["wall_s"], 3)

    cpu = estimate.predicted_vs_actual(config, counts, [{"device": "cpu", "busy_s": 1.0}], write_s=3.0)
    assert cpu["predicted"] is None and "ran on cpu" in cpu["reason"] and cpu["actual"]["write_s"] == 3.0
    none = estimate.predicted_vs_actual(config, counts, [], write_s=0.5)
    assert none["predicted"] is None and "no engine scored" in none["reason"]


def test_merge_counts_sums_the_chunks_and_keeps_the_longest():
    a = {"rows": 2, "scored": 2, "tokens": 7, "tokens_sq": 25, "max_tokens": 4}
    b = {"rows": 3, "scored": 2, "tokens": 9, "tokens_sq": 41, "max_tokens": 5, "err_empty_text": 1}
    merged = rows.merge_counts([a, b])
    assert merged["rows"] == 5 and merged["tokens"] == 16 and merged["tokens_sq"] == 66
    assert merged["max_tokens"] == 5 and merged["err_empty_text"] == 1
    assert rows.merge_counts([])["max_tokens"] is None


def test_tokenizer_files_leave_the_weights_out():
    manifest = [("config.json", 700), ("model.safetensors", 5 << 30), ("tokenizer.json", 9 << 20),
                ("sub/pytorch_model.bin", 100), (".promptscore-complete", 10), ("chat_template.jinja", 300),
                ("optimizer.pt", 10)]
    assert estimate.tokenizer_files(manifest) == [("config.json", 700), ("tokenizer.json", 9 << 20),
                                                   ("chat_template.jinja", 300)]


def test_a_uri_models_tokenizer_ships_without_its_weights(spark, tiny_model):
    import zipfile

    from promptscore.io import files

    uri = f"file://{tiny_model}"
    ref, archive = estimate.ship_tokenizer(spark, uri, files.list_tree(spark, uri))
    assert ref == "sparkfiles:" + Path(archive).name
    assert Path(archive).name in {a.rsplit("/", 1)[-1] for a in spark.sparkContext.listArchives}
    with zipfile.ZipFile(archive) as z:
        shipped = {n for n in z.namelist() if not n.endswith("/")}
    assert shipped == {p.name for p in tiny_model.iterdir() if p.suffix != ".safetensors"}
    assert "model.safetensors" not in shipped and {"config.json", "tokenizer.json"} <= shipped
    assert estimate.ship_tokenizer(spark, str(tiny_model), None) == (str(tiny_model), None)


def test_token_counts_follow_the_template_and_mark_unscorable_rows(tiny_model):
    from conftest import chat_text
    from transformers import AutoTokenizer

    from udfs import token_counts

    tok = AutoTokenizer.from_pretrained(tiny_model)
    p = token_counts.prompter(str(tiny_model), "chat")
    got = token_counts.count_tokens(p, ["Why is the sky blue?", None, " ", "hi"], ["Rayleigh.", "x", "y", None])
    want = len(tok(chat_text("Why is the sky blue?", "Rayleigh."), add_special_tokens=False)["input_ids"])
    assert got == [want, None, None, None]
