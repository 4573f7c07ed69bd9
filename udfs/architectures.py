"""Which implementation vLLM should load a reward model with, decided from its config alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

# Suffixes of architectures that vLLM serves as its own causal LM with a pooling head
# (``as_seq_cls_model``): a subset of those that ``vllm.config.model._SUFFIX_TO_DEFAULTS`` lists
# for the pooling runner.
_POOLING_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ClassificationModel",
                     "ForRewardModeling", "RewardModel", "ForTextEncoding", "EmbeddingModel")


def native_architecture(model_dir: str, supported: Iterable[str]) -> bool:
    """Whether vLLM implements ``model_dir``'s architecture itself: an architecture of its config is
    one of ``supported`` (``vllm.ModelRegistry.get_supported_archs()``), or is one with a pooling
    suffix whose ``...ForCausalLM`` is. False when the config cannot be read.

    Such a model is started with ``model_impl="vllm"``. With vLLM's default (``auto``), vLLM 0.25.0
    checks, while it builds its config, whether its Transformers backend could serve an
    architecture it does not list by name (``Qwen2ForSequenceClassification``,
    ``LlamaForSequenceClassification``): that inspection runs in a new Python process that imports
    torch and vLLM, and its result is never cached (the backend is a package, and vLLM's cache of
    model inspections keys on a module file), so it costs every start 10-20 s for the same model."""
    try:
        archs = json.loads((Path(model_dir) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return False
    known = {a for a in supported if not a.startswith("Transformers")}
    for arch in archs:
        if arch in known:
            return True
        for suffix in _POOLING_SUFFIXES:
            if arch.endswith(suffix) and arch[: -len(suffix)] + "ForCausalLM" in known:
                return True
    return False
