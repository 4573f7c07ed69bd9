"""Reward-model engines: token ids in, one raw logit per row out.

``TransformersEngine`` runs anywhere (CPU or GPU) and is the numerical reference;
``VllmEngine`` is the GPU engine (vLLM's pooling runner, classify task, no activation).
Both take the same token ids, so they score exactly the same input.

An engine runs inside the engine host (``udfs.engine_host``), one per GPU, and is driven by
``run``: it pulls requests from the host's queue and hands back scores.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class EngineSpec:
    """How to build an engine. Everything that changes scores or memory use is here."""

    model_dir: str
    backend: str = "transformers"  # or "vllm"
    max_model_len: int = 4096
    dtype: str = "auto"
    quantization: str | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.90
    max_num_batched_tokens: int = 65536
    max_num_seqs: int = 512
    engine_args: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"  # transformers: auto, cpu or cuda
    batch_tokens: int = 16384  # transformers: padded tokens per forward pass


Deliver = Callable[[Any, "list[float] | BaseException"], None]
NextRequest = Callable[[bool], Any]


class EngineError(Exception):
    """The engine cannot go on (not a problem of one row): fail the task, let Spark retry."""


def build(spec: EngineSpec):
    """The engine ``spec`` describes, loaded and ready."""
    if spec.backend == "transformers":
        return TransformersEngine(spec)
    if spec.backend == "vllm":
        return VllmEngine(spec)
    raise ValueError(f"unknown backend {spec.backend!r}")


class _BatchLoop:
    """Score each request as one call, in arrival order."""

    busy_s: float = 0.0

    def score(self, batch: list[list[int]]) -> list[float]:  # pragma: no cover - overridden
        raise NotImplementedError

    def run(self, next_request: NextRequest, deliver: Deliver, stopping: Callable[[], bool]) -> None:
        while not stopping():
            req = next_request(True)
            if req is None:
                continue
            start = time.monotonic()
            try:
                result: list[float] | BaseException = self.score(req.ids)
            except Exception as e:  # noqa: BLE001 - handed back to the caller, who isolates rows
                result = e
            self.busy_s += time.monotonic() - start
            deliver(req, result)


class TransformersEngine(_BatchLoop):
    """``AutoModelForSequenceClassification`` in length-sorted, padded batches.

    The score is the classification head applied to the hidden state of each row's last token,
    which is what the model's own forward pass returns for an unpadded row.
    """

    def __init__(self, spec: EngineSpec):
        import torch
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        device = spec.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = spec.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        self.torch = torch
        self.device = device
        model = AutoModelForSequenceClassification.from_pretrained(spec.model_dir, dtype=getattr(torch, dtype))
        self.model = model.to(device).eval()
        self.head = getattr(model, "score", None) or getattr(model, "classifier")
        self.vocab_size = model.config.vocab_size
        self.pad_id = model.config.pad_token_id or 0
        self.batch_tokens = spec.batch_tokens
        self.device_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
        self.sdpa_backends = None
        config = model.config
        if device.startswith("cuda") and getattr(config, "num_key_value_heads", None) == 1 < config.num_attention_heads:
            # With one KV head, transformers hands SDPA key/value heads broadcast with stride 0;
            # CUDA's memory-efficient kernel then returns wrong rows for some padded batches
            # (pytorch/pytorch#191937), so padded batches of such a model avoid that kernel.
            from torch.nn.attention import SDPBackend

            self.sdpa_backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]

    def _attention_kernels(self):
        if self.sdpa_backends is None:
            return contextlib.nullcontext()
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel(self.sdpa_backends)

    def padded_batches(self, lengths: list[int]) -> list[tuple[list[int], int]]:
        """Rows grouped for the forward passes: (row indices, padded width), shortest first, each
        group at most ``batch_tokens`` padded tokens (or a single longer row)."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        groups: list[tuple[list[int], int]] = []
        start = 0
        while start < len(order):
            end, longest = start, 0
            while end < len(order):
                width = max(longest, lengths[order[end]])
                if end > start and width * (end - start + 1) > self.batch_tokens:
                    break
                longest, end = width, end + 1
            groups.append((order[start:end], longest))
            start = end
        return groups

    def score(self, batch: list[list[int]]) -> list[float]:
        torch = self.torch
        for ids in batch:
            bad = next((t for t in ids if t < 0 or t >= self.vocab_size), None)
            if bad is not None:
                # Checked here: on a GPU an out-of-range id would kill the CUDA context.
                raise ValueError(f"token id {bad} is out of vocabulary (size {self.vocab_size})")
        out = [0.0] * len(batch)
        for rows, longest in self.padded_batches([len(ids) for ids in batch]):
            input_ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), longest), dtype=torch.long)
            for r, i in enumerate(rows):
                input_ids[r, : len(batch[i])] = torch.tensor(batch[i])
                mask[r, : len(batch[i])] = 1
            input_ids, mask = input_ids.to(self.device), mask.to(self.device)
            with torch.inference_mode(), self._attention_kernels():
                hidden = self.model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                last = hidden[torch.arange(len(rows), device=self.device), mask.sum(dim=1) - 1]
                logits = self.head(last).float()[:, 0].cpu().tolist()
            for i, value in zip(rows, logits):
                out[i] = value
        return out

    def close(self) -> None:
        self.model = None


