"""Reward-model engines: token ids in, one raw logit per row out.

``TransformersEngine`` runs anywhere (CPU or GPU) and is the numerical reference;
``VllmEngine`` is the GPU engine (vLLM's pooling runner, classify task, no activation), driven
through vLLM's public ``AsyncLLMEngine.encode``; it checks at start that the vLLM it finds has that
API (``check_vllm``) and fails in one line naming the version otherwise.
Both take the same token ids, so they score exactly the same input.

An engine runs inside the engine host (``udfs.engine_host``), one per GPU, and is driven by
``run``: it pulls requests from the host's queue and hands back scores.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from udfs.architectures import native_architecture
from udfs.start_parts import StartClock


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


def build(spec: EngineSpec, clock: StartClock | None = None):
    """The engine ``spec`` describes, loaded and ready. With ``clock`` (``udfs.start_parts``, made
    when the process started) it answers one small request before it returns and keeps where its
    start went in ``start_parts``."""
    if spec.backend == "transformers":
        return TransformersEngine(spec, clock)
    if spec.backend == "vllm":
        return VllmEngine(spec, clock)
    raise ValueError(f"unknown backend {spec.backend!r}")


def probe_ids(vocab_size: int) -> list[int]:
    """The token ids of the request that tells when an engine answers its first one."""
    return [i % vocab_size for i in range(1, 9)]


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

    def __init__(self, spec: EngineSpec, clock: StartClock | None = None):
        import torch

        if clock is not None:
            clock.mark("torch")
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
        self.head = getattr(model, "score", None) or model.classifier
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
        self.start_parts = None
        if clock is not None:
            clock.mark("ready")
            self.score([probe_ids(self.vocab_size)])
            clock.mark("first")
            self.start_parts = clock.finish()

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


VLLM_VERSION = "0.25.0"


def check_vllm() -> None:
    """Fail with one line, naming the vLLM found and the one expected, unless vLLM's public API
    that ``VllmEngine`` uses is there: ``vllm.AsyncEngineArgs``, ``vllm.AsyncLLMEngine`` (vLLM's
    ``AsyncLLM``) with ``from_engine_args`` and ``encode``, ``vllm.PoolingParams`` with ``task``
    and ``use_activation``, ``vllm.ModelRegistry.get_supported_archs`` and ``vllm.inputs.tokens_input``."""
    try:
        import vllm
    except ImportError as e:
        raise EngineError(f"vLLM is not installed ({e}); the vllm backend needs vLLM {VLLM_VERSION} "
                          "(pip install 'promptscore[gpu]')") from None
    found = getattr(vllm, "__version__", "of unknown version")
    missing: list[str] = []
    try:
        from vllm import AsyncEngineArgs, AsyncLLMEngine, ModelRegistry, PoolingParams  # noqa: F401
        from vllm.inputs import tokens_input  # noqa: F401
    except ImportError as e:
        missing.append(str(e))
    else:
        missing += [f"AsyncLLMEngine.{name}" for name in ("from_engine_args", "encode", "shutdown")
                    if not hasattr(AsyncLLMEngine, name)]
        if not hasattr(ModelRegistry, "get_supported_archs"):
            missing.append("ModelRegistry.get_supported_archs")
        fields = getattr(PoolingParams, "__struct_fields__", None) or ()
        missing += [f"PoolingParams.{name}" for name in ("task", "use_activation") if name not in fields]
    if missing:
        raise EngineError(f"vLLM {found} lacks {', '.join(missing)}, which the vllm backend uses; "
                          f"install vLLM {VLLM_VERSION} (pip install 'promptscore[gpu]')")


def vllm_kwargs(spec: EngineSpec) -> dict[str, Any]:
    """vLLM's engine arguments for ``spec``. Unless ``engine_args`` say otherwise, vLLM captures
    no CUDA graphs: scoring runs prefill steps of thousands of tokens, and vLLM replays graphs only
    for steps of at most 512 (its largest capture size), so capturing them is start time spent
    for nothing; the compiled model is the same either way."""
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
        disable_log_stats=True,
    )
    if spec.quantization:
        kwargs["quantization"] = spec.quantization
    graphs = ("compilation_config", "enforce_eager", "cudagraph_capture_sizes", "max_cudagraph_capture_size")
    if not any(name in spec.engine_args for name in graphs):
        kwargs["compilation_config"] = {"cudagraph_mode": "NONE"}
    kwargs.update(spec.engine_args)
    return kwargs


class VllmEngine:
    """vLLM's pooling runner through its public asynchronous API: each row is one request,
    ``AsyncLLMEngine.encode(tokens_input(ids), PoolingParams(task="classify", use_activation=False))``,
    whose one output value is the raw logit (no activation: the reward).

    Rows stream in as the host's requests (slices of a batch) arrive, from any worker, and vLLM's
    scheduler batches every row it holds into each step, so the GPU does not wait at the boundary
    between two slices, batches or tasks. A row vLLM refuses (a ``ValueError``: bad token ids,
    too long) fails alone; the engine failing as a whole (``AsyncLLM.errored``) ends the host.
    ``busy_s`` counts the seconds with at least one row in vLLM, ``idle_s`` those without.
    """

    def __init__(self, spec: EngineSpec, clock: StartClock | None = None):
        clock = clock or StartClock()
        with contextlib.suppress(ImportError):  # else check_vllm says what is missing
            import torch
        clock.mark("torch")
        check_vllm()
        from vllm import AsyncEngineArgs, AsyncLLMEngine, ModelRegistry, PoolingParams

        clock.mark("vllm")
        kwargs = vllm_kwargs(spec)
        if "model_impl" not in kwargs and native_architecture(spec.model_dir, ModelRegistry.get_supported_archs()):
            kwargs["model_impl"] = "vllm"
        # Made inside the loop that later serves it, as vLLM's own server makes it.
        self.loop = asyncio.new_event_loop()

        async def make():
            return AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**kwargs))

        self.llm = self.loop.run_until_complete(make())
        clock.mark("ready")
        clock.note_engine_core()
        self.params = PoolingParams(task="classify", use_activation=False)
        self.vocab_size = self.llm.model_config.get_vocab_size()
        self._ids = itertools.count()
        self._rows = 0  # rows inside vLLM now
        self._busy = self._idle = 0.0
        self.fatal: BaseException | None = None
        self.loop.run_until_complete(self._one(probe_ids(self.vocab_size)))
        clock.mark("first")
        self.start_parts = clock.finish()
        self._since = time.monotonic()
        import torch

        self.device_name = torch.cuda.get_device_name(0)

    @property
    def busy_s(self) -> float:
        return self._busy + (time.monotonic() - self._since if self._rows else 0.0)

    @property
    def idle_s(self) -> float:
        return self._idle + (0.0 if self._rows else time.monotonic() - self._since)

    def _count(self, n: int) -> None:
        now = time.monotonic()
        if self._rows:
            self._busy += now - self._since
        else:
            self._idle += now - self._since
        self._since = now
        self._rows += n

    async def _one(self, ids: list[int]) -> float:
        from vllm.inputs import tokens_input

        bad = next((t for t in ids if t < 0 or t >= self.vocab_size), None)
        if bad is not None:
            # vLLM's own check allows ids up to the tokenizer's size, which may exceed the model's.
            raise ValueError(f"token id {bad} is out of vocabulary (size {self.vocab_size})")
        out = None
        async for item in self.llm.encode(tokens_input(ids), self.params.clone(), f"ps-{next(self._ids)}"):
            out = item
        return float(out.outputs.data.reshape(-1)[0])

    async def _request(self, req, deliver: Deliver) -> None:
        from udfs.reasons import ENGINE_REJECTED

        self._count(len(req.ids))
        try:
            results = await asyncio.gather(*(self._one(ids) for ids in req.ids), return_exceptions=True)
        except asyncio.CancelledError:
            deliver(req, EngineError("engine host stopped"))
            raise
        finally:
            self._count(-len(req.ids))
        values: list[float | str] = []
        for r in results:
            if isinstance(r, (ValueError, TypeError)) and not self.llm.errored:
                values.append(f"{ENGINE_REJECTED}: {type(r).__name__}: {r}".splitlines()[0][:500])
            elif isinstance(r, BaseException):
                if self.llm.errored and self.fatal is None:
                    self.fatal = r
                deliver(req, EngineError(f"{type(r).__name__}: {r}"))
                return
            else:
                values.append(r)
        deliver(req, values)

    def run(self, next_request: NextRequest, deliver: Deliver, stopping: Callable[[], bool]) -> None:
        self.loop.run_until_complete(self._serve(next_request, deliver, stopping))
        if self.fatal is not None:
            raise EngineError(f"vLLM failed: {type(self.fatal).__name__}: {self.fatal}")

    async def _serve(self, next_request: NextRequest, deliver: Deliver, stopping: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        incoming: asyncio.Queue = asyncio.Queue()

        def feed() -> None:
            while not stopping() and self.fatal is None:
                req = next_request(True)
                if req is not None:
                    loop.call_soon_threadsafe(incoming.put_nowait, req)
            loop.call_soon_threadsafe(incoming.put_nowait, None)

        threading.Thread(target=feed, name="engine-feed", daemon=True).start()
        running: set[asyncio.Task] = set()
        while (req := await incoming.get()) is not None:
            task = asyncio.create_task(self._request(req, deliver))
            running.add(task)
            task.add_done_callback(running.discard)
        for task in list(running):
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
        self.llm = None
        close_loop(self.loop)


def close_loop(loop: asyncio.AbstractEventLoop, timeout_s: float = 5.0) -> None:
    """Cancel the tasks still pending in ``loop`` (vLLM's output handlers, after its shutdown),
    let them end for up to ``timeout_s``, then close it. Closed with them pending, each would end
    later, in the garbage collector, by logging an error traceback about a closed event loop."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=timeout_s))
    loop.close()
