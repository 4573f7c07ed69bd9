"""The UDF's body on its own: batches in, scores and reasons out, in order, bad rows isolated."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import chat_text, direct_scores

from udfs.engines import EngineSpec
from udfs.reward import ScoreSpec, TaskStats, score_batches


def run(model, batches, **kw):
    spec = ScoreSpec(engine=EngineSpec(model_dir=str(model), device="cpu"), **kw)
    return pd.concat(list(score_batches(spec, iter(batches), TaskStats())), ignore_index=True)


@pytest.mark.parametrize("slice_rows", [128, 2, 1])
def test_batches_keep_their_order_and_bad_rows_their_reason(tiny_model, slice_rows):
    batches = [
        pd.Series(["first prompt", None, "second prompt"]),
        pd.Series([], dtype=object),
        pd.Series(["", "   ", "third prompt about rust"]),
        pd.Series(["fourth"]),
    ]
    out = run(tiny_model, batches, slice_rows=slice_rows)
    assert list(out.columns) == ["score", "score_error", "n_tokens", "truncated"]
    assert out["score_error"].tolist() == [None, "null_text", None, "empty_text", "empty_text", None, None]
    good = ["first prompt", "second prompt", "third prompt about rust", "fourth"]
    got = out["score"].dropna().astype(float).tolist()
    want = direct_scores(tiny_model, good)
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-4
    assert out["score"].isna().tolist() == [False, True, False, True, True, False, False]


def test_pairs_with_the_chat_template(tiny_model):
    batches = [(pd.Series(["What is 2+2?", "Name a colour"]), pd.Series(["4", None]))]
    out = run(tiny_model, batches, template="chat")
    assert out["score_error"].tolist() == [None, "null_response"]
    assert abs(out["score"][0] - direct_scores(tiny_model, [chat_text("What is 2+2?", "4")])[0]) < 1e-4


def test_task_gpus_is_none_without_gpus_from_spark(spark):
    from udfs.reward import task_gpus

    assert task_gpus() is None  # no task here (the driver)
    assert spark.sparkContext.parallelize([0], 1).map(lambda _: task_gpus()).collect() == [None]


def test_rows_in_flight_stay_under_the_limit_however_many_come(tiny_model):
    """A task streaming far more rows than its limit (as a 128 MB chunk would): the engine host
    never holds more than ``max_rows_in_flight`` of them, and every row comes back in order."""
    texts = [f"prompt {i} " + "word " * (i % 17) for i in range(4000)]
    batches = [pd.Series(texts[i:i + 1000]) for i in range(0, len(texts), 1000)]
    stats = TaskStats()
    spec = ScoreSpec(engine=EngineSpec(model_dir=str(tiny_model), device="cpu"), slice_rows=64,
                     max_rows_in_flight=200, inflight=4)
    out = pd.concat(list(score_batches(spec, iter(batches), stats)), ignore_index=True)
    assert len(out) == 4000 and out["score"].notna().all()
    assert stats.host["link_limit"] == 200 and 64 <= stats.host["link_peak_rows"] <= 200
    want = direct_scores(tiny_model, [texts[0], texts[3999]])
    assert abs(out["score"][0] - want[0]) < 1e-4 and abs(out["score"][3999] - want[1]) < 1e-4


@pytest.mark.parametrize("slice_rows", [128, 3])
def test_a_row_the_engine_refuses_is_isolated(oov_model, slice_rows):
    texts = [f"prompt {i}" for i in range(9)]
    texts[4] = "this one holds <|oov|> a token the model has no embedding for"
    out = run(oov_model, [pd.Series(texts)], slice_rows=slice_rows)
    errors = out["score_error"].tolist()
    assert errors[4].startswith("engine_rejected: ValueError: token id") and "out of vocabulary" in errors[4]
    assert [e is None for i, e in enumerate(errors) if i != 4] == [True] * 8
    assert out["score"].notna().sum() == 8
