"""The model and the input as the driver sees them, checked before any task starts: the model's
``config.json`` (a one-label sequence classifier), the backend, the input's columns, and the
model directory's files: a model that a rerun
cannot fix fails at once with exit 2 naming the file, not minutes later inside a task.

- ``config.json`` parses as a JSON object (``read_config``);
- the weights are there: every shard a ``*.index.json`` names, or else at least one weights file
  (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``) at the top of the directory;
- each safetensors file that will be loaded reads: an 8-byte little-endian header length, a JSON
  header of that length, and a data section exactly as long as the header's tensors say
  (``data_offsets``), as the safetensors loader demands; a ``.bin`` in torch's zip format ends
  with the zip directory that a cut-short copy lacks.

Only headers and file ends are read (a few KB per file), locally or through the cluster's file
system for a model given as a URI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StringType

from promptscore import errors
from promptscore.io import files, hadoop
from promptscore.io.reports import redact_uri
from promptscore.score.options import ScoreOptions
from udfs.engines import EngineSpec
from udfs.uris import has_scheme, redact

INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")
MAX_HEADER = 100 << 20  # the safetensors loader's own limit
_ZIP_END = b"PK\x05\x06"
_ZIP_TAIL = (64 << 10) + 22


def _problem(model: str, rel: str, what: str, fix: str = "copy the model again") -> errors.UsageError:
    return errors.UsageError(f"--model {redact(model)}: {rel} {what}; {fix}")


def parse_config(model: str, text: bytes | str, rel: str = "config.json") -> dict:
    """``config.json`` as a dict, or a UsageError naming the file and where it breaks."""
    try:
        config = json.loads(text)
    except UnicodeDecodeError:
        raise _problem(model, rel, "is not UTF-8 text", "fix or replace the file") from None
    except json.JSONDecodeError as e:
        raise _problem(model, rel, f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})",
                       "fix or replace the file") from None
    if not isinstance(config, dict):
        raise _problem(model, rel, "is not a JSON object", "fix or replace the file")
    return config


def safetensors_problem(size: int, read: Callable[[int, int], bytes]) -> str | None:
    """What is wrong with a safetensors file of ``size`` bytes whose range ``read(offset,
    length)`` returns, or None: its header must read, and its data must be exactly as long as
    the header says."""
    if size < 8:
        return f"is cut short: {size} bytes, less than its 8-byte header length"
    (n,) = struct.unpack("<Q", read(0, 8))
    if n > MAX_HEADER or 8 + n > size:
        return f"is cut short or not safetensors: its header length says {n:,} bytes, the file has {size:,}"
    try:
        header = json.loads(read(8, n))
    except ValueError:
        return "has a header that is not JSON (not safetensors, or damaged)"
    if not isinstance(header, dict):
        return "has a header that is not a JSON object"
    end = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            return f"has a header entry for {name} without valid data_offsets"
        end = max(end, offsets[1])
    expected = 8 + n + end
    if size < expected:
        return f"is cut short: its header describes {expected:,} bytes, the file has {size:,}"
    if size > expected:
        return f"has {size - expected:,} bytes more than its header describes ({expected:,}); it is damaged"
    return None


def zip_problem(size: int, read: Callable[[int, int], bytes]) -> str | None:
    """For a ``.bin``/``.pt`` file in torch's zip format, whether its end (the zip directory) is
    missing; other (legacy pickle) files are not checked."""
    if size == 0:
        return "is empty"
    if read(0, 4) != b"PK\x03\x04":
        return None
    tail = read(max(0, size - _ZIP_TAIL), min(size, _ZIP_TAIL))
    return None if _ZIP_END in tail else "is cut short: its zip directory (at the end of the file) is missing"


def weight_files(model: str, files: dict[str, int], read_text: Callable[[str], bytes]) -> list[str]:
    """The weights files the loaders will read (relative paths), after checking they are there."""
    for index in INDEXES:
        if index in files:
            data = parse_config(model, read_text(index), index)
            wmap = data.get("weight_map")
            if not isinstance(wmap, dict) or not wmap:
                raise _problem(model, index, "has no weight_map", "fix or replace the file")
            shards = sorted({str(v) for v in wmap.values()})
            missing = [s for s in shards if s not in files]
            if missing:
                raise _problem(model, index, f"names {missing[0]}, which is not there "
                               f"({len(missing)} of {len(shards)} weights files missing)")
            return shards
    top = sorted(rel for rel in files if "/" not in rel and rel.endswith(WEIGHTS))
    if not top:
        raise errors.UsageError(f"--model {redact(model)}: no weights file there (model.safetensors, "
                             "pytorch_model.bin, or shards with their index.json); copy the model again")
    safetensors = [rel for rel in top if rel.endswith(".safetensors")]
    return safetensors or top


def check_weights(spark, model: str, manifest: list[tuple[str, int]] | None) -> list[str]:
    """Check the weights of the model at ``model`` (a local directory, or a URI whose files are
    ``manifest``); raise UsageError naming the first file that is missing or damaged. Returns
    the weights files checked."""
    if not has_scheme(model):
        files = {}
        for dirpath, dirnames, filenames in os.walk(model):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                path = os.path.join(dirpath, name)
                files[os.path.relpath(path, model).replace(os.sep, "/")] = os.path.getsize(path)

        def read(rel: str, offset: int, length: int) -> bytes:
            with open(os.path.join(model, rel), "rb") as f:
                f.seek(offset)
                return f.read(length)
    else:
        base = model.rstrip("/")
        files = dict(manifest or [])

        def read(rel: str, offset: int, length: int) -> bytes:
            return hadoop.read_range(spark, f"{base}/{rel}", offset, length)

    checked = weight_files(model, files, lambda rel: read(rel, 0, files[rel]))

    def problem(rel: str) -> str | None:
        size = files[rel]
        check = safetensors_problem if rel.endswith(".safetensors") else zip_problem
        return check(size, lambda offset, length: read(rel, offset, length))

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(checked))), thread_name_prefix="promptscore-check") as pool:
        problems = list(pool.map(problem, checked))
    for rel, what in zip(checked, problems):
        if what:
            raise _problem(model, rel, what)
    return checked


# ---------------------------------------------------------------------------------------------
# The model and the input, as the driver sees them


def model_manifest(spark: SparkSession, model: str) -> tuple[dict, list[tuple[str, int]] | None]:
    """The model's config.json and, for a URI, the files (relative path, size) to copy. A
    config.json that does not parse is a UsageError naming it."""
    if not has_scheme(model):
        config = os.path.join(model, "config.json")
        if not os.path.isfile(config):
            raise errors.UsageError(f"--model {model}: no config.json there (a local path must exist on the "
                                 "driver and every node; use a URI to have it copied)")
        with open(config, "rb") as f:
            return parse_config(model, f.read()), None
    if not hadoop.exists(spark, model.rstrip("/") + "/config.json"):
        raise errors.UsageError(f"--model {redact_uri(model)}: no config.json there")
    config = parse_config(model, hadoop.read_bytes(spark, model.rstrip("/") + "/config.json"))
    return config, files.list_tree(spark, model)


def check_model(config: dict, model: str) -> None:
    """A reward model here is a sequence classifier with exactly one label."""
    archs = config.get("architectures") or []
    labels = config.get("num_labels", len(config.get("id2label") or {}) or None)
    if not any(a.endswith("ForSequenceClassification") or a.endswith("RewardModel") for a in archs):
        raise errors.UsageError(f"--model {redact_uri(model)} is a {archs or 'model of unknown architecture'}, "
                             "not a *ForSequenceClassification reward model")
    if labels not in (1, None):
        raise errors.UsageError(f"--model {redact_uri(model)} has {labels} labels; a reward model has one")


def resolve_backend(spark: SparkSession, backend: str) -> str:
    if backend != "auto":
        return backend
    gpus = spark.sparkContext.getConf().get("spark.task.resource.gpu.amount", "0")
    return "vllm" if float(gpus or 0) > 0 else "transformers"



def check_inputs(spark: SparkSession, opts: ScoreOptions) -> tuple[dict, list[tuple[str, int]] | None,
                                                                   EngineSpec, DataFrame]:
    """Check the model (its config.json, and that its weights files are there and their headers
    read: ``check_weights``) and the input columns and choose the backend: the model's config, its
    manifest (for a URI), the engine and the input. Reads no weights; writes nothing."""
    from pyspark.errors import AnalysisException

    config, manifest = model_manifest(spark, opts.model)
    check_model(config, opts.model)
    check_weights(spark, opts.model, manifest)
    engine = dataclasses.replace(opts.engine, backend=resolve_backend(spark, opts.engine.backend))
    try:
        df = spark.read.parquet(*opts.inputs)
    except AnalysisException as e:
        first = redact_uri(str(e).strip().splitlines()[0])
        raise errors.UsageError(f"cannot read --input as Parquet: {first}") from None
    for col, flag in ((opts.text_col, "--text-col"), (opts.response_col, "--response-col")):
        if col is None:
            continue
        if col not in df.columns:
            raise errors.UsageError(f"{flag} {col!r} is not a column of the input (columns: {', '.join(df.columns)})")
        if not isinstance(df.schema[col].dataType, StringType):
            raise errors.UsageError(f"{flag} {col!r} is {df.schema[col].dataType.simpleString()}, not string")
    clash = [c for c in ("score", "score_error") if c in df.columns]
    if clash:
        raise errors.UsageError(f"the input already has column(s) {', '.join(clash)}; drop or rename them first")
    return config, manifest, engine, df

