"""What the score job takes: ``ScoreOptions``, which checks itself when made (from the command line
or in code alike), and the command line of ``jobs/score.py``, built from its fields and from the
engine's (``ENGINE_FLAGS``: the flags of ``udfs.engines.EngineSpec``, declared once here)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass

from promptscore import cli, flags, sizing
from promptscore.errors import UsageError
from promptscore.flags import option
from promptscore.io.output import OutputSpec
from udfs.engines import EngineSpec

# The flags of EngineSpec's fields, by field name; their defaults are EngineSpec's (the command line's
# backend is auto).
ENGINE_FLAGS: dict[str, dict] = {
    "model_dir": {"flag": "--model", "required": True, "metavar": "PATH|URI", "help": (
        "model directory: a local path on every node, or a URI (oss://, hdfs://, file://) copied once per node "
        "into --cache-dir")},
    "max_model_len": {"type": int, "help": "longer inputs are cut from the left, keeping a BOS token (default 4096)"},
    "backend": {"choices": ("auto", "vllm", "transformers"), "default": "auto", "help": (
        "auto: vllm when Spark schedules GPUs (spark.task.resource.gpu.amount), else transformers")},
    "dtype": {"help": "auto, bfloat16, float16, float32"},
    "quantization": {"choices": ("fp8",), "help": "vLLM weight quantization"},
    "tensor_parallel_size": {"type": int},
    "gpu_memory_utilization": {"type": float},
    "max_num_batched_tokens": {"type": int,
                               "help": "vLLM tokens per engine step (default 65536: prefill-only scoring)"},
    "max_num_seqs": {"type": int, "help": "vLLM rows per engine step (default 512)"},
    "engine_args": {"metavar": "JSON", "help": "more vLLM LLM(...) arguments"},
    "device": {"choices": ("auto", "cpu", "cuda"), "help": "transformers backend"},
}
_AT_LEAST_ONE = ("max_model_len", "tensor_parallel_size", "max_num_batched_tokens", "max_num_seqs")
_PLAN_ONLY = (("--plan-sample", "plan_sample"), ("--gpus", "gpus"), ("--gpu-type", "gpu_type"),
              ("--calibrate", "calibrate"))


@dataclass
class ScoreOptions:
    """Everything the score job takes; built from the command line (``from_args``) or directly in
    code, and checked the same way either way (``UsageError``, exit 2). ``engine.backend`` may be
    ``auto`` (see ``model.resolve_backend``); ``engine.engine_args`` may be given as JSON text."""

    inputs: list[str] = option(flag="--input", action="append", required=True, metavar="URI",
                               help="Parquet input (e.g. the convert job's output); repeatable")
    out: OutputSpec
    engine: EngineSpec
    text_col: str = option("prompt", help="the column to score (default prompt)")
    response_col: str | None = option(None, help="score (prompt, response) pairs; needs --template chat")
    template: str = option("raw", choices=("raw", "chat"), help=(
        "raw: the text as tokenizer(text) encodes it; chat: the tokenizer's chat template over [user: prompt(, "
        "assistant: response)]"))
    max_bad_fraction: float = option(0.001, type=cli.fraction, metavar="F",
                                     help="exit 3 if more than this fraction of rows gets no score (default 0.001)")
    cache_dir: str = option("/tmp/promptscore-models", help=(
        "local directory on each node for models given as URIs, (in engine-cache/) the engines' compile caches "
        "and (on the driver) the model files' digests, kept across runs"))
    partitions: int | None = option(None, type=int, metavar="N", help=(
        "repartition the input into about N tasks in all (spread a small input over GPUs)"))
    compare_sample: int | None = option(None, type=int, metavar="N", help=(
        "check instead of scoring: score a fixed sample of N rows with these options and with the reference "
        "options (no --quantization, --compare-dtype), report Spearman and the largest score difference; writes "
        "no output (only --report)"))
    compare_dtype: str | None = option(None, metavar="DTYPE",
                                       help="the reference's --dtype for --compare-sample (default: --dtype)")
    plan: bool = option(False, action="store_true", help=(
        "plan instead of scoring: count the rows, tokenize the prompts on the executors (no engine), print the "
        "token counts and an estimate of GPU-hours and wall-clock time, and write it with --report; writes no "
        "output (--output optional)"))
    plan_sample: float | None = option(None, type=float, metavar="F", help=(
        "with --plan: tokenize a random fraction F in (0, 1] of the rows (rows are still counted exactly) and "
        "state the token total's 95%% error (default 1: every row)"))
    gpus: int | None = option(None, type=int, metavar="N", help=(
        "with --plan: estimate for N GPUs (default: the GPUs the Spark configuration asks for, as the run would "
        "use them)"))
    gpu_type: str | None = option(None, choices=tuple(sizing.GPU_PEAK_FLOPS), metavar="GPU", help=(
        f"with --plan: the GPU to estimate for, one of {', '.join(sizing.GPU_PEAK_FLOPS)} (default H100, or the "
        "GPU --calibrate ran on)"))
    calibrate: int | None = option(None, type=int, metavar="N", help=(
        "with --plan: score N sampled rows on one engine with these options and estimate from that measured "
        "rate instead of the FLOPs model (on the GPUs of the run)"))

    def __post_init__(self) -> None:
        self.engine = dataclasses.replace(self.engine, engine_args=_engine_args(self.engine.engine_args))
        flags.check_choices(self)
        _check_engine(self.engine)
        if self.response_col and self.template != "chat":
            raise UsageError("--response-col needs --template chat")
        for name in _AT_LEAST_ONE:
            if getattr(self.engine, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 < self.engine.gpu_memory_utilization <= 1:
            raise UsageError("--gpu-memory-utilization must be in (0, 1]")
        if self.partitions is not None and self.partitions < 1:
            raise UsageError("--partitions must be at least 1")
        self._check_compare()
        if self.plan:
            self._check_plan()
        else:
            given = [flag for flag, name in _PLAN_ONLY if getattr(self, name) is not None]
            if given:
                raise UsageError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --plan")
            if not self.out.output:
                raise UsageError("the following arguments are required: --output (see --help)")

    def _check_compare(self) -> None:
        if self.compare_sample is not None:
            if self.compare_sample < 2:
                raise UsageError("--compare-sample must be at least 2 (rows)")
            if not self.engine.quantization and (self.compare_dtype or self.engine.dtype) == self.engine.dtype:
                raise UsageError("--compare-sample has nothing to compare: pass --quantization fp8, or a "
                                 "--compare-dtype other than --dtype")
        elif self.compare_dtype:
            raise UsageError("--compare-dtype goes with --compare-sample")

    def _check_plan(self) -> None:
        if self.compare_sample is not None:
            raise UsageError("--plan and --compare-sample are two different checks; run them one at a time")
        if self.plan_sample is not None and not 0 < self.plan_sample <= 1:
            raise UsageError(f"--plan-sample must be a fraction in (0, 1], got {self.plan_sample:g}")
        if self.gpus is not None and self.gpus < 1:
            raise UsageError("--gpus must be at least 1")
        if self.calibrate is not None and self.calibrate < 1:
            raise UsageError("--calibrate must be at least 1 (rows)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ScoreOptions":
        """The options of a command line parsed by ``score_parser``."""
        engine = EngineSpec(**{name: getattr(args, name) for name in ENGINE_FLAGS if hasattr(args, name)})
        return cls(out=OutputSpec.from_args(args), engine=engine, **flags.given(args, cls))

    @property
    def model(self) -> str:
        return self.engine.model_dir

    @property
    def plan_fraction(self) -> float:
        """The share of rows ``--plan`` tokenizes (``--plan-sample``, default 1: every row)."""
        return 1.0 if self.plan_sample is None else self.plan_sample


def _engine_args(value: dict | str) -> dict:
    """``--engine-args``: a JSON object (given as text on the command line)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise UsageError(f"--engine-args is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise UsageError("--engine-args must be a JSON object")
    return value


def _check_engine(engine: EngineSpec) -> None:
    """Refuse an engine field outside its flag's choices, in argparse's words."""
    for name, spec in ENGINE_FLAGS.items():
        value = getattr(engine, name)
        if spec.get("choices") and value is not None and value not in spec["choices"]:
            flag = spec.get("flag") or "--" + name.replace("_", "-")
            raise UsageError(f"argument {flag}: invalid choice: {value!r} "
                             f"(choose from {', '.join(map(repr, spec['choices']))})")


def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    for name, spec in ENGINE_FLAGS.items():
        if name != "model_dir":
            flags.add_flag(p, name, spec)


def score_parser() -> argparse.ArgumentParser:
    """The command line of ``jobs/score.py``: the flags of ``ScoreOptions``, ``OutputSpec`` and the engine."""
    p = cli.JobParser(prog="score.py", description=(
        "Score every row of a Parquet dataset with a reward model (one-label sequence classifier;\n"
        "the raw logit is the score).\n\n"
        "Resume: the input is scored in chunks of whole files, each committed when done; the same\n"
        "command run again after a kill or exit 1 reuses them when the model and every option that\n"
        "changes a score are the same (_report.json: resumed_rows).\n"
        "Progress: a line on stderr every 10 s (--conf spark.promptscore.progress.interval=SECONDS;\n"
        "0: off). Engines keep their compile caches in <--cache-dir>/engine-cache/.\n"
        "Plan: --plan tokenizes the input (or a --plan-sample of it) with the model's tokenizer and\n"
        "template, prints rows, tokens, their length distribution, the share --max-model-len cuts and\n"
        "an estimate of GPU-hours and wall-clock time beside the physical limit; writes no output."))
    flags.add_flags(p, ScoreOptions, ["inputs"])
    flags.add_flags(p, OutputSpec)
    flags.add_flag(p, "model_dir", ENGINE_FLAGS["model_dir"])
    flags.add_flags(p, ScoreOptions, ["text_col", "response_col", "template"])
    _add_engine_flags(p)
    flags.add_flags(p, ScoreOptions, ["max_bad_fraction", "cache_dir", "partitions", "compare_sample",
                                      "compare_dtype", "plan", "plan_sample", "gpus", "gpu_type", "calibrate"])
    return p
