"""A tiny random-weight reward model that transformers and vLLM both load, built offline.

``python -m promptscore.tools.tiny_model DIR`` writes ``DIR`` with:

- a byte-level BPE tokenizer trained here on a small built-in corpus (``tokenizer.json``), with
  ChatML special tokens and a chat template, as a ``PreTrainedTokenizerFast``;
- a ``Qwen2ForSequenceClassification`` with one label (the raw logit is the reward), random
  weights from a fixed seed, saved as safetensors.

Nothing is downloaded. ``--shape qwen2.5-1.5b`` writes a model of Qwen2.5-Coder-1.5B's shape
instead (random weights; several GB), for benchmarks.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from promptscore.tools.words import WORDS

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

SHAPES = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, max_position_embeddings=4096),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         vocab_size=151936),
}


def _corpus(lines: int = 4000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    extra = ["def", "class", "import", "return", "(", ")", "{", "}", "[", "]", ":", ";", "=", "==", "+",
             "-", "*", "/", "0", "1", "2", "42", "3.14", "Hello", "world", "Why", "How", "What", "?", "!",
             ",", ".", "\n", "\t", "    ", "你好", "世界", "こんにちは", "🙂"]
    words = list(WORDS) + extra
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(lines)]


def train_tokenizer(vocab_size: int = 2048):
    """A byte-level BPE tokenizer trained on the built-in corpus, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 32768
    return fast


def build(directory: str | Path, shape: str = "tiny", seed: int = 0, dtype: str = "float32",
          device: str = "cpu") -> Path:
    """Write the tokenizer and a random-weight one-label Qwen2 classifier to ``directory``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    params = dict(SHAPES[shape])
    vocab = params.pop("vocab_size", len(tokenizer))
    config = Qwen2Config(
        vocab_size=vocab,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        architectures=["Qwen2ForSequenceClassification"],
        **params,
    )
    torch.manual_seed(seed)
    torch_dtype = getattr(torch, dtype)
    with torch.device(device):
        model = Qwen2ForSequenceClassification(config).to(torch_dtype)
    # Random init gives a near-zero score head; scale it so rewards spread out.
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0 / config.hidden_size ** 0.5)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m promptscore.tools.tiny_model", description=__doc__.splitlines()[0])
    p.add_argument("directory")
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--device", default="cpu", help="where to initialise the weights (cuda is faster for big shapes)")
    a = p.parse_args(argv)
    out = build(a.directory, a.shape, a.seed, a.dtype, a.device)
    print(f"wrote a {a.shape} random-weight reward model to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