class VllmEngine(_BatchLoop):
    """vLLM's pooling runner: ``classify`` with no activation, so the raw logit is the reward.

    ``run`` streams: requests (slices of a batch) are added to the running engine as they arrive,
    so the GPU does not wait at the boundary between two requests, batches or tasks.
    """

    def __init__(self, spec: EngineSpec):
        from vllm import LLM, PoolingParams

        kwargs: dict[str, Any] = dict(
            model=spec.model_dir,
            runner="pooling",
            max_model_len=spec.max_model_len,
            dtype=spec.dtype,
            tensor_parallel_size=spec.tensor_parallel_size,
            gpu_memory_utilization=spec.gpu_memory_utilization,
            max_num_batched_tokens=max(spec.max_num_batched_tokens, spec.max_model_len),
            max_num_seqs=spec.max_num_seqs,
            # Every prompt is different; there is no prefix worth caching.
            enable_prefix_caching=False,
        )
        if spec.quantization:
            kwargs["quantization"] = spec.quantization
        kwargs.update(spec.engine_args)
        self.llm = LLM(**kwargs)
        self.PoolingParams = PoolingParams
        import torch

        self.device_name = torch.cuda.get_device_name(0)

    def _prompts(self, batch: list[list[int]]):
        from vllm.inputs import TokensPrompt

        return [TokensPrompt(prompt_token_ids=ids) for ids in batch]

    def score(self, batch: list[list[int]]) -> list[float]:
        outs = self.llm.classify(self._prompts(batch), pooling_params=self.PoolingParams(use_activation=False),
                                 use_tqdm=False)
        return [float(o.outputs.probs[0]) for o in outs]

    def run(self, next_request: NextRequest, deliver: Deliver, stopping: Callable[[], bool]) -> None:
        llm = self.llm
        try:
            from vllm.entrypoints.pooling.typing import OfflineInputsContext

            processor = llm.pooling_io_processors["classify"]
            engine = llm.llm_engine
        except (ImportError, AttributeError, KeyError):
            return super().run(next_request, deliver, stopping)

        counter = itertools.count()

        def add(req) -> list[str]:
            """Add a request's rows to the running engine; returns their (external) ids."""
            ctx = OfflineInputsContext(prompts=self._prompts(req.ids),
                                       pooling_params=self.PoolingParams(use_activation=False))
            internal, external = [], []
            try:
                for prompt in processor.pre_process_offline(ctx):
                    rid = f"ps{next(counter)}"
                    params = self.PoolingParams(use_activation=False, task="classify")
                    internal.append(engine.add_request(rid, prompt, params))
                    external.append(rid)
            except Exception:
                if internal:
                    engine.abort_request(internal, internal=True)
                raise
            return external

        owner: dict[str, tuple[Any, int]] = {}  # vLLM request id -> (our request, row)
        open_: dict[int, list] = {}  # id(our request) -> [request, scores, rows left]
        while not stopping():
            req = next_request(not engine.has_unfinished_requests())
            while req is not None:
                try:
                    rids = add(req)
                except Exception as e:  # noqa: BLE001 - a bad row: the caller isolates it
                    deliver(req, e)
                else:
                    if not rids:
                        deliver(req, [])
                    else:
                        open_[id(req)] = [req, [0.0] * len(rids), len(rids)]
                        for k, rid in enumerate(rids):
                            owner[rid] = (req, k)
                req = next_request(False)
            if not engine.has_unfinished_requests():
                continue
            start = time.monotonic()
            try:
                outputs = engine.step()
            except Exception as e:  # noqa: BLE001 - the engine is gone: fail every open request
                for r, _, _ in list(open_.values()):
                    deliver(r, EngineError(f"{type(e).__name__}: {e}"))
                raise
            self.busy_s += time.monotonic() - start
            for out in outputs:
                if not out.finished or out.request_id not in owner:
                    continue
                r, k = owner.pop(out.request_id)
                entry = open_[id(r)]
                entry[1][k] = float(out.outputs.data.reshape(-1)[0])
                entry[2] -= 1
                if entry[2] == 0:
                    del open_[id(r)]
                    deliver(r, entry[1])

    def close(self) -> None:
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        self.llm = None
