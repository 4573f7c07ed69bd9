"""The transformers engine against transformers' own forward pass, and its refusals."""

from __future__ import annotations

import json

import pytest
from conftest import direct_scores

from udfs.engines import EngineSpec, TransformersEngine
from udfs.prompts import Prompter

TEXTS = [
    "Explain why the sky is blue.",
    "def f(x): return x * 2",
    "你好 世界",
    " ".join(["a much longer prompt"] * 60),
    "?",
]


@pytest.fixture(scope="module")
def engine(tiny_model):
    return TransformersEngine(EngineSpec(model_dir=str(tiny_model), device="cpu", batch_tokens=256))


def test_scores_match_transformers_forward_pass(engine, tiny_model):
    ids = Prompter(str(tiny_model)).encode(TEXTS).ids
    got = engine.score(ids)
    want = direct_scores(tiny_model, TEXTS)
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-4


def test_padding_and_batch_make_no_difference(engine, tiny_model):
    ids = Prompter(str(tiny_model)).encode(TEXTS).ids
    together = engine.score(ids)
    alone = [engine.score([row])[0] for row in ids]
    reversed_ = engine.score(ids[::-1])[::-1]
    assert max(abs(a - b) for a, b in zip(together, alone)) < 1e-5
    assert together == reversed_


def test_out_of_vocabulary_token_is_refused(engine):
    with pytest.raises(ValueError, match="out of vocabulary"):
        engine.score([[1, 2, 3], [1, 10**6]])


def test_padded_batches_group_rows_by_length_within_the_token_budget(engine):
    assert engine.batch_tokens == 256
    assert engine.padded_batches([]) == []
    assert engine.padded_batches([5, 1, 3, 300, 2]) == [([1, 4, 2, 0], 5), ([3], 300)]  # a longer row alone
    groups = engine.padded_batches([10] * 100)
    assert [len(rows) for rows, _ in groups] == [25, 25, 25, 25]  # 25 x 10 <= 256 < 26 x 10
    lengths = [(i * 37) % 97 + 1 for i in range(300)]
    groups = engine.padded_batches(lengths)
    assert sorted(i for rows, _ in groups for i in rows) == list(range(300))
    assert all(width == max(lengths[i] for i in rows) for rows, width in groups)
    assert all(width * len(rows) <= 256 for rows, width in groups)
    assert [width for _, width in groups] == sorted(width for _, width in groups)


@pytest.mark.parametrize(("archs", "native"), [
    (["Qwen2ForSequenceClassification"], True),  # served as vLLM's Qwen2ForCausalLM with a classify head
    (["LlamaForSequenceClassification"], True),
    (["Qwen2ForCausalLM"], True),
    (["MadeUpForSequenceClassification"], False),  # only the Transformers backend could serve it
    (["TransformersForSequenceClassification"], False),
    ([], False),
])
def test_native_architecture_decides_from_the_config_and_vllms_list(tmp_path, archs, native):
    from udfs.architectures import native_architecture

    supported = {"Qwen2ForCausalLM", "LlamaForCausalLM", "TransformersForSequenceClassification"}
    (tmp_path / "config.json").write_text(json.dumps({"architectures": archs}))
    assert native_architecture(str(tmp_path), supported) is native


def test_native_architecture_is_false_without_a_readable_config(tmp_path):
    from udfs.architectures import native_architecture

    assert native_architecture(str(tmp_path), {"Qwen2ForCausalLM"}) is False
    (tmp_path / "config.json").write_text("[not an object")
    assert native_architecture(str(tmp_path), {"Qwen2ForCausalLM"}) is False
