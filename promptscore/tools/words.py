"""A small vocabulary of prompt words in English, Chinese and Japanese.

Shared by the synthetic input (``promptscore.tools.sample_data``) and the tiny model's tokenizer corpus
(``promptscore.tools.tiny_model``), so that the tokenizer knows the words of the demo's prompts.
"""

from __future__ import annotations

WORDS: tuple[str, ...] = tuple(
    "the of and to in is for that with on as be this by are from at it an or which you can not "
    "function return value list string number array python java rust sql query table index "
    "write read file data model score reward prompt answer explain why how what when where "
    "compute sort merge split join filter map reduce error test case input output example "
    "请 解释 这个 函数 的 作用 数据 模型 评分 プロンプト 説明 してください".split()
)
