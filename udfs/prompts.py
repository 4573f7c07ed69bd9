"""Turning rows into token ids for a reward model: templates, truncation, unscorable rows.

Tokenizing here, before any engine sees a row, gives both backends exactly the same tokens,
lets an empty prompt be marked instead of failing a whole engine call, and makes truncation
explicit and counted.

Truncation cuts from the left (the start of the text) and keeps a leading BOS token: a reward
model reads its score at the last token, and the end of the text (the response, the template's
closing tokens) is what its head was trained to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from udfs.reasons import EMPTY_TEXT, NO_TOKENS, NULL_RESPONSE, NULL_TEXT


@dataclass
class Encoded:
    """Token ids per row (None where the row cannot be scored) and why not."""

    ids: list[list[int] | None]
    errors: list[str | None]
    truncated: list[bool]


def truncate_left(ids: list[int], max_len: int, bos_id: int | None) -> list[int]:
    """Keep the last ``max_len`` tokens, and the first one too when it is the BOS token."""
    if len(ids) <= max_len:
        return ids
    if bos_id is not None and ids and ids[0] == bos_id and max_len > 1:
        return ids[:1] + ids[len(ids) - (max_len - 1):]
    return ids[len(ids) - max_len:]


class Prompter:
    """Encodes texts (``raw``) or prompt/response pairs (``chat``) with the model's tokenizer."""

    def __init__(self, model_dir: str, template: str = "raw", max_len: int = 4096):
        from transformers import AutoTokenizer

        if template not in ("raw", "chat"):
            raise ValueError(f"unknown template {template!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if template == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer in {model_dir} has no chat template; use --template raw")
        self.template = template
        self.max_len = max_len
        self.bos_id = self.tokenizer.bos_token_id

    def render(self, prompt: str, response: str | None = None) -> str:
        """The text the tokenizer sees for one row (the chat template applied when asked)."""
        if self.template == "raw":
            return prompt
        messages = [{"role": "user", "content": prompt}]
        if response is not None:
            messages.append({"role": "assistant", "content": response})
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def encode(self, prompts: Sequence[str | None], responses: Sequence[str | None] | None = None) -> Encoded:
        """Token ids for every row, or the reason it cannot be scored."""
        n = len(prompts)
        ids: list[list[int] | None] = [None] * n
        errors: list[str | None] = [None] * n
        truncated = [False] * n
        todo: list[int] = []
        texts: list[str] = []
        for i, prompt in enumerate(prompts):
            response = responses[i] if responses is not None else None
            if prompt is None or _is_nan(prompt):
                errors[i] = NULL_TEXT
            elif not prompt.strip():
                errors[i] = EMPTY_TEXT
            elif responses is not None and (response is None or _is_nan(response)):
                errors[i] = NULL_RESPONSE
            else:
                todo.append(i)
                texts.append(self.render(prompt, response))
        if texts:
            # Raw text is encoded as tokenizer(text) would, special tokens included; a rendered
            # chat template already holds its special tokens.
            encoded = self.tokenizer(texts, add_special_tokens=self.template == "raw")["input_ids"]
            for i, row in zip(todo, encoded):
                if not row:
                    errors[i] = NO_TOKENS
                    continue
                cut = truncate_left(list(row), self.max_len, self.bos_id)
                truncated[i] = len(cut) < len(row)
                ids[i] = cut
        return Encoded(ids, errors, truncated)


def _is_nan(value) -> bool:
    return isinstance(value, float) and value != value
