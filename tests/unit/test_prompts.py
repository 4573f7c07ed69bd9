"""Encoding rows for the reward model: templates, truncation and rows that cannot be scored."""

from __future__ import annotations

import pytest
from conftest import chat_text

from udfs.prompts import Prompter, truncate_left
from udfs.reasons import EMPTY_TEXT, NULL_RESPONSE, NULL_TEXT


def test_truncate_left_keeps_the_end_and_a_leading_bos():
    ids = [1, 10, 11, 12, 13, 14]
    assert truncate_left(ids, 10, bos_id=1) == ids
    assert truncate_left(ids, 3, bos_id=1) == [1, 13, 14]
    assert truncate_left(ids, 3, bos_id=None) == [12, 13, 14]
    assert truncate_left([10, 11, 12], 2, bos_id=1) == [11, 12]  # no BOS to keep


def test_raw_is_exactly_what_the_tokenizer_encodes(tiny_model):
    p = Prompter(str(tiny_model), "raw", max_len=4096)
    texts = ["Explain why the sky is blue.", "你好 <|im_start|> special tokens stay special 🙂"]
    enc = p.encode(texts)
    assert enc.ids == [p.tokenizer(t)["input_ids"] for t in texts]
    assert enc.errors == [None, None] and enc.truncated == [False, False]
    assert p.tokenizer.convert_tokens_to_ids("<|im_start|>") in enc.ids[1]


def test_chat_applies_the_template_to_prompt_and_response(tiny_model):
    p = Prompter(str(tiny_model), "chat", max_len=4096)
    enc = p.encode(["What is 2+2?"], ["4"])
    assert p.render("What is 2+2?", "4") == chat_text("What is 2+2?", "4")
    assert enc.ids == [p.tokenizer(chat_text("What is 2+2?", "4"), add_special_tokens=False)["input_ids"]]
    only_prompt = p.encode(["What is 2+2?"])
    assert p.tokenizer.decode(only_prompt.ids[0]) == chat_text("What is 2+2?")


def test_rows_that_cannot_be_scored_get_a_reason(tiny_model):
    p = Prompter(str(tiny_model), "chat", max_len=4096)
    enc = p.encode([None, "", "  \t\n", float("nan"), "fine", "fine"], [None, "r", "r", "r", None, "r"])
    assert enc.errors == [NULL_TEXT, EMPTY_TEXT, EMPTY_TEXT, NULL_TEXT, NULL_RESPONSE, None]
    assert [i is None for i in enc.ids] == [True] * 5 + [False]


def test_long_rows_are_cut_from_the_left_and_counted(tiny_model):
    p = Prompter(str(tiny_model), "raw", max_len=16)
    long_text = " ".join(f"word{i}" for i in range(200)) + " THE END"
    enc = p.encode([long_text, "short"])
    full = p.tokenizer(long_text)["input_ids"]
    assert enc.truncated == [True, False]
    assert enc.ids[0] == full[-16:]
    assert p.tokenizer.decode(enc.ids[0]).endswith("THE END")


def test_chat_template_is_required_for_chat(tiny_model, tmp_path):
    import shutil

    shutil.copytree(tiny_model, tmp_path / "m")
    (tmp_path / "m" / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="no chat template"):
        Prompter(str(tmp_path / "m"), "chat")
